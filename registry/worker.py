"""`python -m qlora_tui.registry.worker merge|compare|serve|eval ...`: heavy registry work in a child, as JSON lines.

The app starts this so torch never enters its own process. Each stdout line is
one JSON object: {"type": "progress", "message", "fraction"}, {"type": "text",
"row", "label", "text"} (compare, as tokens arrive), then one {"type":
"result", ...} (exit 0) or {"type": "error", "message", "hint"} (exit 1).
`serve` keeps models loaded instead: it reads one JSON request a line on stdin
and answers each (see serve()) until stdin closes.
Whatever the libraries print goes to stderr, so stdout carries only these lines.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import IO, Any

from qlora_tui.core.errors import UserFacingError, is_disk_full
from qlora_tui.core.home import data_home
from qlora_tui.core.library_noise import quiet_known_library_noise
from qlora_tui.registry.job_options import add_compare_options, add_merge_options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m qlora_tui.registry.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="data home (default: $QLORA_TUI_HOME or the user data directory)")
    sub = parser.add_subparsers(dest="job", required=True)
    add_merge_options(sub.add_parser("merge", help="merge an adapter version into its base and register the result"))
    add_compare_options(sub.add_parser("compare", help="base + adapters answer one prompt in one batched generate"))
    sub.add_parser("serve", help="keep base and adapters loaded, answering JSON requests on stdin (the playground)")
    p = sub.add_parser("eval", help="base + versions answer a prompt set, batched; results kept with each version")
    p.add_argument("refs", nargs="+")
    p.add_argument("--prompts", required=True)
    p.add_argument("--batch-rows", type=int, default=32)
    return parser


class Emitter:
    """Writes one JSON object per line to the real stdout, flushed at once so the app sees it as it happens."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def __call__(self, event_type: str, /, **fields: Any) -> None:
        self.stream.write(json.dumps({"type": event_type, **fields}, default=str) + "\n")
        self.stream.flush()

    def progress(self, message: str, fraction: float) -> None:
        self("progress", message=message, fraction=round(min(max(fraction, 0.0), 1.0), 4))


def run_job(args: argparse.Namespace, emit: Emitter) -> dict[str, Any]:
    from qlora_tui.registry.store import open_store

    store = open_store(data_home(args.home))
    if args.job == "merge":
        from qlora_tui.registry.merge import merge_version

        result = merge_version(store, args.ref, Path(args.out), dtype=args.dtype, base_weights=args.base_weights,
                               force=args.force, on_progress=emit.progress, name=args.name,
                               check=not args.no_check)
        return result.to_json()
    if args.job == "eval":
        from qlora_tui.registry.evalrun import run_prompt_set

        report = run_prompt_set(store, args.refs, args.prompts, batch_rows=args.batch_rows,
                                on_progress=emit.progress, on_warning=lambda message: emit("warning", message=message))
        return report.to_json()
    from qlora_tui.registry.compare import compare_generate

    answers = compare_generate(
        store, args.refs, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        top_p=args.top_p, seed=args.seed, raw=args.raw, on_progress=emit.progress,
        on_text=lambda row, label, text: emit("text", row=row, label=label, text=text),
        on_warning=lambda message: emit("warning", message=message))
    result: dict[str, Any] = {"answers": [a.to_json() for a in answers]}
    if args.reward:
        from qlora_tui.registry.score import score_answers

        result["scores"] = score_answers(store, args.reward, args.prompt, [a.text for a in answers],
                                         on_progress=emit.progress)
        result["reward_model"] = store.get(args.reward).ref
    return result


