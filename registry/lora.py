"""A PEFT LoRA directory read as a plan: which base weights it changes, with which rank and scale.

The same plan validates an import (do the shapes fit the base model?) and
drives the shard-by-shard merge; adapters whose variant the merge does not
implement (DoRA and the like) get a `fallback_reason`, and PEFT merges them.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qlora_tui.registry.errors import InvalidAdapterError
from qlora_tui.registry.tensors import TensorInfo, read_header

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>A|B)(?:\.[^.]+)?\.weight$")
# Config fields naming LoRA variants whose merge is not W += scale * B @ A.
VARIANT_FIELDS = ("use_qalora", "alora_invocation_tokens", "target_parameters", "layer_replication",
                  "trainable_token_indices", "modules_to_save", "velora_config", "monteclora_config", "kasa_config",
                  "use_bdlora", "arrow_config", "lora_bias")


@dataclass
class LoraTarget:
    """One adapted module: its A and B tensors in the adapter file and the base weight they change."""

    module: str
    a: TensorInfo
    b: TensorInfo
    base: TensorInfo
    r: int
    scale: float
    fan_in_fan_out: bool


@dataclass
class AdapterPlan:
    """What merging this adapter means; `fallback_reason` is set when only PEFT can merge it."""

    directory: Path
    config: dict[str, Any]
    targets: list[LoraTarget] = field(default_factory=list)
    fallback_reason: str = ""


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SAFETENSORS_RULE = "the registry takes safetensors only (pickle files can run code when loaded)"
CONVERT_HINT = "convert it: load it with PEFT and save_pretrained(safe_serialization=True)"


def pickled_files(paths: list[str]) -> list[str]:
    """The pickled weight files among these relative paths (refused on every way into the registry)."""
    return [p for p in paths if p.lower().endswith(PICKLE_SUFFIXES)]


def check_adapter_files(adapter_dir: Path, ref: str) -> None:
    """Before anything is loaded: the version's directory holds a LoRA config and safetensors weights, and no
    pickled weights; otherwise say which, naming the version."""
    if not adapter_dir.is_dir():
        raise InvalidAdapterError(f"{ref}: its directory {adapter_dir} is missing",
                                  hint=f"qlora-tui verify {ref}; restore it from an export, or delete the version")
    present = [p.relative_to(adapter_dir).as_posix() for p in adapter_dir.rglob("*") if p.is_file()]
    unsafe = pickled_files(present)
    if unsafe:
        raise InvalidAdapterError(f"{ref}: holds pickled weights ({', '.join(unsafe)}); {SAFETENSORS_RULE}",
                                  hint=CONVERT_HINT)
    for needed in (CONFIG_NAME, WEIGHTS_NAME):
        if needed not in present:
            raise InvalidAdapterError(f"{ref}: {needed} is missing from {adapter_dir}",
                                      hint=f"qlora-tui verify {ref}; restore it from an export, or delete the "
                                           "version")


def read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    """adapter_config.json, checked to be a LoRA config with a usable rank and alpha."""
    path = adapter_dir / CONFIG_NAME
    if not path.is_file():
        raise InvalidAdapterError(f"{adapter_dir}: no {CONFIG_NAME}; a PEFT LoRA directory holds "
                                  f"{CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise InvalidAdapterError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise InvalidAdapterError(f"{path}: expected a JSON object")
    if config.get("peft_type", "LORA") != "LORA":
        raise InvalidAdapterError(f"{path}: peft_type is {config['peft_type']!r}; only LORA adapters are supported")
    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise InvalidAdapterError(f"{path}: r must be a positive integer, got {r!r}")
    alpha = config.get("lora_alpha", 8)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0:
        raise InvalidAdapterError(f"{path}: lora_alpha must be a positive number, got {alpha!r}")
    return config


def lora_scale(config: dict[str, Any], r: int) -> float:
    """PEFT's scaling: alpha / r, or alpha / sqrt(r) with rsLoRA (rank-stabilised)."""
    alpha = config.get("lora_alpha", 8)
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def find_base_key(module: str, base: dict[str, TensorInfo]) -> str | None:
    """The base weight a module path names, tolerating checkpoints saved with or without a model prefix."""
    parts = module.split(".")
    for start in range(len(parts)):
        key = ".".join(parts[start:]) + ".weight"
        if key in base:
            return key
    matches = [k for k in base if k.endswith(f".{module}.weight")]
    return matches[0] if len(matches) == 1 else None


