"""Speed of the app over a large data home: first paint, CPU while following a live run, a 100k-line log.

Runs the real `qlora-tui` in a pseudo-terminal (pexpect) and reads its screen
through a terminal emulator (pyte), as a person over SSH would see it, plus
in-process timings with App.run_test to split the figures. Targets (issue 3):
first paint < 0.5 s with 200 runs and 1,000 adapter versions; < 10% of one
core while a run writes 50 events/s to an open monitor, reading events.jsonl
incrementally; a 100,000-line events file opens in < 1 s.
Usage: python bench/bench_tui.py [--home DIR] [--repeat 5] [--seconds 20] [--size 120x40]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the test fixtures build the bench's data home

import pexpect  # noqa: E402
import pyte  # noqa: E402

from tests.tui.fixtures import (  # noqa: E402
    BASE_T,
    EventLog,
    build_bench_registry,
    build_bench_runs,
    long_run_lines,
    step_fields,
    write_run,
)

BUILT_MARK = ".bench-home-complete"
BIG_RUN = "20991231-000000-big-0001"
LIVE_RUN = "20991231-120000-live-0002"
BIG_LINES = 100_000
BIG_STEPS = BIG_LINES - 2 - (BIG_LINES - 2) // 101  # start + done + one eval per 100 steps make up the rest
EVENTS_PER_S = 50


# ---------------------------------------------------------------- the data home


def build_home(home: Path) -> None:
    """200 finished runs of 300 steps and 1,000 adapter versions (kept and reused once complete)."""
    if (home / BUILT_MARK).exists():
        print(f"reusing {home}")
        return
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    started = time.perf_counter()
    build_bench_runs(home, runs=200, steps=300)
    print(f"200 runs x 300 steps written in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    build_bench_registry(home, versions=1000)
    print(f"1,000 adapter versions added through store.add in {time.perf_counter() - started:.1f} s")
    (home / BUILT_MARK).write_text("ok\n")


def add_big_run(home: Path) -> Path:
    """A finished run whose events.jsonl has BIG_LINES lines; its id sorts first (newest) in the table."""
    path = home / "runs" / BIG_RUN
    shutil.rmtree(path, ignore_errors=True)
    log = EventLog(BASE_T)
    lines = long_run_lines(BIG_RUN, BIG_STEPS, BASE_T)
    log.lines = list(lines)
    write_run(home, BIG_RUN, "big", "sft", BIG_LINES, log, ["big run"])
    return path / "events.jsonl"


# ---------------------------------------------------------------- the app in a pty


class PtyApp:
    """The real console script in a pty of the given size, its output fed into a pyte screen."""

    def __init__(self, home: Path, size: tuple[int, int]) -> None:
        cols, rows = size
        env = {k: v for k, v in os.environ.items() if not k.startswith("TEXTUAL")}
        env.update(QLORA_TUI_HOME=str(home), TERM="xterm-256color", COLORTERM="truecolor", LANG="C.UTF-8")
        script = Path(sys.executable).with_name("qlora-tui")
        command, args = (str(script), []) if script.exists() else (
            sys.executable, ["-c", "import sys; from qlora_tui.tui.cli import main; sys.exit(main())"])
        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)
        self.started = time.perf_counter()
        self.child = pexpect.spawn(command, args, env=env, dimensions=(rows, cols))

    def pump(self, wait: float = 0.01) -> int:
        """Feed what the app wrote into the screen; returns the bytes read."""
        total = 0
        while True:
            try:
                data = self.child.read_nonblocking(1 << 16, timeout=wait)
            except (pexpect.TIMEOUT, pexpect.EOF):
                return total
            self.stream.feed(data)
            total += len(data)
            wait = 0

    def text(self) -> str:
        return "\n".join(self.screen.display)

    def wait(self, condition: Callable[[str], bool], what: str, timeout: float = 60) -> float:
        """perf_counter() of the first screen state that satisfies `condition`."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if condition(self.text()):
                return time.perf_counter()
            self.pump()
        raise RuntimeError(f"timed out waiting for {what}; screen:\n{self.text()}")

    def quit(self) -> None:
        self.child.send("q")
        try:
            self.child.expect(pexpect.EOF, timeout=10)
        except pexpect.TIMEOUT:
            self.child.terminate(force=True)
        self.child.close()


