"""tui/jobs.py: a worker child followed through files, whatever it prints on stderr."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

from qlora_tui.tui.jobs import WorkerJob, run_worker

DEADLOCK_GUARD_S = 120  # the child needs well under a second; past this it is stuck, not slow


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def run_in_thread(home: Path, command: list[str]) -> tuple[list[dict[str, Any]], list[int | None]]:
    """run_worker in a thread, so a deadlock fails the test instead of hanging it."""
    lines: list[dict[str, Any]] = []
    codes: list[int | None] = []
    thread = threading.Thread(target=lambda: codes.append(run_worker(home, [], lines.append, command=command)),
                              daemon=True)
    thread.start()
    thread.join(DEADLOCK_GUARD_S)
    assert not thread.is_alive(), "run_worker and its child are stuck (stderr not drained?)"
    return lines, codes


def test_a_worker_that_writes_200_kb_to_stderr_still_delivers_its_result(tmp_path: Path) -> None:
    code = ("import sys, json; sys.stderr.write('warning: ' * 25_000); sys.stderr.flush(); "
            "print(json.dumps({'type': 'progress', 'message': 'half', 'fraction': 0.5})); "
            "print(json.dumps({'type': 'result', 'ref': 'x@1'}))")
    lines, codes = run_in_thread(tmp_path, python(code))
    assert codes == [0]
    assert lines == [{"type": "progress", "message": "half", "fraction": 0.5}, {"type": "result", "ref": "x@1"}]
    assert not any((tmp_path / "jobs").iterdir())  # a job that ended well leaves nothing behind


def test_a_worker_that_dies_without_a_result_names_its_stderr_log(tmp_path: Path) -> None:
    code = "import sys; sys.stderr.write('x' * 100_000 + '\\nTraceback: the last words\\n'); sys.exit(3)"
    lines, codes = run_in_thread(tmp_path, python(code))
    assert codes == [3]
    (error,) = lines
    assert error["type"] == "error" and "exited with code 3 without a result" in error["message"]
    (log,) = (tmp_path / "jobs").glob("*/stderr.log")
    assert "Traceback: the last words" in error["hint"] and f"full log: {log}" in error["hint"]
    assert log.stat().st_size > 100_000


def test_a_detached_job_goes_on_and_writes_its_outcome_to_its_folder(tmp_path: Path) -> None:
    gate = tmp_path / "go"
    code = (f"import json, os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.02)\n"
            "print(json.dumps({'type': 'result', 'ref': 'late@1'}))")
    job = WorkerJob(tmp_path, ["merge"], what="merge of late", leave_on_quit=True, command=python(code))
    codes: list[int | None] = []
    thread = threading.Thread(target=lambda: codes.append(job.run(lambda line: None)), daemon=True)
    thread.start()
    while job.proc is None:
        thread.join(0.02)
    job.detach()
    thread.join(DEADLOCK_GUARD_S)
    assert codes == [None] and job.proc.poll() is None  # the reader let go; the child did not
    gate.touch()
    assert job.proc.wait(DEADLOCK_GUARD_S) == 0
    assert '"late@1"' in job.lines_path.read_text()
