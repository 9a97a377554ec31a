"""`[train] report_to`: metrics also go to TensorBoard, MLflow, W&B and Trackio through the Trainer's integrations,
offline; a tracker that is missing, unreachable or failing is a warning, never a failed run."""

from __future__ import annotations

import importlib.util
import json
import socket
from pathlib import Path

import pytest

from qlora_tui.core.errors import ProfileError
from qlora_tui.core.profile.validate import profile_from_dict
from qlora_tui.runner.events import read_events
from qlora_tui.runner.trackers import PACKAGES, TRACKERS, guard_callbacks, setup_trackers
from tests.conftest import quick_profile, run_to_end


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_report_to_is_checked_like_every_profile_field() -> None:
    profile = profile_from_dict({"data": {"path": "x.jsonl"}, "train": {"report_to": ["tensorboard", "mlflow"]}})
    assert profile.train.report_to == ["tensorboard", "mlflow"]
    with pytest.raises(ProfileError, match='train.report_to: "comet" is not a tracker; use tensorboard, wandb'):
        profile_from_dict({"data": {"path": "x.jsonl"}, "train": {"report_to": ["comet"]}})


def test_a_missing_package_or_an_unreachable_server_is_a_warning(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PACKAGES, "trackio", "no_such_package_for_qlora_tui")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    wanted = ["mlflow", "trackio"] + [t for t in ("wandb",) if importlib.util.find_spec("wandb")]
    if importlib.util.find_spec("mlflow") is None:
        pytest.skip("mlflow is not installed (pip install 'qlora-tui[mlflow]')")
    setup = setup_trackers(wanted, tmp_path / "run", tmp_path, "demo")
    warnings = [m for level, m in setup.messages if level == "warning"]
    assert any(m.startswith("MLflow: the tracking server http://127.0.0.1:") and "cannot be reached" in m
               for m in warnings)
    assert any("trackio is not installed" in m and "pip install 'qlora-tui[trackio]'" in m for m in warnings)
    assert "mlflow" not in setup.report_to and "trackio" not in setup.report_to
    if "wandb" in wanted:  # no key, no server: offline instead, to sync later
        assert setup.report_to == ["wandb"] and setup.env["WANDB_MODE"] == "offline"
        assert any(m.startswith("W&B: this machine has no API key") for m in warnings)


def test_a_tracker_that_fails_during_the_run_is_switched_off_once() -> None:
    class TensorBoardCallback:  # the name is what marks a tracker's callback
        calls = 0

        def on_log(self, *args: object, **kwargs: object) -> None:
            TensorBoardCallback.calls += 1
            raise OSError("disk quota exceeded")

    class Handler:
        callbacks = [TensorBoardCallback()]

    class Trainer:
        callback_handler = Handler()

    warned: list[str] = []
    guard_callbacks(Trainer(), warned.append)
    callback = Handler.callbacks[0]
    callback.on_log()
    callback.on_log()
    assert TensorBoardCallback.calls == 1
    assert warned == ["tensorboard: OSError: disk quota exceeded; it gets no more metrics from this run "
                      "(events.jsonl has every metric)"]


def test_a_run_reports_to_every_installed_tracker_offline(home: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    installed = [t for t in TRACKERS if importlib.util.find_spec(PACKAGES[t])]
    if not installed:
        pytest.skip("no tracker is installed (pip install 'qlora-tui[tensorboard]' and the like)")
    env = {"WANDB_MODE": "offline", "TRACKIO_DIR": str(tmp_path / "trackio"),
           "MLFLOW_TRACKING_URI": (tmp_path / "mlruns").as_uri()}
    run = run_to_end(home, quick_profile("tracked", max_steps=4, report_to=list(TRACKERS)), env=env)
    events = read_events(run.events_path)
    losses = [e["loss"] for e in events if e["type"] == "step"]
    logs = [e["message"] for e in events if e["type"] == "log"]
    assert len(losses) == 4 and events[-1]["type"] == "done"
    assert not [m for e in events if e["type"] == "log" and e.get("level") == "warning"
                for m in [e["message"]] if "not installed" not in m]
    missing = [t for t in TRACKERS if t not in installed]
    for tracker in missing:
        assert any(f"{tracker} is not installed" in m for m in logs)
    if "tensorboard" in installed:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        accumulator = EventAccumulator(str(run.path / "tensorboard"))
        accumulator.Reload()
        assert [round(s.value, 5) for s in accumulator.Scalars("train/loss")] == [round(v, 5) for v in losses]
    if "mlflow" in installed:
        from mlflow.tracking import MlflowClient

        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # what the runner set for its own process

        client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
        (found,) = client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
        history = client.get_metric_history(found.info.run_id, "loss")
        assert [round(m.value, 5) for m in history] == [round(v, 5) for v in losses]
        assert found.info.run_name == run.run_id
    if "wandb" in installed:
        offline = list((run.path / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(offline) == 1 and offline[0].stat().st_size > 0
    if "trackio" in installed:
        stores = list((tmp_path / "trackio").rglob("*.db"))
        assert stores, "trackio wrote no local store"
        import sqlite3

        with sqlite3.connect(stores[0]) as conn:
            rows = conn.execute("SELECT metrics FROM metrics").fetchall()
        logged = [json.loads(r[0]).get("train/loss") for r in rows]
        assert [round(v, 5) for v in logged if v is not None] == [round(v, 5) for v in losses]
