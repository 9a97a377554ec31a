"""The real `qlora-tui` in a pseudo-terminal, driven by key presses and read back as screen text.

This is the SSH user's view: a 24x80 xterm, no mouse, no Textual test harness.
pexpect owns the pty; pyte plays the terminal, so the escape sequences the app
writes become the rows of text a person would read.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.tui.fixtures import CRASHED_RUN, DPO_REF, build_demo_home

pexpect = pytest.importorskip("pexpect", reason="pexpect is in the test extra: pip install -e '.[test]'")
pyte = pytest.importorskip("pyte", reason="pyte is in the test extra: pip install -e '.[test]'")

ROWS, COLS = 24, 80
WAIT_S = 20.0


def app_command() -> tuple[str, list[str]]:
    """The installed console script next to this interpreter, else the same entry point through -c."""
    script = Path(sys.executable).with_name("qlora-tui")
    if script.exists():
        return str(script), []
    return sys.executable, ["-c", "import sys; from qlora_tui.tui.cli import main; sys.exit(main())"]


class Terminal:
    """A pty running the app and a pyte screen fed from it; `wait_for` polls the text until it shows up."""

    def __init__(self, home: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TEXTUAL", "PYTEST"))}
        env.update(QLORA_TUI_HOME=str(home), TERM="xterm-256color", COLORTERM="truecolor", TZ="UTC", LANG="C.UTF-8")
        command, args = app_command()
        self.child = pexpect.spawn(command, args, env=env, dimensions=(ROWS, COLS), cwd=str(home.parent))
        self.screen = pyte.Screen(COLS, ROWS)
        self.stream = pyte.ByteStream(self.screen)

    def pump(self, wait: float = 0.1) -> None:
        """Feed everything the app has written so far into the screen."""
        while True:
            try:
                data = self.child.read_nonblocking(65536, timeout=wait)
            except (pexpect.TIMEOUT, pexpect.EOF):
                return
            self.stream.feed(data)
            wait = 0.02

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    def wait_for(self, *needles: str, timeout: float = WAIT_S) -> str:
        deadline = time.monotonic() + timeout
        while True:
            self.pump()
            text = self.text()
            if all(n in text for n in needles):
                return text
            if time.monotonic() > deadline or not self.child.isalive():
                raise AssertionError(f"{needles} not on screen after {timeout:.0f}s; the screen reads:\n{text}")

    def press(self, keys: str) -> None:
        self.child.send(keys)

    def close(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    term = Terminal(build_demo_home(tmp_path / "home"))
    try:
        yield term
    finally:
        term.close()


def test_keys_over_a_terminal(terminal: Terminal) -> None:
    """Runs list -> crashed run's monitor -> registry -> help -> quit, all by keys, ending with exit status 0."""
    runs = terminal.wait_for("Runs", "crashed", "failed", "done")
    assert "demo-dpo" in runs and "quick" in runs and "01-02 09:00" in runs and "c3d4" in runs

    terminal.press("\r")  # the newest run (crashed) is on the first row
    monitor = terminal.wait_for(CRASHED_RUN, "crashed", "without a final event", "Killed")  # the log's last line
    assert "resume" in monitor

    terminal.press("\x1b")
    terminal.wait_for("profile", "status", "started")
    terminal.press("3")
    registry = terminal.wait_for("Adapters", "demo@1", "base model: builtin:tiny-llama")
    assert "demo-dpo" in registry
    for _ in range(3):
        terminal.press("\x1b[B")  # arrow down to demo-dpo@1
    terminal.wait_for(DPO_REF, "lineage: demo@2 -> demo-dpo@1")

    terminal.press("1")
    back = terminal.wait_for("Runs", "crashed", "done")
    assert "Adapters" not in back

    terminal.press("?")
    terminal.wait_for("Keys", "Everywhere", "command palette")
    terminal.press("\x1b")
    terminal.wait_for("Runs", "crashed")

    terminal.press("q")
    terminal.child.expect(pexpect.EOF, timeout=WAIT_S)
    terminal.child.close()
    assert terminal.child.exitstatus == 0, terminal.text()


