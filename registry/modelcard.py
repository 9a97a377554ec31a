"""The README.md model card a push uploads: Hub metadata in YAML front matter, then what a reader needs to trust
and load the model (method, data, hyper-parameters, metrics, merge fidelity, code)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from qlora_tui.registry.evalrecords import EvalResult
from qlora_tui.registry.evalsummary import latest_per_set, result_line
from qlora_tui.registry.records import AdapterVersion

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def hub_id(value: str) -> str | None:
    """The value if it can name something on the Hub (not builtin:..., not a local path), else None."""
    if not value or value.startswith("builtin:") or Path(value).expanduser().exists() or not HUB_ID.match(value):
        return None
    return value


def _profile(version: AdapterVersion) -> dict[str, Any]:
    return version.settings.to_dict() if version.profile else {}


def front_matter(*, base: str, merged: bool, tags: list[str], dataset: str, license_id: str) -> str:
    """The card's YAML metadata block as the Hub reads it, written by huggingface_hub's own ModelCardData."""
    from huggingface_hub import ModelCardData

    data = ModelCardData(base_model=base or None, library_name="transformers" if merged else "peft",
                         pipeline_tag="text-generation", tags=tags, datasets=[dataset] if dataset else None,
                         license=license_id or None)
    return f"---\n{data.to_yaml()}\n---"


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def model_card(version: AdapterVersion, repo: str, *, merged: bool = False, evals: list[EvalResult] | None = None
               ) -> str:
    """README.md for `repo` holding this version (an adapter, or the merged model when `merged`); `evals`: its eval
    results, of which the latest per prompt set and benchmark task are listed."""
    profile = _profile(version)
    base = hub_id(version.base_model)
    dataset = hub_id(version.dataset)
    quant = version.extra.get("quant") or profile.get("quant") or {}
    four_bit = str(quant.get("bits")) == "4"
    tags = ["qlora-tui", "lora"] + (["qlora"] if four_bit else []) + ([version.method] if version.method else [])
    tags += ["merged"] if merged else ["peft"]
    front = [front_matter(base=base, merged=merged, tags=tags, dataset=dataset,
                          license_id=str(version.extra.get("license") or ""))]

    what = "merged model (LoRA folded into the base weights)" if merged else "LoRA adapter"
    lines = ["", f"# {repo.split('/')[-1]}", "",
             f"A {what} for `{version.base_model}`, trained with {version.method or 'an unrecorded method'}"
             f"{f' on `{version.dataset}`' if version.dataset else ''} and registered by qlora-tui as "
             f"`{version.ref}`.", ""]
    warnings = version.extra.get("warnings") or []
    if warnings:
        lines += ["## Warnings", "", "This version ended worse than it started by its own measure:", ""]
        lines += [f"- {w}" for w in warnings] + [""]
    lines += ["## Training", ""]
    facts = [("base model", version.base_model + (f" (revision {version.base_revision})" if version.base_revision
                                                  else "")),
             ("method", version.method or "-"), ("data set", version.dataset or "-"),
             ("data fingerprint", version.dataset_fingerprint or "-"),
             ("base quantization in training", f"{quant.get('bits', 'none')}-bit {quant.get('type', '')}".strip()
              if quant.get("bits") not in (None, "none") else "none")]
    lines += [f"- {k}: {v}" for k, v in facts]
    for section in ("lora", "train", "method"):
        for key, value in sorted((profile.get(section) or {}).items()):
            lines.append(f"- {section}.{key}: {_shown(value)}")
    if not profile.get("lora") and version.extra.get("lora"):
        lines += [f"- lora.{k}: {_shown(v)}" for k, v in sorted(version.extra["lora"].items())]
    if version.metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_shown(v)} |" for k, v in sorted(version.metrics.items())]
    if evals:
        latest = latest_per_set(evals)
        lines += ["", "## Evaluations", "", f"Latest results per prompt set and benchmark task, from "
                  f"`{latest[-1].ref or version.ref}` (`qlora-tui eval` / `qlora-tui bench`):", ""]
        lines += [f"- {result_line(r)} (set {r.content_hash})" for r in latest]
    merge = version.extra.get("merge")
    fidelity = version.extra.get("fidelity")
    if merged and merge:
        lines += ["", "## Merge", "", f"- dtype: {merge.get('dtype')}", f"- base weights: {merge.get('base_weights')}",
                  f"- method: {merge.get('method')}"]
        if fidelity:
            lines.append(f"- fidelity against the {fidelity.get('reference', 'adapter')}: top-1 agreement "
                         f"{fidelity.get('top1_agreement')}, largest KL {fidelity.get('max_kl')} over "
                         f"{fidelity.get('positions')} token positions")
    lines += ["", "## How to load", "", "```python"]
    if merged:
        lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f'model = AutoModelForCausalLM.from_pretrained("{repo}")',
                  f'tokenizer = AutoTokenizer.from_pretrained("{repo}")']
    else:
        lines += ["from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f'base = AutoModelForCausalLM.from_pretrained("{base or version.base_model}")',
                  f'model = PeftModel.from_pretrained(base, "{repo}")',
                  f'tokenizer = AutoTokenizer.from_pretrained("{repo}")']
    lines += ["```", ""]
    if not base:
        lines.insert(lines.index("## How to load") + 2,
                     f"The base model `{version.base_model}` is not on the Hub; load it from where it was made.\n")
    return "\n".join(front + lines)
