"""The runner's own messages as lines of text: what `qlora-tui run` prints and the monitor's message pane shows.

Step events are left out (they are the progress line and the charts); every
other event a person should read becomes one line, or a few for a long report.
Fields are read defensively: a hand-edited event never breaks a view.
"""

from __future__ import annotations

from typing import Any

from qlora_tui.runner.events import as_float, as_int
from qlora_tui.tui.format import number


def preflight_text(event: dict[str, Any]) -> str:
    """The pre-flight report in one line: rows read and used, truncated, trainable tokens, dropped and why."""
    text = (f"data: {as_int(event.get('rows_read'))} rows read, {as_int(event.get('rows_used'))} used "
            f"({as_int(event.get('train_rows'))} train, {as_int(event.get('eval_rows'))} eval), "
            f"{as_int(event.get('rows_truncated'))} truncated at {as_int(event.get('max_seq_len'))} tokens, "
            f"{as_int(event.get('trainable_tokens')):,} trainable tokens")
    dropped = event.get("rows_dropped")
    if isinstance(dropped, dict) and dropped:
        text += "; dropped: " + ", ".join(f"{n} {why}" for why, n in dropped.items())
    return text


def event_text(event: dict[str, Any]) -> str | None:
    """The line(s) a person reads for one event, or None for steps and types that say nothing to read."""
    kind = event.get("type")
    if kind == "log":
        level = str(event.get("level", "info"))
        return f"{'warning: ' if level == 'warning' else ''}{event.get('message', '')}"
    if kind == "preflight":
        return preflight_text(event)
    if kind == "start":
        resumed = event.get("resumed_from_step")
        return (f"training {event.get('profile_name')} ({event.get('method')}) on {event.get('base_model')}, "
                f"{event.get('device')}" + (f", resuming at step {as_int(resumed)}" if resumed is not None else "")
                + (f"\nalignment is measured on {event['alignment_slice']}" if event.get("alignment_slice") else ""))
    if kind == "checkpoint":
        return f"checkpoint at step {as_int(event.get('step'))}: {event.get('path')}"
    if kind == "eval":
        return f"eval at step {as_int(event.get('step'))}: loss {number(as_float(event.get('eval_loss')))}"
    if kind == "done":
        warnings = event.get("warnings")
        return (f"done: registered {event.get('registry_ref')}\n  files: {event.get('adapter_path')}"
                + "".join(f"\nwarning: {w}" for w in (warnings if isinstance(warnings, list) else [])))
    if kind == "stopped":
        return f"stopped at step {as_int(event.get('step'))}"
    if kind == "error":
        return f"error: {event.get('message')}" + (f"\nhint: {event.get('hint')}" if event.get("hint") else "")
    return None
