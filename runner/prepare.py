"""Everything a run checks before its weights load: base model, LoRA targets, what it continues, tokenizer, data.

Each problem a user can cause is found here and raised as a UserFacingError that
names the field, so a bad profile fails in seconds, not after a 4-bit load.
"""

from __future__ import annotations

import math
from pathlib import Path

from qlora_tui.core.errors import UserFacingError
from qlora_tui.core.profile.schema import Profile
from qlora_tui.registry.store import AdapterVersion, open_store
from qlora_tui.runner.alignment.holdout import measurement_split
from qlora_tui.runner.data.preference import to_alignment_examples
from qlora_tui.runner.data.preflight import preflight_alignment, prepare_tokenizer, tokenize_all
from qlora_tui.runner.data.rows import data_fingerprint, read_rows, to_sft_examples
from qlora_tui.runner.data.split import split_eval
from qlora_tui.runner.dist import ranks as distributed
from qlora_tui.runner.errors import RunError
from qlora_tui.runner.events import EventWriter
from qlora_tui.runner.fast.choice import choose_fast_path
from qlora_tui.runner.model import check_targets, linear_module_names, load_config, resolve_base
from qlora_tui.runner.moe import has_experts, plan_experts
from qlora_tui.runner.prepared import Prepared


def prepare(profile: Profile, home: Path, writer: EventWriter) -> Prepared:
    """All the checks that need no weights: model config, LoRA targets, tokenizer, data, tokenization."""
    from transformers import AutoTokenizer

    base = resolve_base(profile, home)
    config = load_config(base, profile.model.trust_remote_code)
    parent_ref, parent_path = resolve_parent(profile, home)
    if parent_path is None:
        check_targets(profile, linear_module_names(config, profile.model.trust_remote_code), bool(has_experts(config)))
    experts = plan_experts(profile, config) if parent_path is None else None
    if has_experts(config) and experts is None and profile.quant.bits != "none":
        writer.write("log", level="warning", message=(
            f"{profile.model.id} is a mixture of {has_experts(config)} experts: transformers stores them as fused "
            f"parameters that bitsandbytes does not quantize, so they load unquantized ({profile.quant.bits}-bit "
            "applies to the nn.Linear layers only)"))
    reward_ref, reward_path = resolve_reward_model(profile, home) if profile.train.method == "rlhf" else ("", None)
    tokenizer_source = str(parent_path) if parent_path and (parent_path / "tokenizer_config.json").exists() \
        else base.source
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, trust_remote_code=profile.model.trust_remote_code)
    raw = distributed.box_main_first(lambda: read_rows(profile.data))  # a Hub data set downloads once per box
    method = profile.train.method
    if method == "sft":
        converted = to_sft_examples(raw, profile.data.format, profile.data.system_prompt)
        notes = prepare_tokenizer(tokenizer, needs_chat_template=converted.format != "text")
        rows, report = tokenize_all(tokenizer, converted, len(raw.rows), profile.train.max_seq_len, notes)
        train_rows, eval_rows = split_eval(rows, profile.data.eval_fraction, profile.train.seed)
        pairs, pairs_slice = [], ""
    else:
        converted = to_alignment_examples(raw, method, profile.data.format, profile.data.system_prompt)
        notes = prepare_tokenizer(tokenizer, needs_chat_template=True)
        rows, report = preflight_alignment(tokenizer, converted, len(raw.rows), profile.train.max_seq_len, method,
                                           profile.method.max_completion_len, notes)
        train_rows, eval_rows, pairs, pairs_slice = measurement_split(raw, profile, rows)
    writer.write("preflight", **report.as_event(), train_rows=len(train_rows), eval_rows=len(eval_rows))
    for note in notes:
        writer.write("log", level="warning", message=note)
    return Prepared(profile, base, tokenizer, train_rows, eval_rows, data_fingerprint(raw, profile.data),
                    len(raw.rows), parent_ref, parent_path, pairs, pairs_slice, choose_fast_path(profile, config),
                    data_format=converted.format, reward_ref=reward_ref, reward_path=reward_path, experts=experts)


def registered(home: Path, ref: str, field: str) -> AdapterVersion:
    """The version `ref` names, or a RunError that names the profile field it came from."""
    try:
        return open_store(home).get(ref)
    except UserFacingError as err:
        raise RunError(f"{field}: {err.message}", hint=err.hint) from None


def resolve_parent(profile: Profile, home: Path) -> tuple[str, Path | None]:
    """The registered adapter this run continues, if the profile names one."""
    if not profile.model.adapter:
        return "", None
    version = registered(home, profile.model.adapter, "model.adapter")
    if version.base_model != profile.model.id:
        raise RunError(f"model.adapter: {version.ref} was trained on {version.base_model!r}, "
                       f"but model.id is {profile.model.id!r}")
    if version.kind != "adapter":
        raise RunError(f"model.adapter: {version.ref} is a {version.kind!r} version; only adapters can be "
                       "trained further")
    return version.ref, version.path


def resolve_reward_model(profile: Profile, home: Path) -> tuple[str, Path]:
    """The registered reward model an rlhf run trains against; it must score the same base model."""
    version = registered(home, profile.method.reward_model, "method.reward_model")
    if version.kind != "reward":
        raise RunError(f"method.reward_model: {version.ref} is a {version.kind!r} version, not a reward model",
                       hint='train one with train.method = "reward" first')
    if version.base_model != profile.model.id:
        raise RunError(f"method.reward_model: {version.ref} was trained on {version.base_model!r}, "
                       f"but model.id is {profile.model.id!r}")
    return version.ref, version.path


def planned_steps(profile: Profile, train_rows: int, processes: int = 1) -> int:
    """Optimizer steps the run will take: max_steps, else epochs over the rows at the global batch."""
    if profile.train.max_steps:
        return profile.train.max_steps
    batches = math.ceil(train_rows / (profile.train.batch_size * processes))
    return max(1, math.ceil(batches / profile.train.grad_accum) * math.ceil(profile.train.epochs))
