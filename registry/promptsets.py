"""Prompt sets: the prompts a person cares about, with what each answer must do, kept as a JSON-lines file.

`<home>/prompts/NAME.jsonl` (or any path). An optional first line
`{"settings": {...}}` sets the decoding (max_new_tokens, temperature, top_p,
seed), the reference similarity (similarity, threshold), ignore_case and a
system prompt for the whole set. Every other line is one prompt:

    {"id": "even-14", "prompt": "Is 14 even or odd?", "contains": "even", "not_contains": "odd"}
    {"messages": [{"role": "user", "content": "Hi"}], "reference": "Hello!", "similarity": "chrf"}

Checks: contains / not_contains / regex (a string or a list), exact, and
reference (scored by similarity against threshold). A row without checks is
answered and shown, never scored. The set's content hash is that of its bytes,
so results on an edited set are never compared with older ones.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qlora_tui.core.names import NAME_PATTERN
from qlora_tui.registry.errors import RegistryError
from qlora_tui.registry.scoring import SIMILARITIES, Expectation

PROMPTS_DIR = "prompts"
SUFFIX = ".jsonl"
CHECK_KEYS = ("contains", "not_contains", "regex", "exact", "reference", "similarity", "threshold")
ROW_KEYS = ("id", "prompt", "messages", "system", *CHECK_KEYS)
SETTING_KEYS = ("max_new_tokens", "temperature", "top_p", "seed", "similarity", "threshold", "ignore_case", "system")
ROLES = ("system", "user", "assistant")


class PromptSetError(RegistryError):
    kind = "prompt_set"


@dataclass(frozen=True)
class Decoding:
    """One set's decoding settings: every version answers with the same ones."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


@dataclass
class PromptCase:
    """One prompt of a set: the chat turns to send and what the answer must do."""

    id: str
    messages: list[dict[str, str]]
    expect: Expectation

    @property
    def text(self) -> str:
        """The last user turn, for tables and listings."""
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "user"), "")


@dataclass
class PromptSet:
    """A parsed set: its name, where it came from, its content hash, decoding and cases."""

    name: str
    path: Path
    content_hash: str
    decoding: Decoding
    cases: list[PromptCase] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # the settings line as written

    @property
    def scored(self) -> int:
        return sum(1 for c in self.cases if not c.expect.empty)


def prompts_dir(home: Path) -> Path:
    return Path(home) / PROMPTS_DIR


def list_prompt_sets(home: Path) -> list[str]:
    """The names of the sets in the data home's prompts/ folder, sorted."""
    folder = prompts_dir(home)
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(SUFFIX)] for p in folder.glob(f"*{SUFFIX}") if p.is_file())


def find_prompt_set(home: Path, name_or_path: str) -> Path:
    """NAME in <home>/prompts/, or a path to a .jsonl file."""
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix == SUFFIX or "/" in name_or_path:
        if candidate.is_file():
            return candidate.resolve()
        raise PromptSetError(f"--prompts {name_or_path}: no such file")
    path = prompts_dir(home) / f"{name_or_path}{SUFFIX}"
    if path.is_file():
        return path
    have = list_prompt_sets(home)
    raise PromptSetError(f"--prompts {name_or_path}: no prompt set of that name in {prompts_dir(home)}",
                         hint=f"sets here: {', '.join(have)}" if have else
                         f"write one as {path} (one JSON object per line: prompt, contains, ...), or give a path")


def _strings(value: Any, where: str, key: str) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise PromptSetError(f"{where}: {key} must be a string or a list of strings, got {value!r}")
    return tuple(values)