def done_rows(text: str) -> int:
    return sum(1 for line in text.splitlines() if " done " in line and "/300" in line)


def has_curve(text: str) -> bool:
    return sum(1 for ch in text if 0x2801 <= ord(ch) <= 0x28FF) >= 20


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rchar(pid: int) -> int:
    """Bytes the process has read through read()-like calls (files, pipes, the tty), from /proc/<pid>/io."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/<pid>/io")


# ---------------------------------------------------------------- (a) first paint


def bench_first_paint(home: Path, size: tuple[int, int], repeat: int) -> None:
    """First frame and filled table as a person sees them, and when the app first answers a key (help opens):
    the launcher draws the first frame before Textual loads, so the third figure is when the app is live."""
    rows_needed = min(10, size[1] - 6)
    frames, paints, answers, frame_cpu = [], [], [], []
    for i in range(repeat + 1):
        app = PtyApp(home, size)
        framed = app.wait(lambda text: "Runs" in text and "Resume" in text, "the first frame (title and footer)")
        cpu = proc_cpu_s(app.child.pid)
        painted = app.wait(lambda text: done_rows(text) >= rows_needed, "the runs table")
        app.child.send("?")
        answered = app.wait(lambda text: "Everywhere" in text, "the help screen (the app answering a key)")
        frame, paint, answer = framed - app.started, painted - app.started, answered - app.started
        app.quit()
        if i == 0:
            print(f"  warm-up: first frame {frame * 1000:.0f} ms, table painted {paint * 1000:.0f} ms, "
                  f"a key answered {answer * 1000:.0f} ms")
            continue
        frames.append(frame)
        paints.append(paint)
        answers.append(answer)
        frame_cpu.append(cpu)
    print(f"(a) process start -> first frame (header, 'Runs', footer): median "
          f"{statistics.median(frames) * 1000:.0f} ms (min {min(frames) * 1000:.0f}, max {max(frames) * 1000:.0f}); "
          f"the app's CPU time by then {statistics.median(frame_cpu) * 1000:.0f} ms  target < 300 ms")
    print(f"    process start -> table with its rows on screen: median {statistics.median(paints) * 1000:.0f} ms "
          f"(min {min(paints) * 1000:.0f}, max {max(paints) * 1000:.0f})  target < 500 ms")
    print(f"    process start -> the app answers a key ('?' opens help): median "
          f"{statistics.median(answers) * 1000:.0f} ms (min {min(answers) * 1000:.0f}, max {max(answers) * 1000:.0f})")
    after_frame = [a - f for a, f in zip(answers, frames)]
    print(f"    first frame -> that key answered: median {statistics.median(after_frame) * 1000:.0f} ms "
          f"(min {min(after_frame) * 1000:.0f}, max {max(after_frame) * 1000:.0f})  target < 300 ms")
    imports = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import qlora_tui.tui.app"], check=True, env={**os.environ})
        imports.append(time.perf_counter() - started)
    print(f"    of which `python -c 'import qlora_tui.tui.app'` (interpreter + imports): median "
          f"{statistics.median(imports) * 1000:.0f} ms")
    in_process = [asyncio.run(in_process_paint(home, size)) for _ in range(repeat)]
    print(f"    in-process make_app() -> 200 rows in the table and a frame rendered (run_test, headless): median "
          f"{statistics.median(in_process) * 1000:.0f} ms")
    for settle, when in ((0.0, "right after the table shows (the app may still be starting)"),
                         (1.0, "with the app started and idle")):
        registry, registry_cpu = [], []
        for _ in range(repeat):
            app = PtyApp(home, size)
            app.wait(lambda text: done_rows(text) >= rows_needed, "the runs table")
            settled = time.perf_counter() + settle
            while time.perf_counter() < settled:
                app.pump(0.05)
            cpu = proc_cpu_s(app.child.pid)
            app.child.send("3")
            started = time.perf_counter()
            shown = app.wait(lambda text: "base model:" in text and "bench-00" in text, "the registry")
            registry.append(shown - started)
            registry_cpu.append(proc_cpu_s(app.child.pid) - cpu)
            app.quit()
        print(f"    pressing 3 {when} -> registry tree of 1,000 versions and the first one's details on screen: "
              f"median {statistics.median(registry) * 1000:.0f} ms (min {min(registry) * 1000:.0f}, max "
              f"{max(registry) * 1000:.0f}); the app's CPU meanwhile {statistics.median(registry_cpu) * 1000:.0f} ms"
              f"  target < 300 ms")


async def in_process_paint(home: Path, size: tuple[int, int]) -> float:
    from textual.widgets import DataTable

    from qlora_tui.tui.app import make_app
    from qlora_tui.tui.screens.runs import RunsScreen

    started = time.perf_counter()
    app = make_app(home)
    async with app.run_test(size=size) as pilot:
        while not (isinstance(app.screen, RunsScreen) and app.screen.query_one(DataTable).row_count >= 200):
            await asyncio.sleep(0.002)
        await pilot.pause()
        return time.perf_counter() - started


# ---------------------------------------------------------------- (c) a 100,000-line events file


def bench_big_open(home: Path, size: tuple[int, int], repeat: int) -> None:
    events = add_big_run(home)
    lines = sum(1 for _ in events.open("rb"))
    print(f"(c) {events.name} of {lines:,} lines, {events.stat().st_size / 1e6:.1f} MB")
    times = []
    for _ in range(repeat):
        app = PtyApp(home, size)
        app.wait(lambda text: f"{BIG_STEPS}/{BIG_STEPS}" in text and done_rows(text) >= 5, "the runs table")
        time.sleep(0.3)
        app.pump()
        app.child.send("\r")
        started = time.perf_counter()
        drawn = app.wait(lambda text: BIG_RUN in text and has_curve(text) and "registered" in text, "the curve")
        times.append(drawn - started)
        app.quit()
    print(f"    enter -> monitor with the loss curve on screen: median {statistics.median(times) * 1000:.0f} ms "
          f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f})  target < 1000 ms")
    from qlora_tui.runner.events import RunState, fold_event, read_events
    from qlora_tui.runner.rundir import RunDir
    from qlora_tui.tui.watch import RunFollower
    from qlora_tui.tui.widgets.chart import Decimator, Series, plot

    started = time.perf_counter()
    follower = RunFollower(RunDir(events.parent))
    follower.poll_events()
    read = time.perf_counter() - started
    parsed = read_events(events)
    started = time.perf_counter()
    state = RunState()
    for event in parsed:
        fold_event(state, event)
    fold = time.perf_counter() - started
    started = time.perf_counter()
    curve = Decimator().feed(follower.state.loss_history)
    plot([Series("loss", curve, "cyan")], size[0] * 2 // 3, 20)
    drawn = time.perf_counter() - started
    print(f"    of which RunFollower.poll_events (read, parse, fold): {read * 1000:.0f} ms, the fold_event part "
          f"alone {fold * 1000:.0f} ms; the first loss chart (Decimator.feed of {len(curve):,} of "
          f"{len(follower.state.loss_history):,} points + plot): {drawn * 1000:.0f} ms")


# ---------------------------------------------------------------- (b) CPU while following a live run


class FakeRunner(threading.Thread):
    """Holds the run's lock (so it is `running`) and appends step events at a fixed rate."""

    def __init__(self, run_dir: Path, rate: float, history_steps: int) -> None:
        super().__init__(daemon=True)
        self.run_dir, self.rate = run_dir, rate
        self.stop_flag = threading.Event()
        self.written = 0
        self.step = history_steps
        self.max_steps = 10 * history_steps

    def run(self) -> None:
        from qlora_tui.runner.events import EventWriter
        from qlora_tui.runner.rundir import acquire_lock

        fd = acquire_lock(self.run_dir / "runner.lock")
        writer = EventWriter(self.run_dir / "events.jsonl")
        log = open(self.run_dir / "runner.log", "a")  # noqa: SIM115 - held for the thread's life
        interval = 1 / self.rate
        next_t = time.perf_counter()
        try:
            while not self.stop_flag.is_set():
                self.step += 1
                writer.write("step", **step_fields(self.step, self.max_steps))
                if self.step % 50 == 0:
                    log.write(f"step {self.step}\n")
                    log.flush()
                self.written += 1
                next_t += interval
                delay = next_t - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
        finally:
            writer.close()
            log.close()
            os.close(fd)


