"""Reading training data: local files or Hub data sets, format detection, rows turned into conversations.

Every problem names the file and line (or row) and says what was expected, and
is raised before any model is loaded. Rows that are valid but useless (empty
response) are dropped and counted, never silently.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qlora_tui.core.builtin import BUILTIN_PREFIX, builtin_asset
from qlora_tui.core.hashing import sha256_file
from qlora_tui.core.profile.files import is_local_data_path
from qlora_tui.core.profile.schema import DataSection
from qlora_tui.runner.errors import DataError

# The columns that identify each format, in detection order (the first match wins).
FORMAT_COLUMNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # format: (required, optional)
    "messages": (("messages",), ()),
    "sharegpt": (("conversations",), ("system",)),
    "preference": (("chosen", "rejected"), ("prompt",)),
    "kto": (("prompt", "completion", "label"), ()),
    "alpaca": (("instruction", "output"), ("input",)),
    "dolly": (("instruction", "response"), ("context", "category")),
    "prompt_completion": (("prompt", "completion"), ()),
    "prompt_only": (("prompt",), ()),
    "text": (("text",), ()),
}
SFT_FORMATS = ("messages", "sharegpt", "alpaca", "dolly", "prompt_completion", "text")
ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}  # ShareGPT's "from" -> our role


@dataclass
class Row:
    where: str  # "file.jsonl:17" or "owner/set[train] row 17"
    values: dict[str, Any]


@dataclass
class RawData:
    source: str
    rows: list[Row]
    fingerprint: str
    format: str = ""


@dataclass
class Example:
    """One training row as conversation turns: prompt/completion, full messages, or plain text."""

    where: str
    prompt: list[dict[str, str]] = field(default_factory=list)
    completion: list[dict[str, str]] = field(default_factory=list)
    messages: list[dict[str, str]] = field(default_factory=list)
    text: str = ""


@dataclass
class ConvertedData:
    examples: list[Example]
    format: str
    dropped: Counter[str]


# ---------------------------------------------------------------- reading


def read_rows(spec: DataSection) -> RawData:
    """All rows of the configured source, each knowing where it came from."""
    path = spec.path
    if not path:
        raise DataError("data.path: is required")
    if path.startswith(BUILTIN_PREFIX):
        asset = builtin_asset(path[len(BUILTIN_PREFIX):])
        if not asset.exists():
            shipped = ", ".join(sorted(f"{BUILTIN_PREFIX}{p.stem}" for p in asset.parent.glob("*.jsonl")))
            raise DataError(f"data.path: unknown built-in data set {path!r}; shipped: {shipped}")
        raw = _read_local(asset)
        raw.source = path
        for row in raw.rows:  # "builtin:demo-instructions:3", not the install folder
            row.where = row.where.replace(str(asset), path, 1)
    elif is_local_data_path(path) or Path(path).exists():
        raw = _read_local(Path(path))
    else:
        raw = _read_hub(spec)
    if spec.max_rows:
        raw.rows = raw.rows[: spec.max_rows]
    if not raw.rows:
        raise DataError(f"{raw.source}: the data set is empty (no rows)")
    if spec.text_field != "text":
        _rename_text_field(raw, spec.text_field)
    return raw


def _rename_text_field(raw: RawData, name: str) -> None:
    """Plain-text sets keep their text under other names ("quote", "content"); data.text_field says which."""
    for row in raw.rows:
        if name not in row.values:
            raise DataError(f"{row.where}: row lacks {name!r} (data.text_field); it has "
                            f"{', '.join(sorted(row.values)) or 'no columns'}", hint=text_field_hint(row))
        row.values = {**{k: v for k, v in row.values.items() if k != name}, "text": row.values[name]}


def _read_local(path: Path) -> RawData:
    if not path.exists():
        raise DataError(f"data.path: {path}: no such file", hint="paths are relative to the profile's folder")
    if path.is_dir():
        raise DataError(f"data.path: {path}: is a directory; name a .jsonl, .json, .csv or .parquet file")
    suffix = path.suffix.lower()
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}
    if suffix not in readers:
        raise DataError(f"data.path: {path}: unsupported file type {suffix or '(none)'}; "
                        "use .jsonl, .json, .csv or .parquet")
    try:
        rows = readers[suffix](path)
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    return RawData(str(path), rows, sha256_file(path)[:16])


def _read_jsonl(path: Path) -> list[Row]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(value, dict):
                raise DataError(f"{path}:{number}: each line must be a JSON object, got {type(value).__name__}")
            rows.append(Row(f"{path}:{number}", value))
    return rows


def _not_utf8(path: Path) -> DataError:
    """Where a text file stops being UTF-8: its line and byte offset."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        return DataError(f"{path}:{line}: not UTF-8 text (byte offset {err.start}: {err.reason})",
                         hint="save the file as UTF-8, e.g. iconv -f latin1 -t utf-8 FILE > NEW")
    return DataError(f"{path}: not UTF-8 text")


