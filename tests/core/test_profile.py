"""Profiles: validation messages name the file, line and field; saving round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from qlora_tui.core.errors import ProfileError
from qlora_tui.core.profile.files import load_profile, save_profile
from qlora_tui.core.profile.schema import Profile
from qlora_tui.core.profile.validate import parse_field_text

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(text)
    return path


def test_demo_profile_loads_with_its_values() -> None:
    profile = load_profile(ROOT / "profiles" / "demo.toml")
    assert profile.name == "demo"
    assert profile.model.id == "builtin:tiny-llama"
    assert profile.quant.bits == 4 and profile.quant.type == "nf4" and profile.quant.double_quant
    assert profile.train.method == "sft"


def test_wrong_type_names_file_line_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, '[data]\npath = "x.jsonl"\n\n[lora]\nalpha = 16\nr = "sixteen"\n')
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    assert str(err.value) == f'{path}:6: lora.r: must be a positive integer, got "sixteen"'


def test_unknown_field_lists_the_allowed_ones(tmp_path: Path) -> None:
    path = write(tmp_path, '[data]\npath = "x.jsonl"\n[lora]\nrank = 8\n')
    with pytest.raises(ProfileError, match=r":4: lora.rank: unknown field; allowed: r, alpha, dropout"):
        load_profile(path)


def test_choice_error_lists_choices(tmp_path: Path) -> None:
    path = write(tmp_path, '[data]\npath = "x.jsonl"\n[train]\noptimizer = "adam"\n')
    expected = r"train.optimizer: must be one of adamw_torch, .*paged_adamw_8bit.*got \"adam\""
    with pytest.raises(ProfileError, match=expected):
        load_profile(path)


def test_bits_and_ranges(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match=r'quant.bits: must be 4, 8 or "none"; got 3'):
        load_profile(write(tmp_path, '[data]\npath = "x.jsonl"\n[quant]\nbits = 3\n'))
    with pytest.raises(ProfileError, match=r"lora.dropout: must be < 1, got 1.0"):
        load_profile(write(tmp_path, '[data]\npath = "x.jsonl"\n[lora]\ndropout = 1.0\n'))
    with pytest.raises(ProfileError, match=r"train.lr: must be > 0, got 0.0"):
        load_profile(write(tmp_path, '[data]\npath = "x.jsonl"\n[train]\nlr = 0\n'))


def test_missing_data_path_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match=r"data.path: is required"):
        load_profile(write(tmp_path, '[model]\nid = "x"\n'))
    with pytest.raises(ProfileError, match=r"not valid TOML: .*line 2"):
        load_profile(write(tmp_path, '[model]\nid = \n'))
    with pytest.raises(ProfileError, match=r"no such profile file"):
        load_profile(tmp_path / "missing.toml")


def test_method_options_must_fit_the_method(tmp_path: Path) -> None:
    path = write(tmp_path, '[data]\npath = "x.jsonl"\n[method]\nbeta = 0.2\n')
    with pytest.raises(ProfileError, match=r'method.beta: not used by train.method = "sft" \(used by dpo'):
        load_profile(path)


def test_relative_data_path_resolves_against_the_profile(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    profile = load_profile(write(tmp_path, '[data]\npath = "data/train.jsonl"\n'))
    assert profile.data.path == str(tmp_path / "data" / "train.jsonl")
    hub = load_profile(write(tmp_path, '[data]\npath = "databricks/databricks-dolly-15k"\n'))
    assert hub.data.path == "databricks/databricks-dolly-15k"


def test_name_defaults_to_the_file_stem(tmp_path: Path) -> None:
    path = tmp_path / "my run.toml"
    path.write_text('[data]\npath = "builtin:demo-instructions"\n')
    assert load_profile(path).name == "my-run"


def test_save_round_trips_exactly(tmp_path: Path) -> None:
    profile = load_profile(ROOT / "profiles" / "demo.toml")
    profile.train.lr = 1.5e-4
    profile.lora.target_modules = ["all-linear"]
    saved = save_profile(profile, tmp_path / "out" / "copy.toml", header="saved by a test")
    again = load_profile(saved)
    assert again == profile
    assert saved.read_text().startswith("# saved by a test\n")


def test_method_keys_round_trip(tmp_path: Path) -> None:
    path = write(tmp_path, '[data]\npath = "x.jsonl"\n[train]\nmethod = "dpo"\n[method]\nbeta = 0.2\n')
    profile = load_profile(path)
    assert profile.method.beta == 0.2 and profile.method_keys == ("beta",)
    assert load_profile(save_profile(profile, tmp_path / "again.toml")) == profile


def test_form_text_uses_the_same_messages() -> None:
    assert parse_field_text("lora", "r", " 32 ") == 32
    assert parse_field_text("lora", "target_modules", "q_proj, v_proj") == ["q_proj", "v_proj"]
    assert parse_field_text("train", "gradient_checkpointing", "false") is False
    with pytest.raises(ProfileError, match=r'^lora.r: must be a positive integer, got "sixteen"$'):
        parse_field_text("lora", "r", "sixteen")
    with pytest.raises(ProfileError, match=r"^lora.r: must be >= 1, got 0$"):
        parse_field_text("lora", "r", "0")


def test_default_profile_is_valid_once_data_is_set() -> None:
    profile = Profile()
    profile.data.path = "builtin:demo-instructions"
    assert profile.to_dict()["data"]["path"] == "builtin:demo-instructions"


def test_overrides_are_validated_like_the_file_and_name_the_set(tmp_path: Path) -> None:
    from qlora_tui.core.profile.overrides import apply_overrides

    profile = load_profile(ROOT / "profiles" / "demo.toml")
    changed = apply_overrides(profile, ["train.lr=1e-4", "lora.r=32", "lora.target_modules=[\"q_proj\"]",
                                        "train.method=dpo", "method.beta=0.2", "name=tuned"])
    assert (changed.train.lr, changed.lora.r, changed.lora.target_modules) == (1e-4, 32, ["q_proj"])
    assert (changed.train.method, changed.method.beta, changed.name) == ("dpo", 0.2, "tuned")
    assert changed.method_keys == ("beta",)
    for sets, message in [
        (["lora.r=thirty"], '--set lora.r=thirty: lora.r: must be a positive integer, got "thirty"'),
        (["train.lrr=1"], "--set train.lrr=1: train.lrr: unknown field; allowed: "),
        (["train.lr"], "--set train.lr: expected SECTION.KEY=VALUE"),
        (["trian.lr=1"], "--set trian.lr=1: trian: unknown section; sections: model, quant, lora"),
        (["train.lr=2.5"], "--set train.lr=2.5: train.lr: must be <= 1, got 2.5"),
    ]:
        with pytest.raises(ProfileError) as err:
            apply_overrides(profile, sets)
        assert err.value.message.startswith(message), err.value.message
    relative = apply_overrides(profile, ["data.path=rows.jsonl"], base=tmp_path)
    assert relative.data.path == str(tmp_path / "rows.jsonl")


def test_recipe_knobs_tf32_save_strategy_and_int8_threshold(tmp_path: Path) -> None:
    text = ('[data]\npath = "x.jsonl"\n[quant]\nbits = 8\nllm_int8_threshold = 5.0\n'
            '[train]\ntf32 = true\nsave_strategy = "epoch"\n')
    profile = load_profile(write(tmp_path, text))
    assert (profile.train.tf32, profile.train.save_strategy, profile.quant.llm_int8_threshold) == (True, "epoch", 5.0)
    assert load_profile(save_profile(profile, tmp_path / "again.toml")) == profile
    defaults = load_profile(write(tmp_path, '[data]\npath = "x.jsonl"\n'))
    assert (defaults.train.tf32, defaults.train.save_strategy, defaults.quant.llm_int8_threshold) == (
        False, "steps", 6.0)
    with pytest.raises(ProfileError, match=r':4: train.save_strategy: must be one of steps, epoch; got "end"'):
        load_profile(write(tmp_path, '[data]\npath = "x.jsonl"\n[train]\nsave_strategy = "end"\n'))
    with pytest.raises(ProfileError, match=r"quant.llm_int8_threshold: must be >= 0, got -1.0"):
        load_profile(write(tmp_path, '[data]\npath = "x.jsonl"\n[quant]\nllm_int8_threshold = -1.0\n'))


def test_the_8bit_threshold_reaches_bitsandbytes() -> None:
    from qlora_tui.runner.model import quantization_config

    profile = load_profile(ROOT / "profiles" / "llama_2_7b_lora8bit_sft.toml")
    profile.quant.llm_int8_threshold = 4.5
    config = quantization_config(profile)
    assert config.load_in_8bit and config.llm_int8_threshold == 4.5


def test_optimizer_and_scheduler_choices_are_names_transformers_accepts() -> None:
    """The schema copies these names so the app can offer them without importing transformers; a rename there
    would otherwise surface only when a run starts."""
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    from qlora_tui.core.profile.schema import OPTIMIZERS, SCHEDULERS

    assert set(OPTIMIZERS) - {o.value for o in OptimizerNames} == set()
    assert set(SCHEDULERS) - {s.value for s in SchedulerType} == set()


def test_a_stored_profile_reads_through_the_schema_even_when_a_field_no_longer_checks() -> None:
    from qlora_tui.core.profile.files import stored_profile

    good = stored_profile('[data]\npath = "x.jsonl"\n[train]\nmax_seq_len = 512\n')
    assert good.train.max_seq_len == 512 and good.lora.r == Profile().lora.r
    odd = stored_profile('[data]\npath = "x.jsonl"\n[train]\nmax_seq_len = 512\nfuture_knob = 3\n'
                         '[lora]\nr = "sixteen"\n')
    assert odd.train.max_seq_len == 512 and odd.lora.r == Profile().lora.r  # the bad field keeps its default
    assert stored_profile("not = [toml").train.max_seq_len == Profile().train.max_seq_len


def test_gradient_checkpointing_is_on_off_or_offload(tmp_path: Path) -> None:
    base = '[data]\npath = "x.jsonl"\n[train]\n'
    assert load_profile(write(tmp_path, base + 'gradient_checkpointing = "offload"\n')).train.gradient_checkpointing \
        == "offload"
    assert load_profile(write(tmp_path, base + "gradient_checkpointing = false\n")).train.gradient_checkpointing \
        is False
    with pytest.raises(ProfileError, match=r'p.toml:4: train.gradient_checkpointing: must be true, false or '
                                           r'"offload"; got "sometimes"'):
        load_profile(write(tmp_path, base + 'gradient_checkpointing = "sometimes"\n'))
    assert parse_field_text("train", "gradient_checkpointing", "offload") == "offload"
    assert parse_field_text("train", "gradient_checkpointing", "true") is True
