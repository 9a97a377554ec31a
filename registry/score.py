"""A registered reward model scoring answers: one number per (prompt, answer), higher meaning preferred.

The base is loaded quantized as in training, with the reward adapter and its
score head; each prompt and answer go through the chat template as the reward
trainer rendered its pairs, so a score here is the score training optimised.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qlora_tui.registry.basemodel import version_base
from qlora_tui.registry.errors import RegistryError
from qlora_tui.registry.lora import check_adapter_files
from qlora_tui.registry.quant import load_kwargs, training_quant
from qlora_tui.registry.records import AdapterVersion
from qlora_tui.registry.store import Store

Turns = list[dict[str, str]]
BATCH = 8


@dataclass
class Pair:
    """A prompt with the answer that should win (chosen) and the one that should lose (rejected)."""

    where: str
    prompt: Turns
    chosen: Turns
    rejected: Turns


@dataclass
class PairScore:
    where: str
    chosen: float
    rejected: float

    @property
    def ranked_right(self) -> bool:
        return self.chosen > self.rejected

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"ranked_right": self.ranked_right}


def reward_version(store: Store, ref: str) -> AdapterVersion:
    """The version `ref` names, which must be a reward model."""
    version = store.get(ref)
    if version.kind != "reward":
        raise RegistryError(f"{version.ref} is a {version.kind!r} version, not a reward model",
                            hint='reward models are trained with train.method = "reward"; qlora-tui adapters '
                                 "lists each version's kind")
    check_adapter_files(version.path, version.ref)
    return version


def as_turns(value: Any, role: str, where: str, key: str) -> Turns:
    """A string becomes one turn of `role`; a list of {"role", "content"} turns is checked and kept."""
    if isinstance(value, str):
        if not value.strip():
            raise RegistryError(f"{where}: {key} is empty")
        return [{"role": role, "content": value}]
    if isinstance(value, list) and value and all(
            isinstance(t, dict) and isinstance(t.get("role"), str) and isinstance(t.get("content"), str)
            for t in value):
        return [{"role": t["role"], "content": t["content"]} for t in value]
    raise RegistryError(f"{where}: {key} must be text or a list of {{\"role\", \"content\"}} turns")


def read_pairs(path: Path) -> list[Pair]:
    """Rows of a .jsonl file with prompt, chosen and rejected (text or chat turns), each naming its line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise RegistryError(f"{path}: no such file", hint="--pairs takes a .jsonl file of prompt/chosen/rejected "
                                                          "rows") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RegistryError(f"{path}: cannot read: {err}") from None
    pairs = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise RegistryError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(row, dict) or not {"prompt", "chosen", "rejected"} <= set(row):
            raise RegistryError(f"{where}: each row needs prompt, chosen and rejected",
                                hint='e.g. {"prompt": "2 + 2?", "chosen": "4", "rejected": "5"}')
        pairs.append(Pair(where, as_turns(row["prompt"], "user", where, "prompt"),
                          as_turns(row["chosen"], "assistant", where, "chosen"),
                          as_turns(row["rejected"], "assistant", where, "rejected")))
    if not pairs:
        raise RegistryError(f"{path}: no pairs in the file")
    return pairs


def _max_len(version: AdapterVersion) -> int:
    return version.settings.train.max_seq_len


class RewardModel:
    """A loaded reward model: base + reward adapter + score head, in eval mode."""

    def __init__(self, store: Store, ref: str, on_progress: Callable[[str, float], None] | None = None) -> None:
        self.version = reward_version(store, ref)
        report = on_progress or (lambda message, fraction: None)
        self.max_len = _max_len(self.version)
        self.model, self.tokenizer = _load(store, self.version, report)

    def render(self, prompt: Turns, answer: Turns) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return str(self.tokenizer.apply_chat_template(prompt + answer, tokenize=False))
        text = "\n".join(t["content"] for t in prompt + answer)
        return text + (self.tokenizer.eos_token or "")

    def score(self, items: list[tuple[Turns, Turns]]) -> list[float]:
        """One score per (prompt, answer)."""
        import torch

        out: list[float] = []
        device = next(self.model.parameters()).device
        for start in range(0, len(items), BATCH):
            texts = [self.render(p, a) for p, a in items[start:start + BATCH]]
            enc = self.tokenizer(texts, add_special_tokens=False, padding=True, padding_side="right",
                                 truncation=True, max_length=self.max_len, return_tensors="pt")
            with torch.no_grad():
                logits = self.model(**{k: v.to(device) for k, v in enc.items()}).logits
            out.extend(float(x) for x in logits[:, 0].float())
        return out

    def score_pairs(self, pairs: list[Pair]) -> list[PairScore]:
        chosen = self.score([(p.prompt, p.chosen) for p in pairs])
        rejected = self.score([(p.prompt, p.rejected) for p in pairs])
        return [PairScore(p.where, c, r) for p, c, r in zip(pairs, chosen, rejected)]


def score_answers(store: Store, ref: str, prompt: str, answers: list[str],
                  on_progress: Callable[[str, float], None] | None = None) -> list[float]:
    """The reward model's score of each answer to one prompt."""
    if not prompt.strip():
        raise RegistryError("--prompt is empty")
    if not answers:
        raise RegistryError("give at least one --response to score")
    model = RewardModel(store, ref, on_progress)
    turns = as_turns(prompt, "user", "--prompt", "prompt")
    return model.score([(turns, [{"role": "assistant", "content": a}]) for a in answers])


def _load(store: Store, version: AdapterVersion, report: Callable[[str, float], None]) -> tuple[Any, Any]:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base_dir = version_base(store, version).path
    tokenizer = AutoTokenizer.from_pretrained(
        version.path if (version.path / "tokenizer_config.json").is_file() else base_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    quant = training_quant(version)
    report(f"loading {version.base_model} ({quant.describe()}) with reward model {version.ref}", 0.1)
    base = AutoModelForSequenceClassification.from_pretrained(
        base_dir, num_labels=1, pad_token_id=tokenizer.pad_token_id, **load_kwargs(quant))
    model = PeftModel.from_pretrained(base, str(version.path)).eval()
    report("scoring", 0.8)
    return model, tokenizer