def add_live_run(home: Path, history_steps: int) -> Path:
    """A run that has already logged `history_steps` steps (no terminal event); FakeRunner continues it."""
    path = home / "runs" / LIVE_RUN
    shutil.rmtree(path, ignore_errors=True)
    t0 = time.time() - history_steps
    log = EventLog(t0)
    log.lines = list(long_run_lines(LIVE_RUN, history_steps, t0, done=False))
    write_run(home, LIVE_RUN, "live", "sft", 10 * history_steps, log, ["live run"])
    return path


def bench_live_cpu(home: Path, size: tuple[int, int], seconds: float, history_steps: int) -> None:
    run_dir = add_live_run(home, history_steps)
    events = run_dir / "events.jsonl"
    runner = FakeRunner(run_dir, EVENTS_PER_S, history_steps)
    runner.start()
    app = PtyApp(home, size)
    try:
        app.wait(lambda text: " running " in text, "the live run in the table")
        app.child.send("\r")
        app.wait(lambda text: LIVE_RUN in text and has_curve(text), "the live monitor")
        settle_until = time.perf_counter() + 2
        while time.perf_counter() < settle_until:
            app.pump(0.05)
        pid = app.child.pid
        cpu0, rchar0, size0, written0 = proc_cpu_s(pid), proc_rchar(pid), events.stat().st_size, runner.written
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            app.pump(0.05)  # keep draining the pty, or the app would block writing frames
        wall = time.perf_counter() - started
        cpu1, rchar1, size1, written1 = proc_cpu_s(pid), proc_rchar(pid), events.stat().st_size, runner.written
        shown = [int(m) for m in re.findall(rf"(\d+)/{runner.max_steps}", app.text())]
        lag = runner.step - max(shown) if shown else None
    finally:
        runner.stop_flag.set()
        runner.join()
    idle_cpu, idle_wall = idle_cost(app, 10)
    app.quit()
    grew = size1 - size0
    print(f"(b) a run with {history_steps:,} steps logged ({size0 / 1e6:.2f} MB of events), then "
          f"{written1 - written0} events in {wall:.1f} s ({(written1 - written0) / wall:.0f}/s)")
    print(f"    app CPU (utime+stime of its pid): {cpu1 - cpu0:.2f} s in {wall:.1f} s = "
          f"{100 * (cpu1 - cpu0) / wall:.1f}% of one core  target < 10%")
    print(f"    same app, monitor open, no events arriving: {100 * idle_cpu / idle_wall:.1f}% of one core")
    print(f"    bytes read by the app (rchar): {(rchar1 - rchar0) / 1e3:.0f} KB while the file grew "
          f"{grew / 1e3:.0f} KB; re-reading the whole file on each 0.5 s tick would be "
          f"~{size0 * wall / 0.5 / 1e6:.0f} MB")
    print(f"    step on screen at the end: {runner.step - lag if lag is not None else '?'} "
          f"(the runner was at {runner.step}: {lag} steps = {lag / EVENTS_PER_S if lag is not None else 0:.1f} s "
          "behind)")