def test_number_keys_leave_compare_and_escape_leaves_a_text_field(terminal: Terminal) -> None:
    """4 then 1 goes to Compare and back; in a text box, escape gives the keys back to the screen."""
    terminal.wait_for("Runs", "crashed")
    terminal.press("4")
    terminal.wait_for("Prompt", "max new tokens")
    terminal.press("1")
    terminal.wait_for("Runs", "crashed", timeout=5)

    terminal.press("4")
    terminal.wait_for("Prompt", "max new tokens")
    terminal.press("\t")  # from the version list into the prompt box, which takes the number keys
    terminal.wait_for("esc Leave field")
    terminal.press("1")
    time.sleep(0.5)
    assert "Prompt" in terminal.wait_for("1Is the number") and "crashed" not in terminal.text()
    terminal.press("\x1b")
    terminal.wait_for("1-6 Views")  # the screen keys are back in the footer
    terminal.press("1")
    terminal.wait_for("Runs", "crashed", timeout=5)


TEXTUAL_START = b"\x1b[?1049h"  # the early frame switches to the alternate screen first; the app's driver does again


def look(cell: object) -> tuple[object, ...]:
    """What a person sees of a cell: its character and background (swapped when reversed), and the colour and
    weight of a visible character."""
    data, fg, bg, reverse = cell.data, cell.fg, cell.bg, cell.reverse  # type: ignore[attr-defined]
    if reverse:
        fg, bg = bg, fg
    return (data, bg) + ((fg, cell.bold) if data != " " else ())  # type: ignore[attr-defined]


@pytest.mark.parametrize(("theme", "size", "more_runs"), [("textual-dark", (80, 24), 0),
                                                           ("textual-light", (120, 40), 0),
                                                           ("textual-dark", (90, 12), 20)])
def test_the_first_frame_is_the_app_s_own_screen_and_keys_typed_meanwhile_count(
        tmp_path: Path, theme: str, size: tuple[int, int], more_runs: int) -> None:
    """Issue 12, bug 12: the launcher draws the Runs view before Textual loads; every cell a person sees must be
    the one the app then paints (scrollbar included, when the runs outnumber the rows), and a key pressed on the
    early frame is answered once the app runs."""
    import json
    import shutil

    cols, rows = size
    home = build_demo_home(tmp_path / "home")
    (home / "app-settings.json").write_text(json.dumps({"theme": theme}))
    for n in range(more_runs):  # older than the three, so the early frame shows the same newest ones
        shutil.copytree(home / "runs" / CRASHED_RUN, home / "runs" / f"20251201-{n:02d}0000-older-{n:04x}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEXTUAL", "PYTEST"))}
    env.update(QLORA_TUI_HOME=str(home), TERM="xterm-256color", COLORTERM="truecolor", TZ="UTC", LANG="C.UTF-8")
    command, args = app_command()
    child = pexpect.spawn(command, args, env=env, dimensions=(rows, cols), cwd=str(home.parent))
    data = b""

    def pump_until(condition: Callable[[bytes], bool], what: str) -> None:
        nonlocal data
        deadline = time.monotonic() + WAIT_S
        while not condition(data):
            assert time.monotonic() < deadline and child.isalive(), f"no {what}; read {data[-400:]!r}"
            with contextlib.suppress(pexpect.TIMEOUT):
                data += child.read_nonblocking(65536, timeout=0.05)

    try:
        pump_until(lambda d: b"crashed" in d, "early frame")
        assert TEXTUAL_START not in data[1:], "the app painted before the launcher's frame"
        child.send("?")  # while the app is still loading
        pump_until(lambda d: b"Everywhere" in d, "help: the key typed on the early frame")
        child.send("\x1b")
        early, live = pyte.Screen(cols, rows), pyte.Screen(cols, rows)
        pyte.ByteStream(early).feed(data[:data.index(TEXTUAL_START, 1)])
        stream, fed = pyte.ByteStream(live), 0

        def help_closed(d: bytes) -> bool:
            nonlocal fed
            stream.feed(d[fed:])
            fed = len(d)
            return "Everywhere" not in "\n".join(live.display)

        pump_until(help_closed, "the runs view again")
        while True:  # the rest of that repaint: until the app has written nothing for a second
            try:
                data += child.read_nonblocking(65536, timeout=1.0)
            except pexpect.TIMEOUT:
                break
        help_closed(data)
        assert early.display == live.display, "\n".join(early.display) + "\n---\n" + "\n".join(live.display)
        differ = [(y, x) for y in range(rows) for x in range(cols)
                  if look(early.buffer[y][x]) != look(live.buffer[y][x])]
        assert differ == [], f"{len(differ)} cells differ, first at {differ[:3]}"
    finally:
        child.terminate(force=True)
