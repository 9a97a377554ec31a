"""Errors nobody foresaw in a background job show as a notification; the app stays up and usable."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Static

from qlora_tui.registry.store import Store
from qlora_tui.tui.app import make_app
from qlora_tui.tui.screens.registry import RegistryScreen
from qlora_tui.tui.screens.runs import RunsScreen
from tests.tui.fixtures import build_demo_home


async def test_a_worker_that_raises_is_a_notification_not_a_crash(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    home = build_demo_home(tmp_path / "home")

    def full_disk(self: Store, ref: str, *, force: bool = False) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Store, "delete", full_disk)
    app = make_app(home)
    said: list[str] = []
    notify = app.notify
    app.notify = lambda message, **kw: (said.append(str(message)), notify(message, **kw))[1]  # type: ignore[method-assign]
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("3")
        screen = app.screen
        assert isinstance(screen, RegistryScreen)
        deadline = time.monotonic() + 10
        while not str(screen.query_one("#details", Static).content).startswith("demo@1"):
            assert time.monotonic() < deadline, "the registry never showed demo@1"
            await pilot.pause(0.1)
        await pilot.press("d", "y")
        while not said or "No space left" not in said[-1]:
            assert time.monotonic() < deadline + 10, f"no notification; said: {said}"
            await pilot.pause(0.1)
        assert said[-1] == "registry job failed: OSError: [Errno 28] No space left on device"
        assert not screen.busy  # the next job may start
        await pilot.press("1")
        assert isinstance(app.screen, RunsScreen) and app.is_running
