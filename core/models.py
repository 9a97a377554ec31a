"""From a base model id (as profiles write it) to the files that will be loaded, and what those files were.

One resolution serves training, merge, compare and import: `builtin:NAME` is
the built-in model (made on first use), a directory is itself, and a Hub id is
a snapshot in the Hugging Face cache (downloaded when allowed). The revision
recorded is what was really loaded: the snapshot's commit for a Hub model, a
content fingerprint for a directory; resume, merge and compare check it.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from qlora_tui.core.builtin import ensure_builtin_model, is_builtin
from qlora_tui.core.errors import ModelError

COMMIT = re.compile(r"^[0-9a-f]{40}$")
LOCAL_PREFIX = "local-sha256:"
SAMPLE_BYTES = 1 << 20  # bytes read at each end of a weight file for a directory's fingerprint
WEIGHT_SUFFIXES = (".safetensors", ".bin")
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


@dataclass(frozen=True)
class BaseModel:
    """A resolved base: `path` is the local directory every loader reads, `revision` what it holds."""

    model_id: str  # as the profile names it
    path: Path
    requested_revision: str  # the profile's model.revision ("" for the default branch)
    revision: str  # the snapshot's commit (Hub) or local-sha256:... (a directory, the built-in model)

    @property
    def source(self) -> str:
        return str(self.path)


def resolve_base(home: Path, model_id: str, revision: str = "", *, download: bool = True,
                 trust_remote_code: bool = False) -> BaseModel:
    """Resolve `model_id` at `revision` to local files; raise ModelError naming it when that is impossible."""
    if is_builtin(model_id):
        path = ensure_builtin_model(home, model_id)
        return BaseModel(model_id, path, revision, content_fingerprint(path))
    local = Path(model_id).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelError(f"base model {model_id}: the directory has no config.json")
        path = local.resolve()
        return BaseModel(model_id, path, revision, content_fingerprint(path))
    if model_id.startswith(("/", "./", "../", "~")) or model_id.count("/") > 1 or local.exists():
        raise ModelError(f"base model {model_id}: no such directory")
    path = hub_snapshot(model_id, revision, download=download, trust_remote_code=trust_remote_code)
    return BaseModel(model_id, path, revision, path.name if COMMIT.match(path.name) else content_fingerprint(path))


def hub_snapshot(model_id: str, revision: str = "", *, download: bool = True, trust_remote_code: bool = False) -> Path:
    """The cached snapshot directory of a Hub model (its name is the commit), fetched when allowed and missing."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    patterns = HUB_PATTERNS + (["*.py"] if trust_remote_code else [])
    rev = revision or None
    try:
        path = Path(snapshot_download(model_id, revision=rev, local_files_only=True, allow_patterns=patterns))
        if has_weights(path):
            return path
    except HFValidationError as err:
        raise ModelError(f"base model {model_id!r}: not a directory, a builtin: model or a Hub id ({err})") from None
    except Exception as err:  # LocalEntryNotFoundError and friends: not in the cache
        if not download or offline():
            raise ModelError(f"base model {model_id!r}{f' at {revision}' if revision else ''} is not on this machine "
                             f"({type(err).__name__})",
                             hint=f"download it first (hf download {model_id}) or name a local directory") from None
    try:
        path = Path(snapshot_download(model_id, revision=rev, allow_patterns=patterns))
        if not has_weights(path):  # an older repo with pickled weights only
            path = Path(snapshot_download(model_id, revision=rev, allow_patterns=[*patterns, "*.bin"]))
        return path
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelError(f"base model {model_id!r}: cannot download it from the Hub ({first})",
                         hint=f"download it first (hf download {model_id}) or name a local directory") from None


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")


def has_weights(path: Path) -> bool:
    return any(p.suffix in WEIGHT_SUFFIXES for p in path.iterdir())


def content_fingerprint(path: Path) -> str:
    """config.json, and each weight file's name, size and first and last MiB: cheap on a 140 GB model, and it
    changes when the weights are replaced by others (fine-tuned weights differ in every block)."""
    digest = hashlib.sha256()
    config = path / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for weights in sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES):
        size = weights.stat().st_size
        digest.update(f"{weights.name}:{size}".encode())
        with open(weights, "rb") as f:
            digest.update(f.read(SAMPLE_BYTES))
            if size > 2 * SAMPLE_BYTES:
                f.seek(size - SAMPLE_BYTES)
                digest.update(f.read(SAMPLE_BYTES))
    return LOCAL_PREFIX + digest.hexdigest()[:16]


def legacy_fingerprint(path: Path, model_id: str, requested_revision: str) -> str:
    """What runs and versions recorded before revisions were real (config + weight names and sizes for a
    directory, a hash of "id@revision" for a Hub id): read only to compare against such old records."""
    digest = hashlib.sha256()
    if is_builtin(model_id) or Path(model_id).expanduser().is_dir():
        config = path / "config.json"
        if config.exists():
            digest.update(config.read_bytes())
        for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
            digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    else:
        digest.update(f"{model_id}@{requested_revision or 'main'}".encode())
    return digest.hexdigest()[:16]


def is_recorded_revision(value: str) -> bool:
    """True for revisions this scheme writes (a commit or a content fingerprint), False for older records."""
    return bool(COMMIT.match(value)) or value.startswith(LOCAL_PREFIX)


def revision_changed(recorded: str, base: BaseModel) -> bool:
    """Whether `base` holds other files than the ones `recorded` (a run's start or a version) names."""
    if not recorded:
        return False
    if is_recorded_revision(recorded):
        return recorded != base.revision
    if recorded == base.requested_revision:  # an old version recorded the profile's own revision string
        return False
    return recorded != legacy_fingerprint(base.path, base.model_id, base.requested_revision)
