"""The base model's revision is what was really loaded: a Hub model's snapshot commit, a local directory's
content fingerprint. Resume refuses a base whose files changed, and merge and compare warn, naming both."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from qlora_tui.core.builtin import ensure_builtin_model
from qlora_tui.core.models import LOCAL_PREFIX, content_fingerprint
from qlora_tui.registry.store import open_store
from qlora_tui.runner.launch import resume_run
from tests.conftest import _start_with_env, quick_profile, run_to_end, wait_for_exit
from tests.runner.helpers import events_of, last_step, wait_until

pytestmark = pytest.mark.slow
FIRST, SECOND = "1" * 40, "2" * 40
CLI = [sys.executable, "-c", "import sys; from qlora_tui.tui.cli import main; sys.exit(main(sys.argv[1:]))"]


@pytest.fixture
def hub_cache(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An offline Hugging Face cache holding acme/tiny (the built-in model's files) at commit FIRST."""
    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny"
    shutil.copytree(ensure_builtin_model(home, "builtin:tiny-llama"), repo / "snapshots" / FIRST)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(FIRST)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield repo


def move_main_to_second(repo: Path) -> None:
    """Upstream publishes a new commit and the cache follows it: other weights under refs/main."""
    second = repo / "snapshots" / SECOND
    shutil.copytree(repo / "snapshots" / FIRST, second)
    weights = second / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one weight's last byte: other weights, same shapes
    weights.write_bytes(bytes(data))
    (repo / "refs" / "main").write_text(SECOND)


def test_a_hub_model_records_the_commit_it_loaded_and_resume_refuses_a_new_one(home: Path, hub_cache: Path) -> None:
    profile = quick_profile("hub", max_steps=20)
    profile.model.id = "acme/tiny"
    run, proc = _start_with_env(home, profile, {"QLORA_TUI_STEP_DELAY": "0.2"})
    wait_until(lambda: last_step(run) >= 3, 120, "step 3", run)
    run.request_stop()
    assert wait_for_exit(run, proc) == 0
    assert events_of(run, "start")[0]["base_fingerprint"] == FIRST

    move_main_to_second(hub_cache)
    proc = resume_run(run)
    assert wait_for_exit(run, proc) == 1
    (error,) = events_of(run, "error")
    assert error["message"] == (f"cannot resume {run.run_id}: the base model revision changed since the run "
                                f"started (was {FIRST}, now {SECOND})")


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in its own process: huggingface_hub reads HF_HUB_CACHE once, when it is first imported."""
    return subprocess.run([*CLI, "--home", str(home), *args], capture_output=True, text=True)


def test_merge_uses_the_trained_commit_and_warns_when_only_another_is_here(
        home: Path, hub_cache: Path, tmp_path: Path) -> None:
    profile = quick_profile("hubbed", max_steps=4)
    profile.model.id = "acme/tiny"
    run_to_end(home, profile)
    version = open_store(home).get("hubbed@1")
    assert version.base_revision == FIRST
    move_main_to_second(hub_cache)
    quiet = cli(home, "merge", "hubbed@1", "--out", str(tmp_path / "m1"), "--no-check")
    assert quiet.returncode == 0 and "warning" not in quiet.stderr, quiet.stderr  # the trained commit is here
    assert open_store(home).get("hubbed-merged@1").base_revision == FIRST

    shutil.rmtree(hub_cache / "snapshots" / FIRST)
    warned = cli(home, "merge", "hubbed@1", "--out", str(tmp_path / "m2"), "--no-check")
    assert warned.returncode == 0, warned.stderr
    assert (f"warning: hubbed@1 was trained on acme/tiny at revision {FIRST}, but the base found here is at "
            f"{SECOND}") in warned.stderr
    assert open_store(home).get("hubbed-merged@2").base_revision == SECOND
    compared = cli(home, "compare", "hubbed@1", "--prompt", "hi", "--max-new-tokens", "2")
    assert compared.returncode == 0 and f"at revision {FIRST}" in compared.stderr, compared.stderr


def test_a_local_directory_records_a_content_fingerprint(home: Path, tmp_path: Path) -> None:
    local = tmp_path / "my-model"
    shutil.copytree(ensure_builtin_model(home, "builtin:tiny-llama"), local)
    profile = quick_profile("local", max_steps=20)
    profile.model.id = str(local)
    run, proc = _start_with_env(home, profile, {"QLORA_TUI_STEP_DELAY": "0.2"})
    wait_until(lambda: last_step(run) >= 3, 120, "step 3", run)
    run.request_stop()
    assert wait_for_exit(run, proc) == 0
    recorded = events_of(run, "start")[0]["base_fingerprint"]
    assert recorded == content_fingerprint(local) and recorded.startswith(LOCAL_PREFIX)
    weights = local / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, same names: only the content says it changed
    weights.write_bytes(bytes(data))
    proc = resume_run(run)
    assert wait_for_exit(run, proc) == 1
    assert "the base model revision changed since the run started" in events_of(run, "error")[0]["message"]