def idle_cost(app: PtyApp, seconds: float) -> tuple[float, float]:
    pid = app.child.pid
    cpu0 = proc_cpu_s(pid)
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        app.pump(0.05)
    return proc_cpu_s(pid) - cpu0, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--home", help="where to build (or reuse) the bench data home")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--size", default="120x40", help="terminal COLSxROWS")
    parser.add_argument("--live-history", type=int, nargs="+", default=[3_000, 100_000],
                        help="steps the live run has logged before the measurement (one measurement each)")
    parser.add_argument("--only", choices=("paint", "big", "live"), nargs="+", default=["paint", "big", "live"])
    args = parser.parse_args()
    size = tuple(int(n) for n in args.size.split("x"))
    assert len(size) == 2
    home = Path(args.home) if args.home else Path(tempfile.gettempdir()) / "qlora-tui-bench-home"
    build_home(home)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; terminal {args.size}")
    for leftover in (BIG_RUN, LIVE_RUN):
        shutil.rmtree(home / "runs" / leftover, ignore_errors=True)
    if "paint" in args.only:
        bench_first_paint(home, size, args.repeat)  # type: ignore[arg-type]
    if "big" in args.only:
        bench_big_open(home, size, args.repeat)  # type: ignore[arg-type]
    if "live" in args.only:
        for history in args.live_history:
            bench_live_cpu(home, size, args.seconds, history)  # type: ignore[arg-type]
    for leftover in (BIG_RUN, LIVE_RUN):
        shutil.rmtree(home / "runs" / leftover, ignore_errors=True)


if __name__ == "__main__":
    main()
