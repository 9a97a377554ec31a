"""What the model will see: the first rows after the chat template, trained tokens told from masked ones.

It reads and tokenizes the data exactly as a run's preparation does (runner.data,
runner.preflight), so the pre-flight counts (rows read, dropped and why,
truncated, trainable tokens) are the ones the run will report, before anything
is launched. `qlora-tui data PROFILE` prints it; the app runs
`python -m qlora_tui.runner.data.preview` in a child process, so transformers
never loads into the app, and reads the JSON it prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qlora_tui.core.builtin import ensure_builtin_model, is_builtin
from qlora_tui.core.errors import UserFacingError
from qlora_tui.core.profile.files import load_profile
from qlora_tui.core.profile.schema import Profile
from qlora_tui.runner.data.chat import render
from qlora_tui.runner.data.preference import to_alignment_examples
from qlora_tui.runner.data.preflight import (
    IGNORE,
    PreflightReport,
    TokenizedRow,
    preflight_alignment,
    prepare_tokenizer,
    tokenize_all,
    tokenize_example,
)
from qlora_tui.runner.data.rows import read_rows, to_sft_examples
from qlora_tui.runner.prepare import resolve_parent

TRAINED, MASKED, NOTE = "trained", "masked", "note"  # a NOTE segment is ours, not text the model sees


@dataclass
class PreviewRow:
    where: str
    segments: list[tuple[str, str]]  # (text, TRAINED | MASKED | NOTE), in order
    tokens: int  # after truncation at max_seq_len
    trained_tokens: int
    cut_tokens: int = 0  # past max_seq_len: the model never sees them
    dropped: str = ""  # why the run will leave this row out, if it will


@dataclass
class DataPreview:
    profile_name: str
    method: str
    source: str
    tokenizer: str
    rows: list[PreviewRow]
    report: PreflightReport
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def tokenizer_source(profile: Profile, home: Path) -> str:
    """Where the run will take its tokenizer from: the parent adapter's, else the base model's (files only)."""
    _ref, parent_path = resolve_parent(profile, home)
    if parent_path is not None and (parent_path / "tokenizer_config.json").exists():
        return str(parent_path)
    if is_builtin(profile.model.id):
        return str(ensure_builtin_model(home, profile.model.id))
    return profile.model.id  # a local directory or a Hub id: AutoTokenizer fetches only the tokenizer files


def segments(tokenizer: Any, ids: list[int], labels: list[int]) -> list[tuple[str, str]]:
    """Runs of trained and masked tokens as text; each run is cut from decodes of growing prefixes, so the
    pieces join to exactly the decoded row (a token's leading space stays with it)."""
    out: list[tuple[str, str]] = []
    start, done = 0, ""
    for end in range(1, len(ids) + 1):
        if end < len(ids) and (labels[end] != IGNORE) == (labels[start] != IGNORE):
            continue
        text = tokenizer.decode(ids[:end], skip_special_tokens=False)
        out.append((text[len(done):], TRAINED if labels[start] != IGNORE else MASKED))
        start, done = end, text
    return out


def _sft_row(tokenizer: Any, example: Any, max_seq_len: int) -> PreviewRow:
    row: TokenizedRow = tokenize_example(tokenizer, example)
    cut = max(0, len(row.input_ids) - max_seq_len)
    ids, labels = row.input_ids[:max_seq_len], row.labels[:max_seq_len]
    trained = sum(1 for label in labels if label != IGNORE)
    dropped = "" if trained else f"no response tokens left within max_seq_len={max_seq_len}"
    return PreviewRow(example.where, segments(tokenizer, ids, labels), len(ids), trained, cut, dropped)


def _count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _alignment_row(tokenizer: Any, example: dict[str, Any], where: str, method: str) -> PreviewRow:
    """The prompt as the chat template renders it (masked), then each answer the method trains on."""
    prompt = render(tokenizer, example["prompt"], True)
    parts: list[tuple[str, str]] = [(prompt, MASKED)]
    tokens = _count(tokenizer, prompt)
    trained = 0
    answers = [k for k in ("chosen", "rejected", "completion") if k in example]
    if not answers:
        parts.append(("\n[the model writes the completion, scored by the reward model]", NOTE))
    for key in answers:
        full = render(tokenizer, example["prompt"] + example[key], False)
        answer = full[len(prompt):] if full.startswith(prompt) else full
        label = f"{key}, {'desirable' if example.get('label') else 'undesirable'}" if "label" in example else key
        parts += [(f"\n[{label}] ", NOTE), (answer, TRAINED)]
        count = _count(tokenizer, full) - tokens
        trained += count
    return PreviewRow(where, parts, tokens + trained, trained)


def preview_data(profile: Profile, home: Path, rows: int = 5) -> DataPreview:
    """The first `rows` rows as the run will tokenize them, and the pre-flight report over all of them."""
    from transformers import AutoTokenizer

    source = tokenizer_source(profile, home)
    tokenizer = AutoTokenizer.from_pretrained(source, revision=profile.model.revision or None,
                                              trust_remote_code=profile.model.trust_remote_code)
    raw = read_rows(profile.data)
    method, max_len = profile.train.method, profile.train.max_seq_len
    if method == "sft":
        converted = to_sft_examples(raw, profile.data.format, profile.data.system_prompt)
        notes = prepare_tokenizer(tokenizer, needs_chat_template=converted.format != "text")
        _kept, report = tokenize_all(tokenizer, converted, len(raw.rows), max_len, list(notes))
        shown = [_sft_row(tokenizer, example, max_len) for example in converted.examples[:rows]]
    else:
        aligned = to_alignment_examples(raw, method, profile.data.format, profile.data.system_prompt)
        notes = prepare_tokenizer(tokenizer, needs_chat_template=True)
        _kept, report = preflight_alignment(tokenizer, aligned, len(raw.rows), max_len, method,
                                            profile.method.max_completion_len, list(notes))
        shown = [_alignment_row(tokenizer, example, f"{raw.source} example {i}", method)
                 for i, example in enumerate(aligned.examples[:rows])]
    return DataPreview(profile.name, method, raw.source, source, shown, report, notes)


# ---------------------------------------------------------------- text


def row_header(number: int, row: PreviewRow) -> str:
    head = f"row {number}  {row.where}  {row.tokens} tokens, {row.trained_tokens} trained"
    if row.cut_tokens:
        head += f", {row.cut_tokens} cut at max_seq_len"
    if row.dropped:
        head += f"  (dropped: {row.dropped})"
    return head


def format_preview(preview: DataPreview, color: bool) -> str:
    """Plain text for the CLI: trained spans in green on a terminal, else between ⟦ and ⟧; masked text as is."""
    marks = ("\033[32m", "\033[0m") if color else ("⟦", "⟧")
    how = "in green" if color else "between ⟦ and ⟧"
    out = [f"{preview.profile_name} ({preview.method}): {preview.source}, tokenizer {preview.tokenizer}",
           f"trained (response) tokens are shown {how}; the rest is masked (no loss on it)", ""]
    for number, row in enumerate(preview.rows, start=1):
        out.append(f"── {row_header(number, row)}")
        text = ""
        for piece, kind in row.segments:
            if kind == TRAINED:
                text += marks[0] + piece + marks[1]
            elif kind == NOTE:
                text += ("\033[2m" + piece + "\033[0m") if color else piece
            else:
                text += piece
        out += [text, ""]
    out.append("pre-flight (all rows):")
    out += [f"  {line}" for line in preview.report.lines()]
    out += [f"  note: {note}" for note in preview.notes]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """The app's child process: one JSON object on stdout, the preview or {"error", "hint"}."""
    parser = argparse.ArgumentParser(prog="python -m qlora_tui.runner.data.preview")
    parser.add_argument("profile", type=Path)
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=5)
    args = parser.parse_args(argv)
    try:
        preview = preview_data(load_profile(args.profile), args.home, args.rows)
    except UserFacingError as err:
        print(json.dumps({"error": err.message, "hint": err.hint}))
        return 1
    print(json.dumps(preview.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
