"""From a version's base model id (as profiles write it) to a local directory holding its files."""

from __future__ import annotations

import os
from pathlib import Path

from registry.errors import NotFoundError, RegistryError
from registry.store import Store


def home_of(store: Store) -> Path:
    """The data home a store lives in (the store is <home>/registry)."""
    return store.root.parent


def resolve_base_dir(home: Path, model_id: str, *, download: bool = True) -> Path:
    """builtin:NAME -> the built-in model (built on first use); a directory -> itself; a Hub id -> its snapshot.

    Hub ids are taken from the local Hugging Face cache first; with `download`
    and no HF_HUB_OFFLINE they are fetched, since merge and compare need the
    weights anyway.
    """
    if model_id.startswith("builtin:"):
        from runner.builtin import ensure_builtin_model
        from runner.errors import QloraError

        try:
            return ensure_builtin_model(home, model_id)
        except QloraError as err:
            raise NotFoundError(err.message.removeprefix("model.id: "), hint=err.hint) from None
    path = Path(model_id).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise NotFoundError(f"base model {model_id}: the directory has no config.json")
        return path.resolve()
    if model_id.startswith(("/", "./", "../", "~")) or model_id.count("/") > 1:
        raise NotFoundError(f"base model {model_id}: no such directory")
    return _hub_snapshot(model_id, download)


def _hub_snapshot(model_id: str, download: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
    try:
        return Path(snapshot_download(model_id, local_files_only=True, allow_patterns=patterns))
    except HFValidationError as err:
        raise NotFoundError(f"base model {model_id!r}: not a directory, a builtin: model or a Hub id ({err})") \
            from None
    except Exception as err:  # LocalEntryNotFoundError and friends: not in the cache
        cached_error = err
    if not download or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        raise NotFoundError(f"base model {model_id!r} is not on this machine ({type(cached_error).__name__})",
                            hint=f"download it first (hf download {model_id}) or name a local directory")
    try:
        return Path(snapshot_download(model_id, allow_patterns=patterns))
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise RegistryError(f"base model {model_id!r}: cannot download it from the Hub ({first})",
                            hint=f"download it first (hf download {model_id}) or name a local directory") from None