def _fallback_reason(config: dict[str, Any], other_keys: list[str]) -> str:
    if config.get("use_dora"):
        return "DoRA adapter (weight-decomposed): merged by PEFT's merge_and_unload"
    if config.get("alpha_pattern"):
        return "per-module lora_alpha (alpha_pattern): merged by PEFT's merge_and_unload"
    if config.get("bias", "none") != "none":
        return f"trained biases (bias={config['bias']!r}): merged by PEFT's merge_and_unload"
    for name in VARIANT_FIELDS:
        if config.get(name):
            return f"LoRA variant ({name}): merged by PEFT's merge_and_unload"
    if other_keys:
        return f"tensors other than LoRA A/B (e.g. {other_keys[0]}): merged by PEFT's merge_and_unload"
    return ""


def plan_adapter(adapter_dir: Path, base: dict[str, TensorInfo], base_name: str) -> AdapterPlan:
    """Match every LoRA pair to a base weight and check the shapes; misfits raise naming module and shapes."""
    config = read_adapter_config(adapter_dir)
    weights = adapter_dir / WEIGHTS_NAME
    if not weights.is_file():
        if (adapter_dir / "adapter_model.bin").exists():
            raise InvalidAdapterError(f"{adapter_dir}: only adapter_model.bin; {SAFETENSORS_RULE}",
                                      hint=CONVERT_HINT)
        raise InvalidAdapterError(f"{adapter_dir}: no {WEIGHTS_NAME}")
    tensors = read_header(weights)
    pairs: dict[str, dict[str, TensorInfo]] = {}
    other: list[str] = []
    for key, info in tensors.items():
        match = LORA_KEY.match(key.removeprefix(PEFT_PREFIX))
        if match:
            pairs.setdefault(match["module"], {})[match["which"]] = info
        else:
            other.append(key)
    if not pairs and not other:
        raise InvalidAdapterError(f"{weights}: holds no tensors")
    plan = AdapterPlan(adapter_dir, config, fallback_reason=_fallback_reason(config, other))
    fan_in_fan_out = bool(config.get("fan_in_fan_out"))
    problems: list[str] = []
    for module, pair in sorted(pairs.items()):
        if set(pair) != {"A", "B"}:
            problems.append(f"module {module}: lora_{'A' if 'A' not in pair else 'B'} is missing from {weights.name}")
            continue
        a, b = pair["A"], pair["B"]
        key = find_base_key(module, base)
        if key is None and config.get("target_parameters"):
            # LoRA on parameters (MoE experts, routers): transformers renames and fuses those when it loads the
            # files (experts.N.w1 -> experts.gate_up_proj), so PEFT checks and merges them, not the file plan
            continue
        if key is None:
            problems.append(f"module {module}: {base_name} has no weight {module}.weight")
            continue
        weight = base[key]
        if len(weight.shape) != 2 or len(a.shape) != 2 or len(b.shape) != 2:
            plan.fallback_reason = plan.fallback_reason or f"module {module} is not a linear layer: merged by PEFT"
            continue
        out_f, in_f = reversed(weight.shape) if fan_in_fan_out else weight.shape
        r = a.shape[0]
        if a.shape != (r, in_f) or b.shape != (out_f, r):
            layout = "(in, out), fan_in_fan_out" if fan_in_fan_out else "(out, in)"
            problems.append(
                f"module {module}: lora_A is {list(a.shape)} and lora_B is {list(b.shape)}, but the base weight "
                f"{key} is {list(weight.shape)} {layout}, which needs lora_A [r, {in_f}] and lora_B [{out_f}, r]")
            continue
        plan.targets.append(LoraTarget(module, a, b, weight, r, lora_scale(config, r), fan_in_fan_out))
    if problems:
        shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
        raise InvalidAdapterError(f"{adapter_dir} does not fit {base_name}: {shown}",
                                  hint="pass the base model it was trained on with --base")
    return plan
