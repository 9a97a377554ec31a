"""The event log: sequence numbers survive restarts, readers never see half a line, one fold for all views."""

from __future__ import annotations

import json
from pathlib import Path

from qlora_tui.runner.events import EventTail, EventWriter, fold_events, read_events


def test_writer_continues_sequence_after_reopen(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    first = EventWriter(path)
    first.write("start", run_id="r")
    first.write("step", step=1, loss=2.0)
    first.close()
    second = EventWriter(path)
    event = second.write("step", step=2, loss=1.5)
    second.close()
    assert event["seq"] == 3
    events = read_events(path)
    assert [e["seq"] for e in events] == [1, 2, 3]
    assert all(e["v"] == 1 and isinstance(e["t"], float) for e in events)


def test_nan_is_written_as_a_string_and_read_back_as_nan(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    writer = EventWriter(path)
    writer.write("step", step=1, loss=float("nan"))
    writer.close()
    line = path.read_text().strip()
    assert json.loads(line)["loss"] == "nan"
    state = fold_events(read_events(path))
    assert state.loss != state.loss  # NaN survives the fold, so the app can show it


def test_tail_keeps_partial_line_until_complete(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    tail = EventTail(path)
    assert tail.read_new() == []
    with open(path, "w") as f:
        f.write('{"v":1,"seq":1,"t":1,"type":"start"}\n{"v":1,"seq":2,"t":2,"type":"st')
    assert [e["seq"] for e in tail.read_new()] == [1]
    with open(path, "a") as f:
        f.write('ep","step":1}\n')
    assert [e["type"] for e in tail.read_new()] == ["step"]
    assert tail.read_new() == []


def test_reader_skips_unknown_types_and_garbage(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"v":1,"seq":1,"t":1,"type":"start","run_id":"x","future_field":1}\n'
                    "not json\n"
                    '{"v":2,"seq":2,"t":2,"type":"telemetry","x":1}\n'
                    '{"v":1,"seq":3,"t":3,"type":"step","step":4,"max_steps":10,"loss":1.5,'
                    '"rewards/accuracies":0.75}\n')
    state = fold_events(read_events(path))
    assert state.run_id == "x" and state.step == 4 and state.loss == 1.5
    assert state.metrics["rewards/accuracies"] == 0.75
    assert state.metric_history["rewards/accuracies"] == [(4, 0.75)]


def test_fold_tracks_terminal_state_across_resume() -> None:
    events = [
        {"type": "start", "t": 1, "run_id": "r", "max_steps": 10},
        {"type": "step", "t": 2, "step": 5, "loss": 2.0},
        {"type": "stopped", "t": 3, "step": 5},
    ]
    state = fold_events(events)
    assert state.terminal == "stopped"
    fold_events([{"type": "start", "t": 4, "resumed_from_step": 5},
                 {"type": "step", "t": 5, "step": 6, "loss": 1.0}], state)
    assert state.terminal is None and state.starts == 2 and state.resumed_from_step == 5
    assert state.loss_history == [(5, 2.0), (6, 1.0)]
    fold_events([{"type": "done", "t": 6, "registry_ref": "x@1", "adapter_path": "/p"}], state)
    assert state.terminal == "done" and state.registry_ref == "x@1"