def _check_settings(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise PromptSetError(f"{where}: settings must be an object")
    unknown = sorted(set(raw) - set(SETTING_KEYS))
    if unknown:
        raise PromptSetError(f"{where}: unknown setting(s) {', '.join(unknown)}; allowed: {', '.join(SETTING_KEYS)}")
    return raw


def decoding_from(settings: dict[str, Any], where: str) -> Decoding:
    try:
        decoding = Decoding(int(settings.get("max_new_tokens", 64)), float(settings.get("temperature", 0.0)),
                            float(settings.get("top_p", 1.0)), int(settings.get("seed", 0)))
    except (TypeError, ValueError) as err:
        raise PromptSetError(f"{where}: decoding settings: {err}") from None
    if not 1 <= decoding.max_new_tokens <= 8192 or decoding.temperature < 0 or not 0 < decoding.top_p <= 1:
        raise PromptSetError(f"{where}: max_new_tokens must be 1-8192, temperature >= 0 and top_p in (0, 1]")
    return decoding


def _expectation(row: dict[str, Any], settings: dict[str, Any], where: str) -> Expectation:
    similarity = str(row.get("similarity", settings.get("similarity", "token_f1")))
    if similarity not in SIMILARITIES:
        raise PromptSetError(f"{where}: similarity {similarity!r}: use one of {', '.join(SIMILARITIES)}")
    try:
        threshold = float(row.get("threshold", settings.get("threshold", 0.5)))
    except (TypeError, ValueError):
        raise PromptSetError(f"{where}: threshold must be a number in [0, 1]") from None
    if not 0 <= threshold <= 1:
        raise PromptSetError(f"{where}: threshold must be a number in [0, 1], got {threshold}")
    for key in ("exact", "reference"):
        if key in row and not isinstance(row[key], str):
            raise PromptSetError(f"{where}: {key} must be a string")
    regex = _strings(row.get("regex", []), where, "regex")
    for pattern in regex:
        try:
            re.compile(pattern)
        except re.error as err:
            raise PromptSetError(f"{where}: regex /{pattern}/ does not compile: {err}") from None
    return Expectation(contains=_strings(row.get("contains", []), where, "contains"),
                       not_contains=_strings(row.get("not_contains", []), where, "not_contains"), regex=regex,
                       exact=row.get("exact"), reference=row.get("reference"), similarity=similarity,
                       threshold=threshold, ignore_case=bool(settings.get("ignore_case", True)))


def _messages(row: dict[str, Any], settings: dict[str, Any], where: str) -> list[dict[str, str]]:
    if ("prompt" in row) == ("messages" in row):
        raise PromptSetError(f"{where}: give either prompt (a string) or messages (chat turns), not both or neither")
    system = row.get("system", settings.get("system"))
    if "prompt" in row:
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise PromptSetError(f"{where}: prompt must be a non-empty string")
        messages = [{"role": "user", "content": row["prompt"]}]
    else:
        turns = row["messages"]
        if not isinstance(turns, list) or not turns or not all(
                isinstance(t, dict) and t.get("role") in ROLES and isinstance(t.get("content"), str) for t in turns):
            raise PromptSetError(f"{where}: messages must be a list of {{role: system|user|assistant, content}}")
        if turns[-1]["role"] != "user":
            raise PromptSetError(f"{where}: the last message must be the user's (the model answers it)")
        messages = [{"role": t["role"], "content": t["content"]} for t in turns]
    if system and messages[0]["role"] != "system":
        if not isinstance(system, str):
            raise PromptSetError(f"{where}: system must be a string")
        messages.insert(0, {"role": "system", "content": system})
    return messages


def parse_prompt_set(data: bytes, name: str, path: Path) -> PromptSet:
    """Parse and check a whole set; every error names the file and line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PromptSetError(f"{path}: not UTF-8 text ({err})") from None
    settings: dict[str, Any] = {}
    settings_seen = False
    cases: list[PromptCase] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except ValueError as err:
            raise PromptSetError(f"{where}: not a JSON object ({err})") from None
        if not isinstance(row, dict):
            raise PromptSetError(f"{where}: each line must be a JSON object")
        if "settings" in row:
            if cases or settings_seen:
                raise PromptSetError(f"{where}: the settings line must be the first line")
            settings, settings_seen = _check_settings(row["settings"], where), True
            continue
        unknown = sorted(set(row) - set(ROW_KEYS))
        if unknown:
            raise PromptSetError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(ROW_KEYS)}")
        case_id = str(row.get("id", f"{len(cases) + 1}"))
        if case_id in seen:
            raise PromptSetError(f"{where}: id {case_id!r} is used twice; each prompt needs its own id")
        seen.add(case_id)
        cases.append(PromptCase(case_id, _messages(row, settings, where), _expectation(row, settings, where)))
    if not cases:
        raise PromptSetError(f"{path}: no prompts in the set", hint="one JSON object per line, e.g. "
                             '{"prompt": "Is 14 even or odd?", "contains": "even"}')
    return PromptSet(name, path, "sha256:" + hashlib.sha256(data).hexdigest()[:16], decoding_from(settings, str(path)),
                     cases, settings)


def load_prompt_set(home: Path, name_or_path: str) -> PromptSet:
    """Find, read and check a set; the name of a set given by path is its file name without .jsonl."""
    path = find_prompt_set(home, name_or_path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise PromptSetError(f"{path}: cannot read: {err.strerror or err}") from None
    name = path.name[: -len(SUFFIX)] if path.name.endswith(SUFFIX) else path.stem
    if not NAME_PATTERN.match(name):
        raise PromptSetError(f"{path}: a prompt set's file name must be a name (letters, digits, '.', '_', '-')")
    return parse_prompt_set(data, name, path)
