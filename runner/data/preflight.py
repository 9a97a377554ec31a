"""Tokenizing examples once, with an honest account of what happened to every row.

The trainer receives the ids and labels made here, so the report (rows read,
dropped and why, truncated, trainable tokens) describes exactly what trains.
Loss is taken on responses only: assistant turns, or the completion.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from qlora_tui.runner.data.chat import render_ids
from qlora_tui.runner.data.preference import pair_lengths
from qlora_tui.runner.data.rows import ConvertedData, Example
from qlora_tui.runner.errors import DataError

IGNORE = -100

# Used when a tokenizer has no chat template (base models such as Mistral-7B-v0.1): plain text, no new tokens.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### Instruction:\n{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'assistant' %}### Response:\n{{ message['content'] }}{{ eos_token }}\n\n"
    "{% else %}{{ message['content'] }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Response:\n{% endif %}"
)


@dataclass
class TokenizedRow:
    input_ids: list[int]
    labels: list[int]


@dataclass
class PreflightReport:
    rows_read: int
    rows_used: int
    rows_dropped: dict[str, int]
    rows_truncated: int
    trainable_tokens: int
    total_tokens: int
    longest_row_tokens: int
    max_seq_len: int
    format: str
    notes: list[str] = field(default_factory=list)

    def as_event(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def lines(self) -> list[str]:
        """The report in words, as the CLI's data preview and the app's preview screen show it."""
        lines = [f"rows: {self.rows_read} read, {self.rows_used} used ({self.format} format)",
                 f"truncated at max_seq_len={self.max_seq_len}: {self.rows_truncated} rows "
                 f"(the longest has {self.longest_row_tokens} tokens)",
                 f"tokens: {self.trainable_tokens:,} trained of {self.total_tokens:,}"]
        if self.rows_dropped:
            lines.append("dropped: " + "; ".join(f"{n} {why}" for why, n in self.rows_dropped.items()))
        return lines


def prepare_tokenizer(tokenizer: Any, needs_chat_template: bool) -> list[str]:
    """Make the tokenizer usable for training and say what was changed (notes go into the events)."""
    notes = []
    if needs_chat_template and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
        notes.append("the tokenizer has no chat template: using a plain '### Instruction / ### Response' "
                     "template, saved with the adapter so inference formats prompts the same way")
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no end-of-sequence token, so the model could never learn to stop")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
        notes.append("the tokenizer has no pad token: padding with the eos token; padding is masked by "
                     "position, so the end-of-sequence token is still learned")
    elif tokenizer.pad_token_id == tokenizer.eos_token_id:
        notes.append("the pad token is the eos token: padding is masked by position, not by token id, "
                     "so the end-of-sequence token is still learned")
    return notes


def tokenize_example(tokenizer: Any, example: Example) -> TokenizedRow:
    if example.text:
        ids = list(tokenizer(example.text)["input_ids"])
        if not ids or ids[-1] != tokenizer.eos_token_id:
            ids.append(tokenizer.eos_token_id)
        return TokenizedRow(ids, list(ids))
    if example.messages:
        return _tokenize_messages(tokenizer, example.messages)
    prompt_ids = render_ids(tokenizer, example.prompt, True)
    full_ids = render_ids(tokenizer, example.prompt + example.completion, False)
    shared = _common_prefix(prompt_ids, full_ids)
    return TokenizedRow(full_ids, [IGNORE] * shared + full_ids[shared:])


def _tokenize_messages(tokenizer: Any, messages: list[dict[str, str]]) -> TokenizedRow:
    """Labels on assistant turns only, found by rendering growing prefixes of the conversation."""
    full_ids = render_ids(tokenizer, messages, False)
    labels = [IGNORE] * len(full_ids)
    for i, turn in enumerate(messages):
        if turn["role"] != "assistant":
            continue
        start = _common_prefix(render_ids(tokenizer, messages[:i], True), full_ids) if i else 0
        end = len(render_ids(tokenizer, messages[: i + 1], False))
        labels[start:end] = full_ids[start:end]
    return TokenizedRow(full_ids, labels)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def tokenize_all(tokenizer: Any, data: ConvertedData, rows_read: int, max_seq_len: int,
                 notes: list[str]) -> tuple[list[TokenizedRow], PreflightReport]:
    """Tokenize, truncate at max_seq_len (keeping the start), drop rows left with nothing to learn."""
    rows: list[TokenizedRow] = []
    dropped: Counter[str] = Counter(data.dropped)
    truncated = trainable = total = longest = 0
    for example in data.examples:
        row = tokenize_example(tokenizer, example)
        longest = max(longest, len(row.input_ids))
        if len(row.input_ids) > max_seq_len:
            truncated += 1
            row = TokenizedRow(row.input_ids[:max_seq_len], row.labels[:max_seq_len])
        learnable = sum(1 for label in row.labels if label != IGNORE)
        if learnable == 0:
            dropped[f"no response tokens left within max_seq_len={max_seq_len}"] += 1
            continue
        trainable += learnable
        total += len(row.input_ids)
        rows.append(row)
    hint = f"raise train.max_seq_len (the longest row has {longest} tokens)" if truncated else "check the data file"
    return rows, _report(rows_read, len(rows), dropped, truncated, trainable, total, longest, max_seq_len,
                         data.format, notes, hint)


def preflight_alignment(tokenizer: Any, data: Any, rows_read: int, max_seq_len: int, method: str,
                        completion_budget: int, notes: list[str]) -> tuple[list[dict[str, Any]], PreflightReport]:
    """The same account for alignment rows: TRL tokenizes them itself, so here we only measure.

    For online RL the prompt must leave room for `completion_budget` generated tokens.
    """
    kept: list[dict[str, Any]] = []
    dropped: Counter[str] = Counter(data.dropped)
    truncated = trainable = total = longest = 0
    for example in data.examples:
        prompt_len, full_lens = pair_lengths(tokenizer, example)
        longest = max([longest, prompt_len, *full_lens])
        if method == "rlhf":
            if prompt_len + completion_budget > max_seq_len:
                dropped[f"prompt leaves no room for {completion_budget} new tokens within max_seq_len={max_seq_len}"] \
                    += 1
                continue
            total += prompt_len
        else:
            if prompt_len >= max_seq_len:
                dropped[f"prompt fills max_seq_len={max_seq_len}"] += 1
                continue
            truncated += any(length > max_seq_len for length in full_lens)
            trainable += sum(min(length, max_seq_len) - prompt_len for length in full_lens)
            total += sum(min(length, max_seq_len) for length in full_lens)
        kept.append(example)
    return kept, _report(rows_read, len(kept), dropped, truncated, trainable, total, longest, max_seq_len,
                         data.format, notes, f"raise train.max_seq_len (the longest row has {longest} tokens)")


def _report(rows_read: int, used: int, dropped: Counter[str], truncated: int, trainable: int, total: int,
            longest: int, max_seq_len: int, fmt: str, notes: list[str], hint: str) -> PreflightReport:
    """The pre-flight account; zero usable rows is an error, never a silently empty run."""
    if not used:
        reasons = "; ".join(f"{n} {why}" for why, n in dropped.items()) or "no rows"
        raise DataError(f"no trainable rows: all {rows_read} rows were dropped ({reasons})", hint=hint)
    return PreflightReport(
        rows_read=rows_read, rows_used=used, rows_dropped=dict(dropped), rows_truncated=truncated,
        trainable_tokens=trainable, total_tokens=total, longest_row_tokens=longest, max_seq_len=max_seq_len,
        format=fmt, notes=notes,
    )
