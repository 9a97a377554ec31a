"""Checkpoints that count only once complete.

The trainer writes into checkpoints/.staging/; once it is done we check the
adapter weights are finite, write manifest.json (every file's size and sha256)
last, and rename the directory into checkpoints/. Resume verifies the manifest
and moves a broken checkpoint aside, so it is reported once and never retried.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from qlora_tui.core.hashing import hash_tree, sha256_file
from qlora_tui.core.testhooks import kill_point
from qlora_tui.runner.errors import CheckpointError

MANIFEST = "manifest.json"
NAME = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class Skipped:
    name: str
    reason: str


def staging_dir(checkpoints: Path) -> Path:
    return checkpoints / ".staging"


def complete_checkpoints(checkpoints: Path) -> list[tuple[int, Path]]:
    """(step, path) of checkpoints that have a manifest, newest first (not yet verified)."""
    if not checkpoints.is_dir():
        return []
    found = []
    for path in checkpoints.iterdir():
        match = NAME.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def adapter_weights_finite(directory: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    for file in directory.glob("*.safetensors"):
        for tensor in load_file(file).values():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                return False
    return True


def finalize(checkpoints: Path, step: int, keep: int) -> Path:
    """Turn the trainer's staged checkpoint-<step> into a complete one; return its final path."""
    staged = staging_dir(checkpoints) / f"checkpoint-{step}"
    if not staged.is_dir():
        raise CheckpointError(f"checkpoint for step {step} was not written to {staged}")
    if not adapter_weights_finite(staged):
        shutil.rmtree(staged, ignore_errors=True)
        raise CheckpointError(f"step {step}: adapter weights are not finite (NaN or inf); the checkpoint was "
                              "discarded", hint="lower train.lr or check the data for broken rows")
    kill_point("runner.checkpoint.before-manifest")
    files = [{"path": p, "size": s, "sha256": h} for p, s, h in hash_tree(staged)]
    manifest = {"step": step, "created": time.time(), "files": files}
    tmp = staged / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(staged / MANIFEST)
    final = checkpoints / f"checkpoint-{step}"
    if final.exists():
        shutil.rmtree(final)
    staged.rename(final)
    for _, old in complete_checkpoints(checkpoints)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def verify(path: Path) -> str | None:
    """None when the checkpoint matches its manifest, else why not."""
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        return "no manifest (it was never completed)"
    try:
        manifest = json.loads(manifest_path.read_text())
        entries = manifest["files"]
    except (ValueError, KeyError, TypeError):
        return "manifest is unreadable"
    for entry in entries:
        file = path / entry["path"]
        if not file.exists():
            return f"{entry['path']} is missing"
        if file.stat().st_size != entry["size"]:
            return f"{entry['path']} has {file.stat().st_size} bytes, manifest says {entry['size']}"
        if sha256_file(file) != entry["sha256"]:
            return f"{entry['path']} does not match its sha256"
    return None


def newest_valid(checkpoints: Path) -> tuple[Path | None, list[Skipped]]:
    """The newest checkpoint that verifies; broken ones are moved to checkpoints/.broken/ and reported."""
    skipped: list[Skipped] = []
    for _step, path in complete_checkpoints(checkpoints):
        reason = verify(path)
        if reason is None:
            return path, skipped
        skipped.append(Skipped(path.name, reason))
        broken = checkpoints / ".broken"
        broken.mkdir(exist_ok=True)
        target = broken / f"{path.name}-{int(time.time())}"
        path.rename(target)
    return None, skipped


def clear_staging(checkpoints: Path) -> None:
    """Anything in staging belongs to a life of the runner that ended mid-save."""
    shutil.rmtree(staging_dir(checkpoints), ignore_errors=True)
