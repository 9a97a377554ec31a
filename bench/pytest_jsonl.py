"""A pytest plugin for the GPU check: each test's outcome appended to a JSON-lines file the moment it is known.

Loaded with `-p pytest_jsonl` (bench/ on PYTHONPATH) and `QLORA_TUI_FIGURES=FILE`; with pytest-xdist the
controller receives every worker's reports, so one process writes the file. A suite stopped at its time limit
leaves a line for every test that finished, and a `suite` line with the counts when it ends.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from typing import Any

import pytest

FIGURES_ENV = "QLORA_TUI_FIGURES"
LABEL_ENV = "QLORA_TUI_SUITE"  # which part of the suite this is (cuda, rest)
_counts: Counter[str] = Counter()
_began = time.monotonic()


def _append(record: dict[str, Any]) -> None:
    path = os.environ.get(FIGURES_ENV)
    if not path:
        return
    with open(path, "a") as f:
        f.write(json.dumps({"t": round(time.time(), 1), "suite": os.environ.get(LABEL_ENV, ""), **record}) + "\n")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    counted = report.when == "call" or (report.when == "setup" and not report.passed) or \
        (report.when == "teardown" and report.failed)  # a skip is decided at setup; an error can come at either end
    if not counted:
        return
    outcome = "error" if report.failed and report.when != "call" else report.outcome  # pytest's own words
    _counts[outcome] += 1
    record: dict[str, Any] = {"what": "test", "id": report.nodeid, "outcome": outcome, "when": report.when,
                              "seconds": round(report.duration, 2)}
    if report.failed:
        record["message"] = str(report.longrepr)[-1500:]
    elif report.skipped and isinstance(report.longrepr, tuple):
        record["reason"] = str(report.longrepr[2])
    _append(record)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if getattr(session.config, "workerinput", None) is not None:  # an xdist worker: the controller reports
        return
    _append({"what": "suite_done", "exit": int(exitstatus), "counts": dict(_counts),
             "seconds": round(time.monotonic() - _began, 1)})