def _read_json(path: Path) -> list[Row]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: a JSON file must hold a list of row objects (or one object with one list)")
        value = lists[0]
    if not isinstance(value, list):
        raise DataError(f"{path}: a JSON file must hold a list of row objects")
    rows = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise DataError(f"{path}: row {index}: must be an object, got {type(item).__name__}")
        rows.append(Row(f"{path} row {index}", item))
    return rows


def _read_csv(path: Path) -> list[Row]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            return []
        rows = []
        for record in reader:
            if None in record:
                raise DataError(f"{path}:{reader.line_num}: more fields than the header has")
            rows.append(Row(f"{path}:{reader.line_num}", dict(record)))
    return rows


def _read_parquet(path: Path) -> list[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a bad file
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    return [Row(f"{path} row {i}", record) for i, record in enumerate(table.to_pylist())]


def _read_hub(spec: DataSection) -> RawData:
    try:
        import datasets

        ds = datasets.load_dataset(spec.path, spec.subset or None, split=spec.split)
    except Exception as err:  # network, missing set, bad split: all worth one clear line
        raise DataError(
            f"data.path: {spec.path!r} is not a local file and could not be loaded as a Hub data set "
            f"(split {spec.split!r}): {str(err).splitlines()[0] if str(err) else type(err).__name__}",
            hint="local files need a .jsonl/.json/.csv/.parquet suffix; Hub data sets need network access",
        ) from None
    label = f"{spec.path}[{spec.split}]"
    if spec.max_rows:
        ds = ds.select(range(min(spec.max_rows, len(ds))))
    rows = [Row(f"{label} row {i}", dict(r)) for i, r in enumerate(ds)]
    return RawData(label, rows, str(getattr(ds, "_fingerprint", ""))[:16])


# ---------------------------------------------------------------- formats


def detect_format(raw: RawData, declared: str) -> str:
    if declared != "auto":
        return declared
    keys = set(raw.rows[0].values)
    for name, (required, _optional) in FORMAT_COLUMNS.items():
        if set(required) <= keys:
            return name
    known = "; ".join(f"{n}: {', '.join(r)}" for n, (r, _) in FORMAT_COLUMNS.items())
    raise DataError(f"{raw.rows[0].where}: cannot tell the data format from the columns "
                    f"{', '.join(sorted(keys)) or '(none)'}; expected one of: {known}",
                    hint="set data.format in the profile; for plain text under another column, data.format = "
                         '"text" and data.text_field = "COLUMN"')


def require_columns(row: Row, fmt: str) -> None:
    required, optional = FORMAT_COLUMNS[fmt]
    missing = [c for c in required if c not in row.values]
    if missing:
        wanted = ", ".join(required) + (f" (optional: {', '.join(optional)})" if optional else "")
        raise DataError(f"{row.where}: {fmt} row lacks {', '.join(repr(m) for m in missing)}; "
                        f"{fmt} rows have {wanted}", hint=text_field_hint(row) if fmt == "text" else "")


def text_field_hint(row: Row) -> str:
    """For plain text kept under another column: name data.text_field and the columns that could be it."""
    columns = [k for k, v in row.values.items() if isinstance(v, str)] or sorted(row.values)
    example = columns[0] if columns else "quote"
    return (f'set data.text_field to the column that holds the text (e.g. data.text_field = "{example}"); '
            f"this row has: {', '.join(columns) or 'no columns'}")


def _text(row: Row, key: str, *, optional: bool = False) -> str:
    value = row.values.get(key)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{row.where}: {key!r} must be text, got {type(value).__name__}")
    return value


def _turns(row: Row, key: str, value: Any) -> list[dict[str, str]]:
    """A list of {role, content} turns, checked; a bare string becomes one turn of `default_role`."""
    if not isinstance(value, list) or not value:
        raise DataError(f"{row.where}: {key!r} must be a non-empty list of {{\"role\", \"content\"}} objects")
    turns = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            raise DataError(f"{row.where}: {key}[{i}] must be an object with \"role\" and \"content\"")
        if turn["role"] not in ROLES:
            raise DataError(f"{row.where}: {key}[{i}].role must be one of {', '.join(ROLES)}; got {turn['role']!r}")
        if not isinstance(turn["content"], str):
            raise DataError(f"{row.where}: {key}[{i}].content must be text")
        turns.append({"role": turn["role"], "content": turn["content"]})
    return turns


def _sharegpt_turns(row: Row) -> list[dict[str, str]]:
    """ShareGPT rows (LLaMA-Factory, Axolotl): "conversations" of {"from": human|gpt|system, "value": text},
    with an optional top-level "system"."""
    value = row.values["conversations"]
    if not isinstance(value, list) or not value:
        raise DataError(f"{row.where}: 'conversations' must be a non-empty list of {{\"from\", \"value\"}} objects")
    turns = []
    system = row.values.get("system")
    if isinstance(system, str) and system.strip():
        turns.append({"role": "system", "content": system})
    for i, turn in enumerate(value):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise DataError(f"{row.where}: conversations[{i}] must be an object with \"from\" and \"value\"")
        if turn["from"] not in SHAREGPT_ROLES:
            raise DataError(f"{row.where}: conversations[{i}].from must be one of {', '.join(SHAREGPT_ROLES)}; "
                            f"got {turn['from']!r}")
        if not isinstance(turn["value"], str):
            raise DataError(f"{row.where}: conversations[{i}].value must be text")
        turns.append({"role": SHAREGPT_ROLES[turn["from"]], "content": turn["value"]})
    return turns


def _user_turns(system: str, content: str) -> list[dict[str, str]]:
    turns = [{"role": "system", "content": system}] if system else []
    return turns + [{"role": "user", "content": content}]


def to_sft_examples(raw: RawData, declared: str, system_prompt: str = "") -> ConvertedData:
    """Rows -> examples for supervised fine-tuning; rows with nothing to learn are dropped and counted."""
    fmt = detect_format(raw, declared)
    if fmt not in SFT_FORMATS:
        raise DataError(f"{raw.source}: rows look like {fmt!r} data, which train.method = \"sft\" cannot use; "
                        f"SFT formats: {', '.join(SFT_FORMATS)}", hint="set train.method to match the data")
    examples: list[Example] = []
    dropped: Counter[str] = Counter()
    for row in raw.rows:
        require_columns(row, fmt)
        example = Example(row.where)
        if fmt in ("messages", "sharegpt"):
            example.messages = (_turns(row, "messages", row.values["messages"]) if fmt == "messages"
                                else _sharegpt_turns(row))
            if system_prompt and example.messages[0]["role"] != "system":
                example.messages.insert(0, {"role": "system", "content": system_prompt})
            if not any(t["role"] == "assistant" and t["content"].strip() for t in example.messages):
                dropped["no assistant turn with text"] += 1
                continue
        elif fmt == "text":
            example.text = _text(row, "text")
            if not example.text.strip():
                dropped["empty text"] += 1
                continue
        else:
            if fmt == "alpaca":
                instruction, extra, answer = (_text(row, "instruction"), _text(row, "input", optional=True),
                                              _text(row, "output"))
            elif fmt == "dolly":
                instruction, extra, answer = (_text(row, "instruction"), _text(row, "context", optional=True),
                                              _text(row, "response"))
            else:
                instruction, extra, answer = "", "", ""
            if fmt == "prompt_completion":
                prompt, completion = row.values["prompt"], row.values["completion"]
                example.prompt = (_turns(row, "prompt", prompt) if isinstance(prompt, list)
                                  else _user_turns(system_prompt, _text(row, "prompt")))
                example.completion = (_turns(row, "completion", completion) if isinstance(completion, list)
                                      else [{"role": "assistant", "content": _text(row, "completion")}])
            else:
                content = f"{instruction}\n\n{extra}" if extra.strip() else instruction
                example.prompt = _user_turns(system_prompt, content)
                example.completion = [{"role": "assistant", "content": answer}]
            if not any(t["content"].strip() for t in example.completion):
                dropped["empty response"] += 1
                continue
            if not any(t["content"].strip() for t in example.prompt):
                dropped["empty instruction"] += 1
                continue
        examples.append(example)
    return ConvertedData(examples, fmt, dropped)


def data_fingerprint(raw: RawData, spec: DataSection) -> str:
    """Identifies the rows a run trains on: the source's content plus the settings that select rows."""
    settings = json.dumps({"format": spec.format, "max_rows": spec.max_rows, "eval_fraction": spec.eval_fraction,
                           "system_prompt": spec.system_prompt, "split": spec.split, "subset": spec.subset},
                          sort_keys=True)
    return hashlib.sha256(f"{raw.fingerprint}|{settings}".encode()).hexdigest()[:16]
