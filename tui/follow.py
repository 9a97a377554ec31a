"""Printing a run's progress in the terminal while `qlora-tui run` waits for it.

The training process runs in its own session, so a hang-up of this terminal
ends only this printer and the run goes on (as a detached one would). Ctrl-C
here is forwarded to it as a graceful stop, a second one kills it; we keep
reading until it has checkpointed and exited.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Any, TextIO

from qlora_tui.runner.events import EventTail, RunState, fold_event
from qlora_tui.runner.rundir import RunDir
from qlora_tui.tui.format import duration, number
from qlora_tui.tui.messages import event_text

POLL_S = 0.25


def step_line(state: RunState) -> str:
    parts = [f"step {state.step}/{state.max_steps or '?'}", f"loss {number(state.loss)}"]
    if state.lr is not None:
        parts.append(f"lr {state.lr:.2e}")
    if state.tokens_per_s is not None:
        parts.append(f"{state.tokens_per_s:,.0f} tok/s")
    if state.gpu_mem_gb is not None:
        parts.append(f"gpu {state.gpu_mem_gb:.1f}/{state.gpu_mem_peak_gb or 0:.1f} GiB")
    parts.append(f"ETA {duration(state.eta_s)}")
    return "  ".join(parts)


def _change(summary: dict[str, Any], name: str) -> str | None:
    before, after = summary.get(f"align/{name}_before"), summary.get(f"align/{name}_after")
    if not isinstance(before, (int, float)) or not isinstance(after, (int, float)):
        return None
    return f"{number(before)} -> {number(after)}"


def alignment_lines(method: str, summary: dict[str, Any]) -> list[str]:
    """The before/after alignment figures of a finished preference, reward or RL run."""
    lines = []
    if method == "rlhf":
        sampled, greedy = _change(summary, "reward"), _change(summary, "greedy_reward")
        if sampled:
            lines.append(f"reward of sampled answers (what RL optimises): {sampled}")
        if greedy:
            lines.append(f"reward of greedy answers: {greedy}")
        before, after = summary.get("align/degenerate_before"), summary.get("align/degenerate_after")
        if isinstance(before, (int, float)) and isinstance(after, (int, float)):
            lines.append(f"degenerate greedy answers (repeats, empty, no words): {before:.0%} -> {after:.0%}")
    else:
        accuracy, margin = _change(summary, "accuracy"), _change(summary, "margin")
        if accuracy:
            what = "ranking accuracy" if method == "reward" else "preference accuracy"
            lines.append(f"{what}: {accuracy}, mean margin {margin}")
    if lines and isinstance(summary.get("align/best_step"), (int, float)):
        lines.append(f"best measured at step {int(summary['align/best_step'])}")
    return lines


class ProgressPrinter:
    """Turns events into lines: one rewritten status line on a terminal, a line every few seconds otherwise."""

    def __init__(self, out: TextIO, interactive: bool) -> None:
        self.out = out
        self.interactive = interactive
        self.last_print = 0.0
        self.status_shown = False

    def _line(self, text: str) -> None:
        if self.status_shown and self.interactive:
            self.out.write("\r\033[K")
            self.status_shown = False
        self.out.write(text + "\n")
        self.out.flush()

    def event(self, event: dict[str, Any], state: RunState) -> None:
        kind = event.get("type")
        if kind == "step":
            now = time.monotonic()
            if self.interactive:
                self.out.write("\r\033[K" + step_line(state))
                self.out.flush()
                self.status_shown = True
            elif now - self.last_print >= 5 or state.step in (1, state.max_steps):
                self._line(step_line(state))
                self.last_print = now
        elif kind == "done":
            self._line(str(event_text(event)))
            for line in alignment_lines(state.method, dict(event.get("summary") or {})):
                self._line(f"  {line}")
        elif kind == "stopped":
            self._line(f"stopped at step {event.get('step')}; continue with: qlora-tui resume {state.run_id}")
        else:
            text = event_text(event)
            if text is not None:
                self._line(text)


def follow_run(run: RunDir, proc: subprocess.Popen[bytes], resumed: bool = False) -> int:
    out = sys.stdout
    print(f"run {run.run_id}" + (" (resumed)" if resumed else ""), flush=True)
    tail = EventTail(run.events_path)
    if resumed:
        tail.read_new()  # the earlier history was printed when it happened
    state = RunState(run_id=run.run_id)
    printer = ProgressPrinter(out, out.isatty())
    interrupted = False
    while True:
        try:
            for event in tail.read_new():
                fold_event(state, event)
                printer.event(event, state)
            if proc.poll() is not None:
                for event in tail.read_new():
                    fold_event(state, event)
                    printer.event(event, state)
                break
            time.sleep(POLL_S)
        except KeyboardInterrupt:
            if interrupted:
                proc.kill()
                raise
            interrupted = True
            proc.send_signal(signal.SIGINT)
            printer._line("stopping: finishing the step and saving a checkpoint (Ctrl-C again to kill)")
    if state.terminal is None:
        tail_lines = "\n".join(run.log_tail(15))
        print(f"the training process exited with code {proc.returncode} without a final event; "
              f"last lines of {run.log_path}:\n{tail_lines}", file=sys.stderr)
        return 1
    return {"done": 0, "stopped": 0}.get(state.terminal, 1)
