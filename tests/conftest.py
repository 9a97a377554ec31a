"""Shared fixtures: a data home with the built-in model, and a short real training run.

Everything runs on the CPU against the real libraries; the session-scoped
fixtures build the tiny model and train a small adapter once, and tests that
write copy them into a home of their own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from qlora_tui.core.profile.files import load_profile
from qlora_tui.core.profile.schema import Profile
from qlora_tui.runner.launch import start_run
from qlora_tui.runner.rundir import RunDir
from tests.families import TinyFamilies

ROOT = Path(__file__).resolve().parent.parent

DEMO_PROFILE = ROOT / "profiles" / "demo.toml"


TRAINING_FIXTURES = {"trained_home", "trained_copy", "ops_home", "ops_copy"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that use a trained home are slow (the fixture trains once per session); tests marked cuda run only
    where torch sees a CUDA device, and elsewhere are skipped, saying why."""
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    if not any(item.get_closest_marker("cuda") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; torch sees none on this machine")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


def quick_profile(name: str = "quick", max_steps: int = 30, **train: object) -> Profile:
    """The demo profile cut short, for tests that need a real but brief run."""
    profile = load_profile(DEMO_PROFILE)
    profile.name = name
    profile.train.max_steps = max_steps
    profile.train.save_steps = train.pop("save_steps", 10)  # type: ignore[assignment]
    for key, value in train.items():
        setattr(profile.train, key, value)
    return profile


IDLE_LIMIT_S = 600.0  # a run that writes nothing (no event, no log line) for this long is stuck


def progress_mark(run: RunDir) -> tuple[int, int]:
    """Bytes written so far to the run's event log and runner.log: grows while the run makes progress."""
    sizes = []
    for path in (run.events_path, run.log_path):
        try:
            sizes.append(path.stat().st_size)
        except FileNotFoundError:
            sizes.append(0)
    return sizes[0], sizes[1]


def wait_for_exit(run: RunDir, proc: subprocess.Popen[bytes], idle_limit: float = IDLE_LIMIT_S) -> int:
    """Wait for the runner to exit for as long as it makes progress; fail only once it has written nothing
    for `idle_limit` seconds (a loaded machine is slow, a stuck run is silent)."""
    mark, last_change = progress_mark(run), time.monotonic()
    while True:
        try:
            return proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            now_mark = progress_mark(run)
            if now_mark != mark:
                mark, last_change = now_mark, time.monotonic()
            elif time.monotonic() - last_change > idle_limit:
                proc.kill()
                log = run.log_path.read_text() if run.log_path.exists() else ""
                raise AssertionError(f"run {run.run_id} wrote nothing for {idle_limit:.0f}s; log:\n{log}") from None


def run_to_end(home: Path, profile: Profile, env: dict[str, str] | None = None) -> RunDir:
    run, proc = start_run(home, profile, detach=True) if env is None else _start_with_env(home, profile, env)
    code = wait_for_exit(run, proc)
    assert code == 0, f"runner exited {code}; log:\n{run.log_path.read_text()}"
    return run


def _start_with_env(home: Path, profile: Profile, env: dict[str, str]) -> tuple[RunDir, subprocess.Popen[bytes]]:
    from qlora_tui.core.profile.files import dumps_profile
    from qlora_tui.runner.launch import PROFILE_HEADER, spawn
    from qlora_tui.runner.rundir import create_run

    run = create_run(home, dumps_profile(profile, PROFILE_HEADER), profile.name)
    return run, spawn(run, env={**os.environ, **env})


@pytest.fixture(scope="session")
def model_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data home holding only the built-in tiny model (built once per session)."""
    from qlora_tui.core.builtin import ensure_builtin_model

    home = tmp_path_factory.mktemp("model-home")
    ensure_builtin_model(home, "builtin:tiny-llama")
    return home


@pytest.fixture(scope="session")
def tiny_families(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> TinyFamilies:
    """Tiny random models of every family (tests/families.py), each built on first use, once per session."""
    from qlora_tui.core.builtin import ensure_builtin_model

    return TinyFamilies(tmp_path_factory.mktemp("families"), ensure_builtin_model(model_home, "builtin:tiny-llama"))


@pytest.fixture
def home(model_home: Path, tmp_path: Path) -> Path:
    """A fresh, empty data home that already has the built-in model (copied, not rebuilt)."""
    target = tmp_path / "home"
    shutil.copytree(model_home / "models", target / "models")
    return target


@pytest.fixture(scope="session")
def trained_home(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data home in which a short real run registered `quick@1`; copy it before writing to it."""
    home = tmp_path_factory.mktemp("trained-home")
    shutil.copytree(model_home / "models", home / "models")
    run_to_end(home, quick_profile("quick", max_steps=60))
    return home


@pytest.fixture
def trained_copy(trained_home: Path, tmp_path: Path) -> Path:
    """A private copy of trained_home that a test may change."""
    target = tmp_path / "trained"
    shutil.copytree(trained_home, target, symlinks=True)
    return target
