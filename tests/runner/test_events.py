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


def test_fold_survives_wrong_types_field_by_field() -> None:
    """A hand-written event with a wrong type spoils only that field, never the fold (issue 12, bug 10)."""
    events = [
        {"type": "start", "t": 1, "run_id": "r", "profile_name": 7, "method": "sft", "max_steps": "many"},
        {"type": "step", "t": 2, "step": "three", "max_steps": [1], "loss": "x", "lr": 1e-3},
        {"type": "step", "t": 3, "step": 4, "max_steps": 10, "loss": 1.5},
        {"type": "eval", "t": 4, "step": {"a": 1}, "eval_loss": 1.7},
        {"type": "checkpoint", "t": 5, "step": None, "path": 3},
        {"type": "log", "t": 6, "level": None, "message": ["x"]},
        {"type": "preflight", "t": 6, "rows_read": "all"},
        {"type": "done", "t": 7, "summary": "fine", "registry_ref": "r@1", "tokens_per_s": "fast"},
    ]
    state = fold_events(events)
    assert state.run_id == "r" and state.method == "sft" and state.profile_name == ""
    assert state.step == 4 and state.max_steps == 10 and state.loss == 1.5
    assert state.loss_history == [(4, 1.5)] and state.eval_history == [(4, 1.7)]
    assert state.terminal == "done" and state.summary == {} and state.registry_ref == "r@1"
    assert state.checkpoints == [(0, "3")]


def test_one_bad_line_does_not_hide_the_other_runs_from_the_cli(tmp_path: Path) -> None:
    import subprocess
    import sys

    for run_id, bad in (("20260101-120000-good-0001", False), ("20260102-120000-bad-0002", True)):
        run = tmp_path / "runs" / run_id
        run.mkdir(parents=True)
        (run / "profile.toml").write_text(f'name = "{run_id.split("-")[2]}"\n')
        start = {"v": 1, "seq": 1, "t": 1767268800, "type": "start", "run_id": run_id, "max_steps": 10,
                 "profile_name": run_id.split("-")[2], "method": "sft"}
        step = {"v": 1, "seq": 2, "t": 1767268801, "type": "step", "step": "two" if bad else 2, "loss": 1.0}
        (run / "events.jsonl").write_text(json.dumps(start) + "\n" + json.dumps(step) + "\n")
    code = "import sys; from qlora_tui.tui.cli import main; sys.exit(main(sys.argv[1:]))"
    result = subprocess.run([sys.executable, "-c", code, "--home", str(tmp_path), "runs"], capture_output=True,
                            text=True)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "good" in result.stdout and "bad" in result.stdout


def test_a_line_cut_mid_write_does_not_swallow_the_next_life_s_first_event(tmp_path: Path) -> None:
    """A killed runner can leave half a line; the resumed one starts on a new line (issue 12, bug 10)."""
    path = tmp_path / "events.jsonl"
    first = EventWriter(path)
    first.write("start", run_id="r", max_steps=10)
    first.write("step", step=1, loss=2.0)
    first.close()
    with open(path, "a") as f:
        f.write('{"v":1,"seq":3,"t":1.0,"type":"st')  # killed here
    tail = EventTail(path)
    assert [e["type"] for e in tail.read_new()] == ["start", "step"]
    second = EventWriter(path)
    second.write("start", run_id="r", resumed_from_step=None)
    second.write("step", step=1, loss=1.9)
    second.close()
    assert [e["type"] for e in tail.read_new()] == ["start", "step"]  # what a follower reads next
    assert [e["type"] for e in read_events(path)] == ["start", "step", "start", "step"]


def test_a_resumed_run_s_history_leaves_out_the_steps_it_did_again() -> None:
    """Crash at step 8, resume from the checkpoint at 5: steps 6-8 of the first life are superseded (bug 8)."""
    events = [{"type": "start", "t": 0, "max_steps": 10}]
    events += [{"type": "step", "t": s, "step": s, "loss": 3.0 - s / 10, "lr": 0.1} for s in range(1, 9)]
    events += [{"type": "start", "t": 20, "resumed_from_step": 5}]
    events += [{"type": "step", "t": 20 + s, "step": s, "loss": 2.0 - s / 10, "lr": 0.1} for s in range(6, 11)]
    state = fold_events(events)
    assert [s for s, _ in state.loss_history] == list(range(1, 11))
    assert dict(state.loss_history)[7] == 2.0 - 0.7
    assert [s for s, _ in state.superseded_loss] == [6, 7, 8] and dict(state.superseded_loss)[7] == 3.0 - 0.7
    assert state.resumes == [5] and [s for s, _ in state.lr_history] == list(range(1, 11))
    restarted = fold_events(events[:9] + [{"type": "start", "t": 30}, {"type": "step", "t": 31, "step": 1,
                                                                          "loss": 9.0}])
    assert restarted.resumes == [0] and restarted.loss_history == [(1, 9.0)]
    assert len(restarted.superseded_loss) == 8


def test_a_done_run_reports_its_average_tokens_per_second() -> None:
    from qlora_tui.runner.events import mean_tokens_per_s

    events = [{"type": "start", "t": 0}, {"type": "step", "t": 1, "step": 1},
              {"type": "step", "t": 2, "step": 2, "tokens_per_s": 100.0},
              {"type": "step", "t": 5, "step": 3, "tokens_per_s": 200.0},
              {"type": "start", "t": 100}, {"type": "step", "t": 101, "step": 4, "tokens_per_s": 50.0},
              {"type": "step", "t": 102, "step": 5, "tokens_per_s": 400.0}]
    assert mean_tokens_per_s(events) == round((100 * 1 + 200 * 3 + 400 * 1) / 5, 1)  # logs without counters
    assert fold_events(events).tokens_per_s_avg == mean_tokens_per_s(events)
    state = fold_events([*events, {"type": "done", "t": 103, "tokens_per_s": 220.0}])
    assert state.tokens_per_s_avg == 220.0 and state.tokens_per_s == 400.0  # the runner's figure; the last step's


def test_the_average_is_real_tokens_over_training_time_across_lives() -> None:
    """Issue 21 bug 4: the table's average weighted each step's rate by the interval before it (the first step of
    each life left out), the monitor took the last life's counter alone; one definition now serves both."""
    from qlora_tui.runner.events import mean_tokens_per_s

    def life(t0: float, began: float, steps: list[tuple[float, int]]) -> list[dict[str, object]]:
        """Step events as the runner's callback writes them: training began at `began`; (t, tokens) per step."""
        events: list[dict[str, object]] = [{"type": "start", "t": t0}]
        seen, last = 0, began
        for i, (t, tokens) in enumerate(steps, 1):
            seen += tokens
            events.append({"type": "step", "t": t, "step": i, "tokens_per_s": round(tokens / (t - last), 1),
                           "tokens_seen": seen, "tokens_per_s_avg": round(seen / (t - began), 1)})
            last = t
        return events

    first = life(0, 5, [(15, 1000), (17, 1000), (19, 1000)])  # a slow first step: 10 s
    second = life(100, 130, [(131, 1200), (132, 1200)])  # resumed: 30 s of loading not counted
    events = first + second
    oracle = round((3000 + 2400) / ((19 - 5) + (132 - 130)), 1)
    assert mean_tokens_per_s(events) == oracle == fold_events(events).tokens_per_s_avg
    assert fold_events(first).tokens_per_s_avg == round(3000 / 14, 1)  # after the first life alone
