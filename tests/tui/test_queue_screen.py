"""The Queue view (5) and New run's ctrl+r, driven with Pilot over a real queue in the data home."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, SelectionList

from qlora_tui.core.locks import try_lock
from qlora_tui.runner.queue.entries import add_entry, list_entries, runner_lock_path
from qlora_tui.runner.queue.runner import queue_runner_pid
from qlora_tui.runner.rundir import list_runs, summarize, write_lock_body
from qlora_tui.tui.app import QloraApp, make_app
from qlora_tui.tui.screens.new_run import NewRunScreen, field_id
from qlora_tui.tui.screens.queue import COLUMNS, PickProfiles, QueueScreen
from tests.conftest import quick_profile
from tests.runner.helpers import wait_until
from tests.tui.test_app import open_profile, text_of, wait_for


@pytest.fixture
def held_queue(home: Path) -> Iterator[Path]:
    """A home whose queue lock this test holds, as a working queue runner would: nothing queued here starts."""
    fd = try_lock(runner_lock_path(home))
    assert fd is not None
    write_lock_body(fd)
    try:
        yield home
    finally:
        os.close(fd)


def column(table: DataTable[object], name: str) -> list[str]:
    return [str(table.get_row_at(i)[COLUMNS.index(name)]) for i in range(table.row_count)]


async def test_the_queue_view_lists_adds_and_removes_entries(held_queue: Path) -> None:
    home = held_queue
    for name in ("alpha", "beta"):
        add_entry(home, quick_profile(name), source=name)
    app = make_app(home)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("5")
        screen = app.screen
        assert isinstance(screen, QueueScreen)
        table = screen.query_one(DataTable)
        await wait_for(pilot, lambda: table.row_count == 2, 10, "the two entries")
        assert column(table, "profile") == ["alpha", "beta"] and column(table, "state") == ["queued", "queued"]
        assert f"queue runner working (pid {os.getpid()})" in text_of(app, "#queue-runner")

        await pilot.press("a")
        assert isinstance(app.screen, PickProfiles)
        picker = app.screen.query_one(SelectionList)
        prompts = [str(picker.get_option_at_index(i).prompt) for i in range(picker.option_count)]
        picker.highlighted = prompts.index("demo  (shipped)")
        await pilot.press("space", "enter")
        await wait_for(pilot, lambda: table.row_count == 3, 10, "the queued demo profile")
        assert column(table, "profile") == ["alpha", "beta", "demo"]

        await pilot.press("down", "d")
        await wait_for(pilot, lambda: table.row_count == 2, 10, "beta removed")
        assert [e.profile_name for e in list_entries(home)] == ["alpha", "demo"]


async def test_new_run_queues_the_form_as_it_stands(held_queue: Path) -> None:
    home = held_queue
    app: QloraApp = make_app(home)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("2")
        screen = app.screen
        assert isinstance(screen, NewRunScreen)
        await open_profile(pilot, screen, "demo")
        screen.query_one(f"#{field_id('top', 'name')}", Input).value = "from-form"
        steps = screen.query_one(f"#{field_id('train', 'max_steps')}", Input)
        steps.value = "7"
        steps.focus()  # the key works from inside a text field too
        await pilot.pause(0.2)
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: bool(list_entries(home)), 10, "the queued entry")
    (entry,) = list_entries(home)
    profile = entry.profile()
    assert (entry.profile_name, profile.name, profile.train.max_steps) == ("from-form", "from-form", 7)
    assert list_runs(home) == []  # queued behind the (held) queue, not launched


@pytest.mark.slow
async def test_opening_the_app_restarts_a_queue_left_without_a_runner(home: Path) -> None:
    """After a reboot the entries are there but no queue runner is: the app starts one, and it goes on alone."""
    add_entry(home, quick_profile("after-reboot", max_steps=3, save_steps=3), source="test")
    app = make_app(home)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: queue_runner_pid(home) is not None, 30, "a queue runner")
    # the app has closed at once; the queue runner does not need it
    wait_until(lambda: not list_entries(home) and queue_runner_pid(home) is None, 900, "the queue to drain")
    (run,) = list_runs(home)
    assert summarize(run).status == "done" and summarize(run).state.profile_name == "after-reboot"
