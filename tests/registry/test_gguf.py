"""export-gguf: merged models and LoRA adapters as GGUF, read back and run by an independent numpy forward pass
with llama.cpp's semantics (tests/registry/gguf_reference.py) against transformers + PEFT; the tokenizer, the
Modelfile, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qlora_tui.registry.errors import IntegrityError, RegistryError
from qlora_tui.registry.gguf_check import GgufBpe, check_file
from qlora_tui.registry.gguf_vocab import byte_level_pre, read_vocab
from qlora_tui.registry.importer import import_adapter
from qlora_tui.registry.ollama import chat_pieces, modelfile_text
from qlora_tui.registry.store import open_store
from tests.registry.conftest import make_peft_adapter, tiny_dir
from tests.registry.gguf_reference import logits as gguf_logits
from tests.registry.helpers import cli

PROMPTS = ["Add the two numbers.\n\n32 and 7", "Is the number even or odd?\n\n14", "Sort the numbers: 21, 7, 15"]


def torch_logits(base_dir: Path, adapter_dir: Path | None, ids: list[int]) -> np.ndarray:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def token_ids(base_dir: Path, text: str) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_dir)(text, add_special_tokens=False)["input_ids"]


def assert_same_model(gguf: Path, base_dir: Path, adapter_dir: Path | None, *, exact: bool,
                      lora: Path | None = None) -> None:
    """Every position's next-token logits: close (f32) or with the same top-1 (f16), as transformers computes."""
    for prompt in PROMPTS:
        ids = token_ids(base_dir, prompt)
        ours, theirs = gguf_logits(gguf, ids, adapter=lora), torch_logits(base_dir, adapter_dir, ids)
        assert (ours.argmax(-1) == theirs.argmax(-1)).all(), prompt
        if exact:
            np.testing.assert_allclose(ours, theirs, atol=2e-3, rtol=1e-3)


@pytest.fixture
def lora_home(home: Path, peft_adapters: dict[str, Path]) -> Path:
    store = open_store(home)
    for name in ("lora", "rslora", "dora"):
        import_adapter(store, peft_adapters[name], name, base="builtin:tiny-llama")
    return home


