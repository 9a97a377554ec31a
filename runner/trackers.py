"""Experiment trackers (`[train] report_to`): the run's metrics also go to TensorBoard, W&B, MLflow or Trackio,
through the HF Trainer's own integrations; events.jsonl stays the app's source of truth.

A tracker that is not installed, or whose server cannot be reached, is a
warning `log` event at start and the run goes on without it (W&B goes offline
instead, to be synced later); one that fails during the run is switched off
with a warning, never failing the run. Local stores default to places beside
the run or in the data home when the user's environment names none.
"""

from __future__ import annotations

import importlib.util
import netrc
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}
CALLBACKS = {"TensorBoardCallback": "tensorboard", "WandbCallback": "wandb", "MLflowCallback": "mlflow",
             "TrackioCallback": "trackio"}
PROBE_TIMEOUT_S = 3.0
OFFLINE_MODES = ("offline", "disabled", "dryrun")


@dataclass
class TrackerSetup:
    """The trackers the run reports to, the environment they read, and what to tell the user at start."""

    report_to: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    messages: list[tuple[str, str]] = field(default_factory=list)  # (level, message)


def reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the URL's host and port opens within `timeout` seconds."""
    parsed = urlparse(url)
    if not parsed.hostname:
        return False
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _wandb_has_key(base_url: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(urlparse(base_url).hostname or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def setup_trackers(wanted: list[str], run_path: Path, home: Path, project: str,
                   probe: Callable[[str], bool] = reachable) -> TrackerSetup:
    """Check each wanted tracker and choose where it writes; nothing here fails a run."""
    setup = TrackerSetup()
    env = os.environ
    for name in dict.fromkeys(wanted):
        if importlib.util.find_spec(PACKAGES[name]) is None:
            setup.messages.append(("warning", f"train.report_to: {name} is not installed, so this run does not "
                                              f"report to it (pip install 'qlora-tui[{name}]'); events.jsonl has "
                                              "every metric"))
            continue
        if name == "tensorboard":
            folder = env.get("TENSORBOARD_LOGGING_DIR") or str(run_path / "tensorboard")
            setup.env["TENSORBOARD_LOGGING_DIR"] = folder
            setup.messages.append(("info", f"TensorBoard: event files in {folder} (tensorboard --logdir {folder})"))
        elif name == "mlflow":
            uri = env.get("MLFLOW_TRACKING_URI") or (home / "trackers" / "mlruns").resolve().as_uri()
            if uri.startswith(("http://", "https://")) and not probe(uri):
                setup.messages.append(("warning", f"MLflow: the tracking server {uri} cannot be reached, so this run "
                                                  "does not report to it; events.jsonl has every metric"))
                continue
            setup.env["MLFLOW_TRACKING_URI"] = uri
            if not uri.startswith(("http://", "https://", "databricks", "sqlite:", "postgresql", "mysql")):
                setup.env["MLFLOW_ALLOW_FILE_STORE"] = "true"  # MLflow 3 refuses its file store unless told
            setup.env.setdefault("MLFLOW_EXPERIMENT_NAME", env.get("MLFLOW_EXPERIMENT_NAME") or project)
            setup.messages.append(("info", f"MLflow: experiment {setup.env['MLFLOW_EXPERIMENT_NAME']} at {uri}"))
        elif name == "wandb":
            setup.env["WANDB_DIR"] = env.get("WANDB_DIR") or str(run_path)
            setup.env["WANDB_PROJECT"] = env.get("WANDB_PROJECT") or project
            mode = env.get("WANDB_MODE", "").lower()
            base = env.get("WANDB_BASE_URL") or "https://api.wandb.ai"
            if mode not in OFFLINE_MODES and not (_wandb_has_key(base) and probe(base)):
                why = "has no API key" if not _wandb_has_key(base) else f"cannot reach {base}"
                setup.env["WANDB_MODE"] = "offline"
                setup.messages.append(("warning", f"W&B: this machine {why}, so the run logs offline in "
                                                  f"{setup.env['WANDB_DIR']}/wandb; `wandb sync` uploads it later"))
            else:
                setup.messages.append(("info", f"W&B: project {setup.env['WANDB_PROJECT']} "
                                               f"({mode or 'online'})"))
        elif name == "trackio":
            remote = env.get("TRACKIO_SERVER_URL") or ("https://huggingface.co" if env.get("TRACKIO_SPACE_ID") else "")
            if remote and not probe(remote):
                setup.messages.append(("warning", f"Trackio: {remote} cannot be reached, so this run does not "
                                                  "report to it; events.jsonl has every metric"))
                continue
            where = env.get("TRACKIO_DIR") or "trackio's local store (~/.cache/huggingface/trackio)"
            setup.messages.append(("info", f"Trackio: project {project} in {where}"))
        setup.report_to.append(name)
    return setup


def apply_env(setup: TrackerSetup) -> None:
    """The trackers read their settings from the environment (this is the runner's own process)."""
    os.environ.update(setup.env)


def guard_callbacks(trainer: Any, warn: Callable[[str], None]) -> None:
    """A tracker callback that raises is switched off with one warning, so a tracker never fails the run."""
    for callback in list(trainer.callback_handler.callbacks):
        tracker = CALLBACKS.get(type(callback).__name__)
        if tracker is None:
            continue
        for attribute in dir(callback):
            if attribute.startswith("on_") and callable(getattr(callback, attribute)):
                setattr(callback, attribute, _guarded(callback, getattr(callback, attribute), tracker, warn))


def _guarded(callback: Any, method: Callable[..., Any], tracker: str, warn: Callable[[str], None]
             ) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        if getattr(callback, "_qlora_tui_off", False):
            return None
        try:
            return method(*args, **kwargs)
        except Exception as err:  # a tracker's failure is never the run's
            callback._qlora_tui_off = True
            warn(f"{tracker}: {type(err).__name__}: {err}; it gets no more metrics from this run "
                 "(events.jsonl has every metric)")
            return None

    return call
