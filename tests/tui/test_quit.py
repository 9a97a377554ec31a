"""Quitting while a child works: the app says what runs, then exits at once, leaving a merge to finish by itself."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qlora_tui.registry.store import open_store
from tests.tui.test_terminal import WAIT_S, Terminal

pexpect = pytest.importorskip("pexpect", reason="pexpect is in the test extra: pip install -e '.[test]'")

GUARD_S = 120.0  # a failure guard: the awaited thing follows from a key press, or never comes


def children(pid: int, marker: str) -> list[int]:
    """Processes whose parent is `pid` and whose command line holds `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and marker in cmdline:
            found.append(int(entry.name))
    return found


def state_of(pid: int) -> str | None:
    """The process's state letter (R, S, T for stopped, Z...), or None once it is gone."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def wait_until(condition: object, what: str) -> None:
    deadline = time.monotonic() + GUARD_S
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def terminal_over_trained(trained_copy: Path) -> Iterator[Terminal]:
    term = Terminal(trained_copy)
    try:
        yield term
    finally:
        term.close()


def test_quit_during_a_merge_asks_then_exits_at_once_and_the_merge_still_registers(
        terminal_over_trained: Terminal, trained_copy: Path) -> None:
    terminal = terminal_over_trained
    terminal.wait_for("Runs", "done")
    terminal.press("3")
    terminal.wait_for("Adapters", "quick@1")
    terminal.press("m")
    terminal.wait_for("Merge quick@1", "ctrl+s: merge")
    terminal.press("\x13")  # ctrl+s: merge into the default folder under the data home
    terminal.wait_for("merg")
    wait_until(lambda: children(terminal.child.pid, "qlora_tui.registry.worker"), "the merge child")
    (merge_pid,) = children(terminal.child.pid, "qlora_tui.registry.worker")
    os.kill(merge_pid, signal.SIGSTOP)  # held mid-way: the app must not wait for it
    try:
        terminal.press("q")
        asked = terminal.wait_for("Still running", "merge of quick@1", "l: quit, leave it running")
        assert f"pid {merge_pid}" in asked, asked
        terminal.press("l")
        terminal.child.expect(pexpect.EOF, timeout=WAIT_S)
        terminal.child.close()
        assert terminal.child.exitstatus == 0
        assert state_of(merge_pid) == "T"  # the app is gone; the merge is still there, held where it was
    finally:
        os.kill(merge_pid, signal.SIGCONT)
    wait_until(lambda: state_of(merge_pid) in (None, "Z"), "the merge to finish")
    merged = [v for v in open_store(trained_copy).list_versions() if v.kind == "merged"]
    assert [v.parent_ref for v in merged] == ["quick@1"]
    assert (trained_copy / "merged" / "quick-1" / "config.json").exists()


def test_escape_in_the_quit_question_stays(terminal_over_trained: Terminal) -> None:
    terminal = terminal_over_trained
    terminal.wait_for("Runs", "done")
    terminal.press("3")
    terminal.wait_for("Adapters", "quick@1")
    terminal.press("m")
    terminal.wait_for("Merge quick@1", "ctrl+s: merge")
    terminal.press("\x13")
    wait_until(lambda: children(terminal.child.pid, "qlora_tui.registry.worker"), "the merge child")
    (merge_pid,) = children(terminal.child.pid, "qlora_tui.registry.worker")
    os.kill(merge_pid, signal.SIGSTOP)
    try:
        terminal.press("q")
        terminal.wait_for("Still running")
        terminal.press("\x1b")
        terminal.wait_for("Adapters")
        time.sleep(0.5)
        assert terminal.child.isalive() and "Still running" not in terminal.wait_for("Adapters")
    finally:
        os.kill(merge_pid, signal.SIGCONT)
    terminal.wait_for("merged quick@1 into", timeout=GUARD_S)
    terminal.press("q")  # nothing runs any more: no question
    terminal.child.expect(pexpect.EOF, timeout=WAIT_S)