def serve(args: argparse.Namespace, emit: Emitter) -> int:
    """Answer requests from stdin, one JSON object a line, with the models kept loaded between them, until EOF.

    Requests: {"op": "load", "refs": [...]}; {"op": "generate", "id", "refs", "prompt", "history"?, "raw"?,
    "reward"?, "max_new_tokens", "temperature", "top_p", "seed"}; {"op": "free"}. `raw` true sends the
    prompt as typed, false through the chat template, absent or null decides from the versions (raw when
    all were trained on plain text); `reward` names a reward version that scores every answer. Answers:
    "ready" (pid) once; "loaded" (refs, base_loaded, loaded, freed, seconds) only when the chosen versions
    changed what is in memory; "text" (id, row, label, text) as tokens arrive; "answers" (id, answers, raw);
    "scores" (id, reward_model, scores: one per answer, base first); "freed"; "error" (id, message, hint,
    kind), after which the worker goes on serving.
    """
    from qlora_tui.registry.playground import Playground
    from qlora_tui.registry.store import open_store

    playground = Playground(open_store(data_home(args.home)))
    emit("ready", pid=os.getpid())
    while line := sys.stdin.readline():
        if line.strip():
            handle_request(playground, line, emit)
    playground.free()
    return 0


def handle_request(playground: Any, line: str, emit: Emitter) -> None:
    """One serve request; whatever fails becomes an error line and the worker stays up for the next one."""
    try:
        request = json.loads(line)
    except ValueError:
        request = None
    if not isinstance(request, dict):
        emit("error", id=None, message="a request is one JSON object a line", hint=line[:80], kind="protocol")
        return
    try:
        op, rid = request.get("op"), request.get("id")
        if op in ("load", "generate"):
            report = playground.choose(list(request.get("refs") or []), on_progress=emit.progress,
                                       on_warning=lambda message: emit("warning", id=rid, message=message))
            if report.changed:
                emit("loaded", id=rid, **report.to_json())
        if op == "generate":
            raw = request.get("raw")
            prompt = str(request.get("prompt", ""))
            answers = playground.ask(
                prompt, history=request.get("history"), raw=raw if isinstance(raw, bool) else None,
                max_new_tokens=int(request.get("max_new_tokens", 64)),
                temperature=float(request.get("temperature", 0.0)), top_p=float(request.get("top_p", 1.0)),
                seed=int(request.get("seed", 0)), on_progress=emit.progress,
                on_warning=lambda message: emit("warning", id=rid, message=message),
                on_text=lambda row, label, text: emit("text", id=rid, row=row, label=label, text=text))
            emit("answers", id=rid, answers=[a.to_json() for a in answers], raw=playground.last_raw)
            if request.get("reward"):
                scores = playground.score(str(request["reward"]), prompt, [a.text for a in answers],
                                          on_progress=emit.progress)
                emit("scores", id=rid, reward_model=str(request["reward"]), scores=scores)
        elif op == "free":
            emit("freed", id=rid, refs=playground.free())
        elif op != "load":
            emit("error", id=rid, message=f"unknown request {op!r}", hint="ops: load, generate, free", kind="protocol")
    except UserFacingError as err:
        emit("error", id=request.get("id"), message=err.message, hint=err.hint, kind=err.kind)
    except Exception as err:  # the app must get a line, and the loaded models stay for the next prompt
        emit("error", id=request.get("id"), message=f"{type(err).__name__}: {err}",
             hint="the worker's stderr has the traceback", kind="internal")
        import traceback

        traceback.print_exc()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_known_library_noise()  # its stderr is what the app shows when a job fails
    # Keep the real stdout for our lines; point fd 1 at stderr so library prints cannot interleave with them.
    emit = Emitter(os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1))
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        if args.job == "serve":
            return serve(args, emit)
        emit("result", job=args.job, **run_job(args, emit))
        return 0
    except UserFacingError as err:
        emit("error", message=err.message, hint=err.hint, kind=err.kind)
    except KeyboardInterrupt:
        emit("error", message=f"{args.job} interrupted; nothing was registered", hint="", kind="interrupted")
    except Exception as err:  # the app must get a line, not a silent exit, whatever failed
        if is_disk_full(err):
            emit("error", message=f"{args.job}: no space left on the device; nothing was registered",
                 hint="free some space on that disk and try again", kind="disk_full")
            return 1
        emit("error", message=f"{args.job} failed: {type(err).__name__}: {err}",
             hint="the worker's stderr has the traceback", kind="internal")
        import traceback

        traceback.print_exc()
    return 1


if __name__ == "__main__":
    sys.exit(main())
