"""`qlora-tui import DIR`: adapters made by plain PEFT scripts are registered after their shapes are checked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from qlora_tui.registry.store import open_store
from tests.registry.conftest import tiny_dir
from tests.registry.helpers import cli, snapshot


def test_import_registers_a_peft_lora_directory(home: Path, peft_adapters: dict[str, Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    source = peft_adapters["lora"]
    result = cli(capsys, home, "import", str(source), "--name", "mine", "--base", "builtin:tiny-llama",
                 "--method", "sft")
    assert result.code == 0, result.err
    assert result.out == f"imported {source} as mine@1 (base model builtin:tiny-llama, 8 adapted modules)\n"
    version = open_store(home).get("mine@1")
    assert version.base_model == "builtin:tiny-llama" and version.method == "sft" and version.kind == "adapter"
    assert version.extra["lora"]["r"] == 4 and version.extra["imported_from"] == str(source)
    assert {f.path for f in version.files} >= {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"}
    assert cli(capsys, home, "verify", "mine@1").out == f"mine@1: ok ({len(version.files)} files)\n"


def test_import_takes_the_base_from_the_config(home: Path, gpt2: tuple[Path, Path],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    base, adapter = gpt2
    result = cli(capsys, home, "import", str(adapter), "--name", "g")
    assert result.code == 0, result.err
    assert open_store(home).get("g").base_model == str(base.resolve())


def _broken_copy(tmp_path: Path, source: Path, change: str) -> Path:
    target = tmp_path / f"broken-{change}"
    shutil.copytree(source, target)
    config = target / "adapter_config.json"
    weights = target / "adapter_model.safetensors"
    if change == "json":
        config.write_text("{not json")
    elif change == "type":
        config.write_text(json.dumps({**json.loads(config.read_text()), "peft_type": "IA3"}))
    elif change == "rank":
        config.write_text(json.dumps({**json.loads(config.read_text()), "r": 0}))
    elif change == "no-base":
        config.write_text(json.dumps({**json.loads(config.read_text()), "base_model_name_or_path": None}))
    elif change == "no-config":
        config.unlink()
    elif change == "bin":
        weights.rename(target / "adapter_model.bin")
    elif change == "truncated":
        weights.write_bytes(weights.read_bytes()[:200])
    elif change == "shape":
        from safetensors.numpy import load_file, save_file

        tensors = load_file(weights)
        key = "base_model.model.model.layers.2.self_attn.v_proj.lora_B.weight"
        tensors[key] = tensors[key][:40]
        save_file(tensors, weights)
    return target


@pytest.mark.parametrize(("change", "args", "message"), [
    ("no-config", (), "no adapter_config.json; a PEFT LoRA directory holds"),
    ("json", (), "adapter_config.json: not valid JSON"),
    ("type", (), "peft_type is 'IA3'; only LORA adapters are supported"),
    ("rank", (), "adapter_config.json: r must be a positive integer, got 0"),
    ("bin", (), "only adapter_model.bin; the registry takes safetensors"),
    ("truncated", (), "adapter_model.safetensors: not a readable safetensors file"),
    ("no-base", ("--name", "x"), "no base_model_name_or_path, so the base model is unknown"),
    ("shape", (), "module model.layers.2.self_attn.v_proj: lora_A is [4, 128] and lora_B is [40, 4], but the base "
                  "weight model.layers.2.self_attn.v_proj.weight is [64, 128] (out, in), which needs lora_A [r, 128] "
                  "and lora_B [64, r]"),
    ("none", ("--base", "/no/such/model"), "base model /no/such/model: no such directory"),
    ("none", ("--base", "builtin:huge-llama"), "unknown built-in model 'builtin:huge-llama'"),
    ("none", ("--base", "someone/not-downloaded"), "base model 'someone/not-downloaded' is not on this machine"),
    ("none", ("--name", "bad name"), "adapter name 'bad name'"),
])
def test_bad_adapters_are_refused_and_change_nothing(home: Path, tmp_path: Path, peft_adapters: dict[str, Path],
                                                     capsys: pytest.CaptureFixture[str], change: str,
                                                     args: tuple[str, ...], message: str) -> None:
    source = _broken_copy(tmp_path, peft_adapters["lora"], change)
    args = args if "--name" in args else ("--name", "x", *args)
    before = snapshot(home)
    result = cli(capsys, home, "import", str(source), *args)
    assert result.code == 2 and message in result.err, result.err
    assert snapshot(home) == before


def test_an_adapter_for_another_model_names_the_missing_module(home: Path, gpt2: tuple[Path, Path],
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    result = cli(capsys, home, "import", str(gpt2[1]), "--name", "g", "--base", "builtin:tiny-llama")
    assert result.code == 2
    assert "does not fit builtin:tiny-llama: module transformer.h.0.attn.c_attn: builtin:tiny-llama has no weight " \
           "transformer.h.0.attn.c_attn.weight" in result.err
    assert "hint: pass the base model it was trained on with --base" in result.err


def test_import_needs_a_name_and_an_existing_source(home: Path, peft_adapters: dict[str, Path],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert "needs --name NAME" in cli(capsys, home, "import", str(peft_adapters["lora"])).err
    assert "no such file or directory" in cli(capsys, home, "import", str(home / "nope")).err
    assert tiny_dir(home).is_dir()