@pytest.mark.parametrize("quant", ["f32", "f16", "q8_0", "bf16"])
def test_a_merged_export_reads_back_equal_and_runs_like_transformers(
        quant: str, lora_home: Path, tmp_path: Path, peft_adapters: dict[str, Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / f"tiny-{quant}.gguf"
    result = cli(capsys, lora_home, "export-gguf", "lora@1", "--out", str(out), "--quant", quant, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["arch"] == "llama" and report["tensors"] == 39 and out.is_file()
    assert report["check"]["problems"] == [] and "tokenize the same" in report["check"]["tokenizer"]
    assert Path(report["modelfile"]).read_text().startswith("# Ollama Modelfile")
    if quant in ("f32", "f16", "bf16"):
        assert set(report["check"]["max_error"].values()) == {0.0}  # exact casts
    if quant in ("f32", "f16"):
        assert_same_model(out, tiny_dir(lora_home), peft_adapters["lora"], exact=quant == "f32")
    assert not list(tmp_path.glob(".*partial*")) and not list((lora_home / "registry" / ".tmp").glob("gguf-*"))


@pytest.mark.parametrize("name", ["lora", "rslora"])
def test_an_adapter_export_applied_over_the_base_gguf_runs_like_peft(
        name: str, lora_home: Path, tmp_path: Path, peft_adapters: dict[str, Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / f"{name}.gguf"
    result = cli(capsys, lora_home, "export-gguf", f"{name}@1", "--out", str(out), "--adapter-only", "--quant", "f32",
                 "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    base = Path(report["base_gguf"])
    assert base.name == f"{name}-base-f32.gguf" and report["check"]["adapter"]["problems"] == []
    modelfile = Path(report["modelfile"]).read_text()
    assert f"FROM ./{base.name}\nADAPTER ./{out.name}\n" in modelfile
    assert_same_model(base, tiny_dir(lora_home), peft_adapters[name], exact=True, lora=out)
    again = cli(capsys, lora_home, "export-gguf", f"{name}@1", "--out", str(tmp_path / "b.gguf"), "--adapter-only",
                "--base-gguf", str(base), "--json")
    assert again.code == 0 and json.loads(again.out)["base_gguf"] == str(base)
    assert not (tmp_path / "b-base-f16.gguf").exists()


def family(tmp_path: Path, model_home: Path, kind: str) -> Path:
    """A small random model of another family, with the tiny tokenizer, saved as a user would have it."""
    import torch
    from transformers import (
        AutoTokenizer,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir(model_home))
    shape = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    classes = {"mistral": (MistralConfig, MistralForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM),
               "qwen3": (Qwen3Config, Qwen3ForCausalLM)}
    config_class, model_class = classes[kind]
    config = config_class(**shape, **({"head_dim": 24} if kind == "qwen3" else {}))
    torch.manual_seed(3)
    model = model_class(config)
    with torch.no_grad():  # random norms, so a wrong norm name or eps shows in the logits
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.add_(torch.randn_like(param) * 0.1)
    out = tmp_path / kind
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.parametrize(("kind", "arch"), [("mistral", "llama"), ("qwen2", "qwen2"), ("qwen3", "qwen3")])
def test_other_families_export_and_run_like_transformers(kind: str, arch: str, home: Path, model_home: Path,
                                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = family(tmp_path, model_home, kind)
    adapter = make_peft_adapter(base, tmp_path / f"{kind}-lora", seed=5,
                                target_modules=["q_proj", "k_proj", "v_proj", "down_proj"])
    import_adapter(open_store(home), adapter, kind, base=str(base))
    out = tmp_path / f"{kind}.gguf"
    result = cli(capsys, home, "export-gguf", f"{kind}@1", "--out", str(out), "--quant", "f32", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["arch"] == arch
    assert_same_model(out, base, adapter, exact=True)
    lora = tmp_path / f"{kind}-adapter.gguf"
    written = cli(capsys, home, "export-gguf", f"{kind}@1", "--out", str(lora), "--adapter-only", "--quant", "f32")
    assert written.code == 0, written.err
    assert_same_model(tmp_path / f"{kind}-adapter-base-f32.gguf", base, adapter, exact=True, lora=lora)


def test_the_read_back_catches_a_damaged_tensor(lora_home: Path, tmp_path: Path) -> None:
    from qlora_tui.registry.gguf_arch import arch_of
    from qlora_tui.registry.gguf_export import export_gguf
    from qlora_tui.registry.gguf_layout import model_plan, read_config

    out = tmp_path / "tiny.gguf"
    export_gguf(open_store(lora_home), "lora@1", out, quant="f32")
    base = tiny_dir(lora_home)
    config = read_config(base)
    plan = model_plan(base, config, arch_of(config, "x"), "f32", "x")  # the base's tensors, not the merged ones
    with pytest.raises(IntegrityError, match="differs from its source"):
        check_file(out, plan, config, read_vocab(base, config["vocab_size"]), "llama")


@pytest.mark.parametrize(("out_name", "args", "message", "hint"), [
    ("x.gguf", ("--quant", "q4_k_m"), "cannot write Q4_K and Q6_K", "llama-quantize"),
    ("x.gguf", ("--quant", "q3"), "--quant 'q3': use one of", ""),
    ("model.bin", (), "name the file FILE.gguf", ""),
])
def test_bad_requests_are_refused_and_write_nothing(out_name: str, args: tuple[str, ...], message: str, hint: str,
                                                     lora_home: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = cli(capsys, lora_home, "export-gguf", "lora@1", "--out", str(out_dir / out_name), *args)
    assert result.code == 2 and result.err.startswith("error: ") and message in result.err and hint in result.err
    assert list(out_dir.iterdir()) == []


def test_dora_has_no_gguf_adapter_form(lora_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = cli(capsys, lora_home, "export-gguf", "dora@1", "--out", str(tmp_path / "d.gguf"), "--adapter-only")
    assert result.code == 2 and "DoRA adapter" in result.err and "export the merged model" in result.err


def test_other_architectures_are_refused(home: Path, gpt2: tuple[Path, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    base, adapter = gpt2
    import_adapter(open_store(home), adapter, "gpt", base=str(base))
    result = cli(capsys, home, "export-gguf", "gpt@1", "--out", str(tmp_path / "g.gguf"))
    assert result.code == 2 and "architecture GPT2LMHeadModel is not one export-gguf writes" in result.err
    assert "convert_hf_to_gguf.py" in result.err and not (tmp_path / "g.gguf").exists()


def test_byte_level_pre_tokenizers_are_named_or_refused(tmp_path: Path) -> None:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from qlora_tui.core.builtin import tokenizer_corpus
    from qlora_tui.registry.gguf_vocab import KNOWN_SPLITS

    for pattern, name in KNOWN_SPLITS.items():
        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                              use_regex=False)])
        bpe.decoder = decoders.ByteLevel()
        bpe.train_from_iterator(tokenizer_corpus(), trainers.BpeTrainer(
            vocab_size=600, special_tokens=["<|end|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False))
        raw = json.loads(bpe.to_str())
        assert byte_level_pre(raw) == name
        vocab = {i: t for t, i in bpe.get_vocab().items()}
        tokens = [vocab[i] for i in range(len(vocab))]
        merges = [" ".join(m) if isinstance(m, list) else m for m in raw["model"]["merges"]]
        types = [3 if t == "<|end|>" else 1 for t in tokens]
        ours = GgufBpe(tokens, merges, types, name)
        for text in ["It's 2024: 12345 apples<|end|>and\n\n  spaces", "Sort 21, 7, 15!"]:
            assert ours.encode(text) == bpe.encode(text).ids, (name, text)
    odd = {"pre_tokenizer": {"type": "Metaspace", "replacement": "_"}}
    with pytest.raises(RegistryError, match="not one qlora-tui knows"):
        byte_level_pre(odd)


def test_the_modelfile_template_reproduces_the_chat_template(model_home: Path) -> None:
    vocab = read_vocab(tiny_dir(model_home), 781)
    text = modelfile_text(Path("/x/tiny.gguf"), vocab, None, "tiny.Modelfile")
    assert "FROM ./tiny.gguf\n" in text and 'PARAMETER stop "<|end|>"' in text
    assert '{{ if eq .Role "system" }}<|system|>\n{{ .Content }}<|end|>\n' in text
    pieces = chat_pieces(vocab.chat_template, {})
    assert pieces is not None and pieces.generation == "<|assistant|>\n"
    looped = "{% for m in messages %}{% if loop.first %}FIRST {% endif %}{{ m['content'] }}{% endfor %}"
    assert chat_pieces(looped, {}) is None  # needs Go logic: no TEMPLATE, the GGUF's own template is used
    vocab.chat_template = looped
    assert "TEMPLATE" not in modelfile_text(Path("/x/t.gguf"), vocab, None).split("# The chat")[0]


def test_llama_cpp_gives_the_next_token_transformers_gives(lora_home: Path, tmp_path: Path,
                                                           peft_adapters: dict[str, Path]) -> None:
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (it compiles llama.cpp; "
                                                        "pip install 'qlora-tui[llama-cpp]')")
    from qlora_tui.registry.gguf_export import export_gguf

    out = tmp_path / "tiny-f16.gguf"
    export_gguf(open_store(lora_home), "lora@1", out, quant="f16")
    model = llama_cpp.Llama(model_path=str(out), logits_all=True, verbose=False, n_ctx=256)
    base = tiny_dir(lora_home)
    for prompt in PROMPTS:
        ids = token_ids(base, prompt)
        assert model.tokenize(prompt.encode(), add_bos=False, special=True) == ids
        model.reset()
        model.eval(ids)
        theirs = torch_logits(base, peft_adapters["lora"], ids)
        ours = np.array(model.scores[: len(ids)])
        assert (ours.argmax(-1) == theirs.argmax(-1)).all(), prompt

