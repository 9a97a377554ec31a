"""The run's event log: one JSON object per line, append-only, flushed per line.

The runner writes it; the CLI and the app read it. Readers keep a partial last
line for the next read and skip what they don't understand, so the schema can
grow and nobody ever sees half an event. `fold_event` is the one place where
events become a run's state: live view, re-attach and post-mortem share it.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
TERMINAL_TYPES = ("done", "stopped", "error")


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as strings so a NaN loss stays visible instead of breaking the line."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class EventWriter:
    """Appends events to events.jsonl, continuing the sequence numbers of an earlier life of the run.

    A life that was killed mid-write leaves a line without its newline; the next
    one starts on a fresh line, so the cut line stays alone and is skipped.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.seq = _last_seq(self.path) + 1
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held for the run's life
        if not _ends_with_newline(self.path):
            self._file.write("\n")
            self._file.flush()

    def write(self, type: str, **fields: Any) -> dict[str, Any]:
        event = {"v": SCHEMA_VERSION, "seq": self.seq, "t": round(time.time(), 3), "type": type}
        event.update(_clean(fields))
        self._file.write(json.dumps(event, separators=(",", ":")) + "\n")
        self._file.flush()
        self.seq += 1
        return event

    def close(self) -> None:
        self._file.close()


def _ends_with_newline(path: Path) -> bool:
    """True for an empty file or one whose last byte ends a line."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _last_seq(path: Path) -> int:
    """The seq of the last complete line, reading only the file's tail."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 65536))
            tail = f.read()
    except FileNotFoundError:
        return 0
    for line in reversed(tail.split(b"\n")):
        try:
            return int(json.loads(line)["seq"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0


class EventTail:
    """Reads new events from a growing events.jsonl by byte offset, never re-reading what it has seen."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.offset = 0
        self._partial = b""

    def read_new(self, max_bytes: int = 1 << 26) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read(max_bytes)
        except FileNotFoundError:
            return []
        if not chunk:
            return []
        self.offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        return parse_lines(lines)


def parse_lines(lines: list[bytes]) -> list[dict[str, Any]]:
    """Events from complete lines; blank, broken and typeless lines are skipped (readers never fail on them)."""
    events = []
    for line in lines:
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and "type" in event:
            events.append(event)
    return events


def parse_block(data: bytes) -> list[dict[str, Any]]:
    """Events from a block of complete lines, parsed as one JSON array (about 3x faster than line by line).

    JSON strings hold newlines escaped, so a raw newline only ever ends a line; a
    blank or broken line makes the array invalid, and then parse_lines skips it.
    """
    body = data.strip(b"\n")
    if not body:
        return []
    try:
        events = json.loads(b"[" + body.replace(b"\n", b",") + b"]")
    except ValueError:
        return parse_lines(data.split(b"\n"))
    return [e for e in events if isinstance(e, dict) and "type" in e]


def read_events(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    tail = EventTail(path)
    events: list[dict[str, Any]] = []
    while batch := tail.read_new():
        events.extend(batch)
    return events


def as_int(value: Any, default: int = 0) -> int:
    """An integer field of a hand-edited or foreign event: anything that is not a finite number gives `default`."""
    if type(value) is int:
        return value
    number = as_float(value)
    return int(number) if number is not None and math.isfinite(number) else default


def as_text(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) else default


def as_float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


@dataclass
class Throughput:
    """The run's average real tokens/s: real tokens over the run's training time, every life of the run.

    A step event carries its life's tokens so far (`tokens_seen`) and their mean rate since training began
    (`tokens_per_s_avg`), so a life's training seconds are their ratio. Logs from before those fields count each
    step's rate over the time since the step before it instead.
    """

    earlier_tokens: float = 0.0  # lives before the current one
    earlier_seconds: float = 0.0
    tokens: float = 0.0  # the current life, from its last step's counters
    seconds: float = 0.0
    rated_tokens: float = 0.0  # the current life, step rate x interval (old logs)
    rated_seconds: float = 0.0
    last_step_t: float | None = None

    def new_life(self) -> None:
        tokens, seconds = self.life()
        self.earlier_tokens += tokens
        self.earlier_seconds += seconds
        self.tokens = self.seconds = self.rated_tokens = self.rated_seconds = 0.0
        self.last_step_t = None

    def step(self, event: dict[str, Any]) -> None:
        seen, mean = as_float(event.get("tokens_seen")), as_float(event.get("tokens_per_s_avg"))
        if seen is not None and mean is not None and seen > 0 and mean > 0 and math.isfinite(seen / mean):
            self.tokens, self.seconds = seen, seen / mean
        t, rate = as_float(event.get("t")), as_float(event.get("tokens_per_s"))
        if t is not None and self.last_step_t is not None and rate is not None and t > self.last_step_t \
                and math.isfinite(rate):
            self.rated_tokens += rate * (t - self.last_step_t)
            self.rated_seconds += t - self.last_step_t
        if t is not None:
            self.last_step_t = t

    def life(self) -> tuple[float, float]:
        return (self.tokens, self.seconds) if self.seconds > 0 else (self.rated_tokens, self.rated_seconds)

    @property
    def average(self) -> float | None:
        tokens, seconds = self.life()
        seconds += self.earlier_seconds
        return round((tokens + self.earlier_tokens) / seconds, 1) if seconds > 0 else None


@dataclass
class RunState:
    """Everything the CLI and the app show about a run, folded from its events."""

    run_id: str = ""
    profile_name: str = ""
    method: str = ""
    base_model: str = ""
    started_t: float | None = None
    last_t: float | None = None
    ended_t: float | None = None
    terminal: str | None = None  # last of done/stopped/error since the last start
    starts: int = 0
    resumed_from_step: int | None = None
    resumes: list[int] = field(default_factory=list)  # the step each later life started from (0: from scratch)
    step: int = 0
    max_steps: int = 0
    epoch: float | None = None
    loss: float | None = None
    lr: float | None = None
    grad_norm: float | None = None
    tokens_per_s: float | None = None  # the last step's
    tokens_per_s_avg: float | None = None  # the run's average, all lives (Throughput); a terminal event's wins
    throughput: Throughput = field(default_factory=Throughput)
    eta_s: float | None = None
    gpu_mem_gb: float | None = None
    gpu_mem_peak_gb: float | None = None
    eval_loss: float | None = None
    device: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    loss_history: list[tuple[int, float]] = field(default_factory=list)  # the run's one history, as it stands
    superseded_loss: list[tuple[int, float]] = field(default_factory=list)  # steps a later life did again
    lr_history: list[tuple[int, float]] = field(default_factory=list)
    eval_history: list[tuple[int, float]] = field(default_factory=list)
    metric_history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    checkpoints: list[tuple[int, str]] = field(default_factory=list)
    logs: list[tuple[str, str]] = field(default_factory=list)
    preflight: dict[str, Any] = field(default_factory=dict)
    error: dict[str, str] = field(default_factory=dict)
    registry_ref: str = ""
    adapter_path: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    reference: str = ""
    alignment_slice: str = ""
    warnings: list[str] = field(default_factory=list)
    events_seen: int = 0


STEP_KEYS = {"step", "max_steps", "epoch", "loss", "lr", "grad_norm", "tokens_per_s", "eta_s",
             "gpu_mem_gb", "gpu_mem_peak_gb", "v", "seq", "t", "type"}


def fold_event(state: RunState, event: dict[str, Any]) -> RunState:
    """Apply one event to the state (in place) and return it; unknown types are ignored."""
    kind = event.get("type")
    t = as_float(event.get("t"))
    state.events_seen += 1
    if t is not None:
        state.last_t = t
    if kind == "start":
        state.starts += 1
        state.terminal = None
        state.ended_t = None
        state.error = {}
        state.run_id = as_text(event.get("run_id"), state.run_id)
        state.profile_name = as_text(event.get("profile_name"), state.profile_name)
        state.method = as_text(event.get("method"), state.method)
        state.base_model = as_text(event.get("base_model"), state.base_model)
        state.device = as_text(event.get("device"), state.device)
        state.max_steps = as_int(event.get("max_steps")) or state.max_steps
        state.reference = as_text(event.get("reference"), state.reference)
        state.alignment_slice = as_text(event.get("alignment_slice"), state.alignment_slice)
        if state.started_t is None:
            state.started_t = t
        resumed = event.get("resumed_from_step")
        if resumed is not None:
            state.resumed_from_step = state.step = as_int(resumed)
        if state.starts > 1:
            _start_again(state, as_int(resumed) if resumed is not None else 0)
        state.throughput.new_life()
    elif kind == "step":
        _fold_step(state, event)
    elif kind == "eval":
        step = as_int(event.get("step"), state.step) or state.step
        loss = as_float(event.get("eval_loss"))
        if loss is not None:
            state.eval_loss = loss
            state.eval_history.append((step, loss))
        for key, value in event.items():
            number = as_float(value)
            if key.startswith("eval_") and number is not None:
                state.metrics[key] = number
    elif kind == "alignment":
        for key, value in event.items():
            number = as_float(value)
            if key.startswith("align/") and number is not None:
                state.metrics[key] = number
    elif kind == "alignment_step":
        step = int(event.get("step") or 0)
        for key, value in event.items():
            number = as_float(value)
            if key.startswith("align/") and number is not None:
                state.metric_history.setdefault(key, []).append((step, number))
    elif kind == "checkpoint":
        state.checkpoints.append((as_int(event.get("step")), str(event.get("path", ""))))
    elif kind == "log":
        state.logs.append((str(event.get("level", "info")), str(event.get("message", ""))))
    elif kind == "preflight":
        state.preflight = {k: v for k, v in event.items() if k not in ("v", "seq", "t", "type")}
    elif kind in TERMINAL_TYPES:
        state.terminal = kind
        state.ended_t = t
        mean = as_float(event.get("tokens_per_s"))
        if mean is not None:  # the runner's figure from the whole log (a listing folds only its ends)
            state.tokens_per_s_avg = mean
        if kind == "done":
            state.registry_ref = str(event.get("registry_ref", ""))
            state.adapter_path = str(event.get("adapter_path", ""))
            summary = event.get("summary")
            state.summary = dict(summary) if isinstance(summary, dict) else {}
            warnings = event.get("warnings")
            state.warnings = [str(w) for w in warnings] if isinstance(warnings, list) else []
        elif kind == "error":
            state.error = {k: str(event.get(k, "")) for k in ("kind", "message", "hint")}
            if event.get("step") is not None:
                state.step = as_int(event["step"], state.step)
    return state


STEP_FIELDS = ("epoch", "loss", "lr", "grad_norm", "tokens_per_s", "eta_s", "gpu_mem_gb", "gpu_mem_peak_gb")


def _fold_step(state: RunState, event: dict[str, Any]) -> None:
    """The hot path when a monitor opens a long history: step events are nearly all of a log."""
    step = as_int(event.get("step"))
    state.step = step
    max_steps = event.get("max_steps")
    if max_steps:
        state.max_steps = as_int(max_steps) or state.max_steps
    for key in STEP_FIELDS:
        if key in event:
            value = event[key]
            setattr(state, key, value if type(value) is float else as_float(value))
    if state.loss is not None and "loss" in event:
        state.loss_history.append((step, state.loss))
    if state.lr is not None and "lr" in event:
        state.lr_history.append((step, state.lr))
    state.throughput.step(event)
    state.tokens_per_s_avg = state.throughput.average
    for key in event.keys() - STEP_KEYS:  # method metrics (rewards/accuracies, kl, ...)
        number = as_float(event[key])
        if number is not None:
            state.metrics[key] = number
            state.metric_history.setdefault(key, []).append((step, number))


def _start_again(state: RunState, from_step: int) -> None:
    """A later life of the run starts at `from_step`: what an earlier life logged after it is superseded.

    The loss points it redoes move to `superseded_loss` (the app dims them); the
    other histories drop them. New lists, so a chart that follows one starts over.
    """
    state.resumes.append(from_step)
    state.step = from_step
    state.superseded_loss = state.superseded_loss + [p for p in state.loss_history if p[0] > from_step]
    state.loss_history = [p for p in state.loss_history if p[0] <= from_step]
    state.lr_history = [p for p in state.lr_history if p[0] <= from_step]
    state.eval_history = [p for p in state.eval_history if p[0] <= from_step]
    state.metric_history = {k: [p for p in v if p[0] <= from_step] for k, v in state.metric_history.items()}


def mean_tokens_per_s(events: list[dict[str, Any]]) -> float | None:
    """The run's average real tokens/s over its training time, all lives (Throughput), from its steps alone.

    Pauses between lives (a stop, a crash) are left out: a new `start` begins a new stretch.
    """
    throughput = Throughput()
    for event in events:
        if event.get("type") == "start":
            throughput.new_life()
        elif event.get("type") == "step":
            throughput.step(event)
    return throughput.average


def fold_events(events: list[dict[str, Any]], state: RunState | None = None) -> RunState:
    state = state or RunState()
    for event in events:
        fold_event(state, event)
    return state
