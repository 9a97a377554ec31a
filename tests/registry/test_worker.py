"""`python -m qlora_tui.registry.worker`: what the app runs in a child process; stdout carries only JSON lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from qlora_tui.registry.store import open_store
from tests.registry.helpers import cli

PROMPT = "Add the two numbers.\n\n12 and 5"


def worker(home: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "qlora_tui.registry.worker", "--home", str(home), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def lines_of(proc: subprocess.Popen[str]) -> tuple[list[dict[str, Any]], int]:
    out, _ = proc.communicate(timeout=300)
    return [json.loads(line) for line in out.splitlines()], proc.returncode


def test_merge_worker_reports_progress_then_the_result(trained_copy: Path, tmp_path: Path) -> None:
    events, code = lines_of(worker(trained_copy, "merge", "quick@1", "--out", str(tmp_path / "out")))
    assert code == 0
    progress = [e for e in events if e["type"] == "progress"]
    assert len(progress) >= 4 and [e["fraction"] for e in progress] == sorted(e["fraction"] for e in progress)
    assert any("fidelity" in e["message"] for e in progress)
    assert events[-1]["type"] == "result" and events[-1]["ref"] == "quick-merged@1"
    assert events[-1]["fidelity"]["top1_agreement"] > 0.9 and events[-1]["base_weights"] == "nf4-roundtrip"
    assert open_store(trained_copy).get("quick-merged@1").extra["fidelity"] == events[-1]["fidelity"]


def test_compare_worker_streams_each_row(ops_home: Path) -> None:
    events, code = lines_of(worker(ops_home, "compare", "quick@1", "quick@2", "--prompt", PROMPT,
                                   "--max-new-tokens", "12"))
    assert code == 0
    result = events[-1]
    assert result["type"] == "result" and [a["label"] for a in result["answers"]] == ["base", "quick@1", "quick@2"]
    texts = [e for e in events if e["type"] == "text"]
    for row, answer in enumerate(result["answers"]):
        streamed = [e["text"] for e in texts if e["row"] == row]
        assert all(e["label"] == answer["label"] for e in texts if e["row"] == row)
        if answer["text"]:
            assert streamed[-1] == answer["text"]
    assert {e["row"] for e in texts} >= {0}


def test_worker_errors_are_one_json_line_and_exit_1(trained_copy: Path, tmp_path: Path) -> None:
    events, code = lines_of(worker(trained_copy, "merge", "qick", "--out", str(tmp_path / "o")))
    assert code == 1
    assert events == [{"type": "error", "message": "no adapter named 'qick'", "hint": "did you mean quick?",
                       "kind": "not_found"}]


def test_an_interrupted_merge_registers_nothing_and_gc_cleans_up(trained_copy: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    proc = worker(trained_copy, "merge", "quick@1", "--out", str(out))
    assert proc.stdout is not None
    for line in proc.stdout:
        if "fidelity" in json.loads(line).get("message", ""):  # the shards are written, nothing registered yet
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    store = open_store(trained_copy)
    assert [v.ref for v in store.list_versions()] == ["quick@1"] and not out.exists()
    partial = [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial-")]
    assert len(partial) == 1 and (partial[0] / "model.safetensors").exists()
    result = cli(capsys, trained_copy, "gc")
    assert f"removed {partial[0]}" in result.out
    assert not partial[0].exists() and list(store.tmp_root.iterdir()) == []
