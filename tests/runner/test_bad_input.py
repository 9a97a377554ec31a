"""Bad input: a clear message naming file/line/field, a failed run with an error event, nothing half-made."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from qlora_tui.core.profile.files import dumps_profile
from qlora_tui.core.profile.schema import Profile
from qlora_tui.registry.store import open_store
from qlora_tui.runner.__main__ import main as runner_main
from qlora_tui.runner.launch import PROFILE_HEADER
from qlora_tui.runner.rundir import RunDir, create_run, list_runs, summarize
from tests.conftest import _start_with_env, quick_profile, wait_for_exit
from tests.runner.helpers import events_of

CLI = [sys.executable, "-c", "import sys; from qlora_tui.tui.cli import main; sys.exit(main(sys.argv[1:]))"]


@pytest.fixture(autouse=True)
def keep_signal_handlers() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def run_in_process(home: Path, profile: Profile) -> tuple[int, RunDir]:
    """The runner's own entry point, in this process (saves a 5 s interpreter start per case)."""
    run = create_run(home, dumps_profile(profile, PROFILE_HEADER), profile.name)
    return runner_main([str(run.path)]), run


def assert_failed_before_training(home: Path, run: RunDir, code: int, kind: str, pattern: str) -> dict:
    assert code == 1
    (error,) = events_of(run, "error")
    assert error["kind"] == kind
    assert pytest.approx(0) == len(events_of(run, "step"))
    assert not events_of(run, "start") and not run.checkpoints_path.exists()
    import re

    assert re.search(pattern, error["message"]), error["message"]
    assert summarize(run).status == "failed"
    assert open_store(home).list_versions() == []
    return error


def write_jsonl(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_missing_data_file(home: Path, tmp_path: Path) -> None:
    profile = quick_profile()
    profile.data.path = str(tmp_path / "nope.jsonl")
    code, run = run_in_process(home, profile)
    assert_failed_before_training(home, run, code, "data", rf"{tmp_path}/nope.jsonl: no such file")


def test_empty_data_set(home: Path, tmp_path: Path) -> None:
    profile = quick_profile()
    profile.data.path = write_jsonl(tmp_path / "empty.jsonl", [""])
    code, run = run_in_process(home, profile)
    assert_failed_before_training(home, run, code, "data", r"empty.jsonl: the data set is empty")


def test_malformed_jsonl_line(home: Path, tmp_path: Path) -> None:
    profile = quick_profile()
    profile.data.path = write_jsonl(tmp_path / "bad.jsonl", ['{"text": "a"}', '{"text": "b",}'])
    code, run = run_in_process(home, profile)
    assert_failed_before_training(home, run, code, "data", r"bad.jsonl:2: not valid JSON")


def test_rows_lacking_their_columns(home: Path, tmp_path: Path) -> None:
    profile = quick_profile()
    profile.data.path = write_jsonl(tmp_path / "d.jsonl", [json.dumps({"instruction": "x", "output": "y"}),
                                                           json.dumps({"instruction": "x"})])
    code, run = run_in_process(home, profile)
    assert_failed_before_training(home, run, code, "data", r"d.jsonl:2: alpaca row lacks 'output'")


def test_unknown_model_path(home: Path, tmp_path: Path) -> None:
    profile = quick_profile()
    profile.model.id = str(tmp_path / "no-such-model")
    code, run = run_in_process(home, profile)
    assert_failed_before_training(home, run, code, "model", r"model.id: .*no-such-model: no such directory")


def test_target_module_the_model_lacks(home: Path) -> None:
    profile = quick_profile()
    profile.lora.target_modules = ["q_proj", "query_key_value"]
    code, run = run_in_process(home, profile)
    assert_failed_before_training(home, run, code, "model",
                                  r"has no module named 'query_key_value'; it has: down_proj, gate_proj, k_proj")


def test_max_seq_len_shorter_than_every_example(home: Path) -> None:
    profile = quick_profile()
    profile.train.max_seq_len = 8
    code, run = run_in_process(home, profile)
    error = assert_failed_before_training(home, run, code, "data", r"no trainable rows: all 320 rows were dropped")
    assert "raise train.max_seq_len" in error["hint"]


def test_invalid_profile_is_refused_before_any_run_exists(home: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[data]\npath = "builtin:demo-instructions"\n[lora]\nr = "sixteen"\n')
    result = subprocess.run([*CLI, "--home", str(home), "run", str(path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith(f'error: {path}:4: lora.r: must be a positive integer, got "sixteen"')
    assert list_runs(home) == []


def test_failed_run_is_listed_with_its_error(home: Path) -> None:
    profile = quick_profile("nomodel")
    profile.model.id = "./missing-model"
    run_in_process(home, profile)
    result = subprocess.run([*CLI, "--home", str(home), "runs", "--json"], capture_output=True, text=True)
    (row,) = json.loads(result.stdout)
    assert row["status"] == "failed" and row["profile"] == "nomodel"
    assert "missing-model: no such directory" in row["error"]


@pytest.mark.slow
def test_nan_loss_stops_the_run_and_keeps_no_poisoned_checkpoint(home: Path) -> None:
    run, proc = _start_with_env(home, quick_profile("nan", max_steps=20, save_steps=3),
                                {"QLORA_TUI_FAULT": "nan_at_step=5"})
    assert wait_for_exit(run, proc) == 1
    (error,) = events_of(run, "error")
    assert error["kind"] == "nan_loss" and error["message"].startswith("step 5: the loss is nan")
    assert [e["step"] for e in events_of(run, "step")][-1] == 5
    assert [e["step"] for e in events_of(run, "checkpoint")] == [3]
    assert sorted(p.name for p in run.checkpoints_path.glob("checkpoint-*")) == ["checkpoint-3"]
    assert summarize(run).status == "failed"
    assert open_store(home).list_versions() == []
