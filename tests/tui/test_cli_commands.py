"""The `qlora-tui` command as a user types it: run, runs, stop, resume, adapters, show."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qlora_tui.core.profile.files import save_profile
from qlora_tui.runner.rundir import list_runs
from tests.conftest import quick_profile
from tests.runner.helpers import last_step, wait_until

CLI = [sys.executable, "-c", "import sys; from qlora_tui.tui.cli import main; sys.exit(main(sys.argv[1:]))"]


def cli(home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 300,
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "--home", str(home), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_run_in_the_foreground_prints_progress_and_the_registry_ref(home: Path, tmp_path: Path) -> None:
    profile_path = save_profile(quick_profile("fg", max_steps=12), tmp_path / "fg.toml")
    result = cli(home, "run", str(profile_path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "data: 320 rows read, 320 used (320 train, 0 eval), 0 truncated at 128 tokens" in out
    assert "step 1/12  loss " in out and "step 12/12  loss " in out
    assert "checkpoint at step 10: " in out
    assert "done: registered fg@1\n  files: " + str(home / "registry" / "adapters" / "fg" / "1") in out


@pytest.mark.slow
def test_detach_stop_wait_and_resume(home: Path, tmp_path: Path) -> None:
    profile_path = save_profile(quick_profile("bg", max_steps=25), tmp_path / "bg.toml")
    slow = {"QLORA_TUI_STEP_DELAY": "0.15"}
    started = cli(home, "run", str(profile_path), "--detach", env=slow)
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.strip()
    (run,) = list_runs(home)
    assert run.run_id == run_id
    wait_until(lambda: last_step(run) >= 5, 120, "step 5", run)
    listed = json.loads(cli(home, "runs", "--json").stdout)
    assert listed[0]["id"] == run_id and listed[0]["status"] == "running" and listed[0]["max_steps"] == 25

    stopped = cli(home, "stop", run_id, "--wait")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.startswith(f"{run_id}: stopped at step ")
    assert cli(home, "stop", run_id).stderr.startswith(f"error: run {run_id} is not running (status: stopped)")

    resumed = cli(home, "resume", run_id[-7:])
    assert resumed.returncode == 0, resumed.stderr
    assert f"{run_id}: resume continues from checkpoint-" in resumed.stderr  # said before it resumes
    assert ", resuming at step " in resumed.stdout and "done: registered bg@1" in resumed.stdout
    table = cli(home, "runs").stdout.splitlines()
    assert table[0].split()[:4] == ["ID", "PROFILE", "METHOD", "STATUS"]
    assert run_id in table[1] and " done " in table[1] and "25/25" in table[1] and "bg@1" in table[1]
    again = cli(home, "resume", run_id)
    assert again.returncode == 2 and again.stderr.startswith(f"error: run {run_id} is done (registered bg@1)")


def test_adapters_and_show(trained_home: Path) -> None:
    listed = json.loads(cli(trained_home, "adapters", "--json").stdout)
    assert [v["ref"] for v in listed] == ["quick@1"]
    shown = json.loads(cli(trained_home, "show", "quick", "--json").stdout)
    assert shown["base_model"] == "builtin:tiny-llama" and shown["method"] == "sft"
    assert shown["lineage"] == ["quick@1"] and shown["dataset_fingerprint"]
    assert {f["path"] for f in shown["files"]} >= {"adapter_config.json", "adapter_model.safetensors"}
    assert shown["library_versions"]["peft"] and shown["library_versions"]["bitsandbytes"]
    text = cli(trained_home, "show", "quick@1").stdout
    assert text.startswith("quick@1  (adapter)\n") and "base model" in text and "sha256:" in text
    missing = cli(trained_home, "show", "quik")
    assert missing.returncode == 2
    assert missing.stderr == "error: no adapter named 'quik'\nhint: did you mean quick?\n"


def test_listing_commands_do_not_import_torch(trained_home: Path) -> None:
    code = ("import sys, io, contextlib; from qlora_tui.tui.cli import main\n"
            "for args in (['runs'], ['adapters'], ['show', 'quick'], ['runs', '--json']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()): main(['--home', sys.argv[1], *args])\n"
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'trl', 'bitsandbytes', 'datasets') "
            "if m in sys.modules]\n"
            "print(heavy)\n")
    result = subprocess.run([sys.executable, "-c", code, str(trained_home)], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


def test_data_preview_shows_rows_after_the_template_with_the_trained_tokens_marked(home: Path) -> None:
    first = json.loads((Path(__file__).resolve().parents[2] / "core" / "assets" / "demo-instructions.jsonl")
                       .read_text().splitlines()[0])
    result = cli(home, "data", "demo", "--rows", "2")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "trained (response) tokens are shown between ⟦ and ⟧" in out
    row1 = out.split("── row 1 ", 1)[1].split("── row 2 ", 1)[0]
    masked, trained = row1.split("⟦", 1)
    assert first["instruction"] in masked and "<|user|>" in masked and first["output"] not in masked
    assert trained.startswith(first["output"])  # the response, exactly, is what trains
    assert "── row 3 " not in out
    assert "rows: 320 read, 320 used (alpaca format)" in out
    data = json.loads(cli(home, "data", "demo", "--rows", "1", "--json").stdout)
    assert data["report"]["rows_used"] == 320 and data["report"]["trainable_tokens"] > 0
    row = data["rows"][0]
    assert 0 < row["trained_tokens"] < row["tokens"]
    assert "".join(text for text, kind in row["segments"] if kind == "trained").startswith(first["output"])


def test_set_overrides_are_checked_and_frozen_into_the_run(home: Path) -> None:
    bad = cli(home, "run", "demo", "--set", "lora.r=thirty")
    assert bad.returncode == 2
    assert bad.stderr.startswith('error: --set lora.r=thirty: lora.r: must be a positive integer, got "thirty"')
    missing = cli(home, "run", "demo", "--set", "data.path=nope.jsonl")
    assert missing.returncode == 2 and f"data.path: {Path.cwd() / 'nope.jsonl'}: no such file" in missing.stderr
    assert list_runs(home) == []

    r16 = json.loads(cli(home, "estimate", "demo", "--gpu-gb", "24", "--json", "--set", "lora.r=16").stdout)
    r64 = json.loads(cli(home, "estimate", "demo", "--gpu-gb", "24", "--json", "--set", "lora.r=64").stdout)
    assert r64["trainable_params"] == 4 * r16["trainable_params"]  # LoRA parameters grow with the rank

    started = cli(home, "run", "demo", "--detach", "--set", "train.max_steps=2", "--set", "train.lr=1e-4")
    assert started.returncode == 0, started.stderr
    (run,) = list_runs(home)
    frozen = run.profile_path.read_text()
    assert "--set train.max_steps=2\n# --set train.lr=1e-4" in frozen
    import tomllib

    doc = tomllib.loads(frozen)
    assert doc["train"]["max_steps"] == 2 and doc["train"]["lr"] == 1e-4
    wait_until(lambda: not run.is_running() and last_step(run) == 2, 300, "the 2-step run to end", run)


def test_profiles_says_which_profile_a_name_runs(tmp_path: Path) -> None:
    """Issue 12, bug 5: a user profile named like a shipped one was listed as a second `demo`, never run by name."""
    home = tmp_path / "home"
    (home / "profiles").mkdir(parents=True)
    (home / "profiles" / "demo.toml").write_text('[data]\npath = "builtin:demo-instructions"\n')
    rows = [r for r in json.loads(cli(home, "profiles", "--json").stdout) if r["name"] == "demo"]
    assert [(r["origin"], r["run_by_name"]) for r in rows] == [("shipped", True), ("user", False)]
    assert "user (hidden by the shipped one)" in cli(home, "profiles").stdout
