"""Rows for alignment: preference pairs, unpaired KTO rows, and prompts for online RL.

Rows become conversational examples in the shape TRL's trainers take
({"prompt": turns, "chosen": turns, "rejected": turns}, ...). Problems name the
file and line like SFT data; rows with nothing to learn are dropped and counted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from qlora_tui.runner.data.rows import RawData, Row, _text, _turns, _user_turns, detect_format, require_columns
from qlora_tui.runner.errors import DataError

Turns = list[dict[str, str]]
METHOD_FORMATS = {
    "dpo": ("preference",),
    "orpo": ("preference",),
    "reward": ("preference",),
    "kto": ("kto", "preference"),
    "rlhf": ("prompt_only", "preference", "kto", "prompt_completion", "alpaca", "dolly", "messages"),
}


@dataclass
class AlignmentData:
    examples: list[dict[str, Any]]
    format: str
    dropped: Counter[str] = field(default_factory=Counter)


def _prompt(row: Row, system_prompt: str) -> Turns:
    value = row.values["prompt"]
    if isinstance(value, list):
        return _turns(row, "prompt", value)
    return _user_turns(system_prompt, _text(row, "prompt"))


def _answer(row: Row, key: str) -> Turns:
    value = row.values[key]
    if isinstance(value, list):
        return _turns(row, key, value)
    return [{"role": "assistant", "content": _text(row, key)}]


def _split_implicit_prompt(row: Row) -> tuple[Turns, Turns, Turns]:
    """Pairs without a prompt column: the turns chosen and rejected share are the prompt."""
    chosen, rejected = _turns(row, "chosen", row.values["chosen"]), _turns(row, "rejected", row.values["rejected"])
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise DataError(f"{row.where}: a pair without 'prompt' needs chosen and rejected conversations that "
                        "start with the same prompt turns")
    return chosen[:shared], chosen[shared:], rejected[shared:]


def _label(row: Row) -> bool:
    value = row.values["label"]
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise DataError(f"{row.where}: 'label' must be true or false (desirable or not), got {value!r}")


def _has_text(turns: Turns) -> bool:
    return any(t["content"].strip() for t in turns)


def to_alignment_examples(raw: RawData, method: str, declared: str, system_prompt: str = "") -> AlignmentData:
    """Rows -> the examples `method` trains on; the format must be one the method can use."""
    fmt = detect_format(raw, declared)
    allowed = METHOD_FORMATS[method]
    if fmt not in allowed:
        raise DataError(f"{raw.source}: rows look like {fmt!r} data; train.method = \"{method}\" needs "
                        f"{' or '.join(allowed)} rows", hint=_format_hint(method))
    data = AlignmentData([], fmt)
    for row in raw.rows:
        require_columns(row, fmt)
        example = _convert(row, fmt, method, system_prompt, data.dropped)
        if example is not None:
            data.examples.extend(example)
    return data


def _convert(row: Row, fmt: str, method: str, system_prompt: str,
             dropped: Counter[str]) -> list[dict[str, Any]] | None:
    if method == "rlhf":
        prompt = _prompt_of(row, fmt, system_prompt)
        if not _has_text(prompt):
            dropped["empty prompt"] += 1
            return None
        return [{"prompt": prompt}]
    if fmt == "kto":
        prompt, completion = _prompt(row, system_prompt), _answer(row, "completion")
        if not _has_text(completion):
            dropped["empty completion"] += 1
            return None
        return [{"prompt": prompt, "completion": completion, "label": _label(row)}]
    if "prompt" in row.values:
        prompt, chosen, rejected = _prompt(row, system_prompt), _answer(row, "chosen"), _answer(row, "rejected")
    else:
        prompt, chosen, rejected = _split_implicit_prompt(row)
    if not _has_text(chosen) or not _has_text(rejected):
        dropped["empty chosen or rejected"] += 1
        return None
    if chosen == rejected:
        dropped["chosen equals rejected"] += 1
        return None
    if method == "kto":  # a pair gives one desirable and one undesirable row
        return [{"prompt": prompt, "completion": chosen, "label": True},
                {"prompt": prompt, "completion": rejected, "label": False}]
    return [{"prompt": prompt, "chosen": chosen, "rejected": rejected}]


def _prompt_of(row: Row, fmt: str, system_prompt: str) -> Turns:
    if fmt in ("prompt_only", "preference", "kto", "prompt_completion"):
        if "prompt" not in row.values:
            return _split_implicit_prompt(row)[0]
        return _prompt(row, system_prompt)
    if fmt == "messages":
        turns = _turns(row, "messages", row.values["messages"])
        while turns and turns[-1]["role"] == "assistant":
            turns = turns[:-1]
        return turns
    extra_key = "input" if fmt == "alpaca" else "context"
    instruction, extra = _text(row, "instruction"), _text(row, extra_key, optional=True)
    return _user_turns(system_prompt, f"{instruction}\n\n{extra}" if extra.strip() else instruction)


def _format_hint(method: str) -> str:
    if method in ("dpo", "orpo", "reward"):
        return 'preference rows have "prompt", "chosen" and "rejected"'
    if method == "kto":
        return 'KTO rows have "prompt", "completion" and "label" (true/false), or are preference pairs'
    return 'RL rows need a "prompt"'


def pair_lengths(tokenizer: Any, example: dict[str, Any]) -> tuple[int, list[int]]:
    """Tokens of the prompt, and of prompt + each answer, as the chat template renders them."""
    def count(turns: Turns, generation_prompt: bool) -> int:
        text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation_prompt)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    prompt = count(example["prompt"], True)
    answers = [example[k] for k in ("chosen", "rejected", "completion") if k in example]
    return prompt, [count(example["prompt"] + answer, False) for answer in answers]
