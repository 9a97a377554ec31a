"""The app's run watchers without a screen: block parsing, listing offsets, and tailing from where they stopped."""

from __future__ import annotations

import json
from pathlib import Path

from qlora_tui.runner.events import parse_block
from qlora_tui.runner.rundir import LIST_HEAD_BYTES, LIST_TAIL_BYTES, RunDir, listing_state
from qlora_tui.tui.watch import RunFollower, RunsIndex
from tests.tui.fixtures import EventLog, long_run_lines, step_fields, write_run

RUN_ID = "20260101-120000-watch-0001"


def line(**event: object) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


def test_parse_block_reads_many_lines_at_once_and_skips_what_it_cannot_read() -> None:
    good = line(v=1, seq=1, type="step", step=1) + line(v=1, seq=2, type="step", step=2)
    assert [e["step"] for e in parse_block(good)] == [1, 2]
    messy = good + b"\n" + b'{"v":1,"seq":3,"ty' + b"\n" + line(seq=4) + line(v=1, seq=5, type="done") + b"[1]\n"
    assert [e["seq"] for e in parse_block(messy)] == [1, 2, 5]
    assert parse_block(b"") == [] and parse_block(b"\n\n") == []


def test_listing_state_reads_head_and_tail_and_tails_from_exactly_where_it_stopped(tmp_path: Path) -> None:
    home = tmp_path / "home"
    log = EventLog(1000.0)
    log.lines = list(long_run_lines(RUN_ID, 3000, 1000.0, done=False))
    run = RunDir(write_run(home, RUN_ID, "watch", "sft", 3000, log, ["x"]))
    size = run.events_path.stat().st_size
    assert size > 20 * (LIST_HEAD_BYTES + LIST_TAIL_BYTES)  # only the two ends are read
    with open(run.events_path, "ab") as f:
        f.write(b'{"v":1,"seq":99999,"t":1.0,"type":"do')  # a line the runner is still writing
    state, offset = listing_state(run)
    assert (state.step, state.max_steps, state.started_t, state.terminal) == (3000, 3000, 1000.0, None)
    assert offset == size  # stops before the partial line: it is read whole on the next poll

    index = RunsIndex(home)
    assert index.poll()
    row = index.rows[RUN_ID]
    assert row.status == "crashed" and row.state.step == 3000  # no lock, no terminal event (yet)
    with open(run.events_path, "ab") as f:
        f.write(b'ne","registry_ref":"watch@1"}\n')
    assert index.poll()
    assert row.state.terminal == "done" and row.status == "done" and row.state.registry_ref == "watch@1"
    assert not index.poll()  # nothing new: nothing changed


def test_follower_reads_the_history_once_then_only_what_is_appended(tmp_path: Path) -> None:
    log = EventLog(1000.0)
    log.lines = list(long_run_lines(RUN_ID, 500, 1000.0, done=False))
    run = RunDir(write_run(tmp_path / "home", RUN_ID, "watch", "sft", 1000, log, ["loading", "step 1"]))
    follower = RunFollower(run)
    assert follower.poll_events()
    assert len(follower.state.loss_history) == 500 and len(follower.state.eval_history) == 5
    offset = follower.events.offset
    assert offset == run.events_path.stat().st_size
    assert not follower.poll_events()

    half = line(v=1, seq=600, t=2000.0, type="step", **step_fields(501, 1000))
    with open(run.events_path, "ab") as f:
        f.write(half[:20])
    assert not follower.poll_events()
    with open(run.events_path, "ab") as f:
        f.write(half[20:])
    assert follower.poll_events()
    assert follower.state.loss_history[-1][0] == 501 and len(follower.state.loss_history) == 501

    assert follower.new_log_lines() == ["loading", "step 1"]
    with open(run.log_path, "a") as f:
        f.write("progress 10%\rprogress 20%\nhalf a li")
    assert follower.new_log_lines() == ["progress 20%"]  # a \r-rewritten line shows its last state only
    assert follower.new_log_lines() == []


def test_follower_of_a_run_that_has_not_written_yet(tmp_path: Path) -> None:
    path = tmp_path / "home" / "runs" / RUN_ID
    path.mkdir(parents=True)
    follower = RunFollower(RunDir(path))
    assert not follower.poll_events() or follower.state.events_seen == 0
    (path / "events.jsonl").write_bytes(line(v=1, seq=1, t=5.0, type="start", run_id=RUN_ID, max_steps=3))
    assert follower.poll_events()
    assert follower.state.max_steps == 3 and follower.events.offset > 0


def test_listing_goes_further_back_until_its_tail_holds_a_step(tmp_path: Path) -> None:
    log = EventLog(1000.0)
    log.lines = list(long_run_lines(RUN_ID, 200, 1000.0, done=False))
    for i in range(200):  # a long run of log lines after the last step: 20 KB with no step in it
        log.add("log", level="info", message=f"saving shard {i} " + "x" * 60)
    log.add("done", registry_ref="watch@1")
    run = RunDir(write_run(tmp_path / "home", RUN_ID, "watch", "sft", 200, log, ["x"]))
    state, offset = listing_state(run)
    assert (state.step, state.terminal, state.started_t) == (200, "done", 1000.0)
    assert state.loss is not None and offset == run.events_path.stat().st_size


def test_runs_index_lists_newest_first_and_leaves_pending_runs_to_their_loader(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ids = [f"2026010{day}-120000-watch-000{day}" for day in range(1, 6)]
    for day, run_id in enumerate(ids, start=1):
        log = EventLog(1000.0 * day)
        log.lines = list(long_run_lines(run_id, 10, 1000.0 * day))
        write_run(home, run_id, "watch", "sft", 10, log, ["x"])
    index = RunsIndex(home)
    runs = index.scan()
    assert [r.run_id for r in runs] == ids[::-1]
    index.add(index.load(runs[:2]))
    index.pending = {r.run_id for r in runs[2:]}
    assert not index.poll()  # nothing new on disk, and the pending ones are not read here
    assert sorted(index.rows) == sorted(ids[3:])
    index.add(RunsIndex.load(runs[2:]))
    assert not index.pending and [r.run.run_id for r in index.sorted_rows()] == ids[::-1]
    assert all(r.status == "done" and r.state.step == 10 for r in index.rows.values())

    new_id = "20260109-120000-watch-0009"
    log = EventLog(9000.0)
    log.add("start", run_id=new_id, profile_name="watch", method="sft", max_steps=10)
    write_run(home, new_id, "watch", "sft", 10, log, ["x"])
    assert index.poll() and index.sorted_rows()[0].run.run_id == new_id
