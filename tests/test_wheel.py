"""The installed package, as a user gets it: the wheel in a fresh virtual environment, used from a folder far
from the checkout, names one top-level package (qlora_tui) and runs the demo end to end."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_the_wheel_installs_one_namespace_and_runs_the_demo_outside_the_checkout(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, ROOT, cwd=tmp_path)
    (wheel,) = wheels.glob("qlora_tui-*.whl")
    top_level = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in top_level if not t.endswith(".dist-info")} == {"qlora_tui"}

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    pip = venv / "bin" / "pip"
    run(pip, "install", "-q", "torch==2.13.0", cwd=tmp_path)  # the CPU build from this machine's disk
    run(pip, "install", "-q", wheel, cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"QLORA_TUI_HOME": str(tmp_path / "home"), "PYTHONPATH": ""}
    demo = run(venv / "bin" / "qlora-tui", "run", "demo", cwd=elsewhere, env=env)
    assert "done: registered demo@1" in demo.stdout
    listed = run(venv / "bin" / "qlora-tui", "adapters", cwd=elsewhere, env=env)
    assert listed.stdout.splitlines()[1].startswith("demo@1")
    for bare in ("runner", "registry", "tui", "core"):  # no top-level name of ours was installed
        probe = f"import importlib.util as u; print(u.find_spec({bare!r}))"
        found = subprocess.run([venv / "bin" / "python", "-c", probe], cwd=elsewhere, capture_output=True, text=True)
        assert found.stdout.strip() == "None", bare
