"""`push`: upload a version (or its merged model) to the Hugging Face Hub with a model card, and record the commit.

The token comes from the caller, HF_TOKEN or huggingface_hub's stored login;
it is only ever handed to HfApi, never printed, logged or stored. HF_ENDPOINT
is read when the push runs, so a test server or a private Hub works.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from typing import Any

from qlora_tui.registry.errors import IntegrityError, RegistryError
from qlora_tui.registry.integrity import verify_version
from qlora_tui.registry.modelcard import model_card
from qlora_tui.registry.records import AdapterVersion
from qlora_tui.registry.store import Store

REPO_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


@dataclass
class PushRecord:
    """What was pushed where: the version, the repo, the Hub's commit id and URL, and the files sent."""

    ref: str
    repo: str
    commit_id: str
    url: str
    merged: bool
    files: list[str]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check_repo(repo: str) -> str:
    """OWNER/NAME as the Hub accepts it."""
    bad = not REPO_PATTERN.match(repo) or ".." in repo or "--" in repo or repo.endswith((".", ".git"))
    if bad:
        raise RegistryError(f"--repo {repo!r}: not a Hub repo id; write OWNER/NAME (letters, digits, '-', '_', '.'; "
                            "no '--' or '..'; at most 96 characters each)")
    return repo


def _target(store: Store, version: AdapterVersion, merged: bool) -> AdapterVersion:
    if version.kind == "merged" or not merged:
        return version
    children = [c for c in store.children(version.ref) if c.kind == "merged"]
    if not children:
        raise RegistryError(f"{version.ref} has no merged model to push",
                            hint=f"qlora-tui merge {version.ref} --out DIR first, or push without --merged")
    return store.get(children[-1].ref)  # with its file list, which children() leaves out


def _token(token: str | None) -> str:
    if token:
        return token
    from huggingface_hub import get_token

    found = os.environ.get("HF_TOKEN") or get_token()
    if not found:
        raise RegistryError("no Hugging Face token: pushing needs one with write access",
                            hint="set HF_TOKEN, or log in once with `hf auth login`")
    return found


def _scrub(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


def push_version(store: Store, ref: str, repo: str, *, private: bool = False, merged: bool = False,
                 token: str | None = None) -> PushRecord:
    """Upload version `ref` (or, with merged, its newest merged model) to Hub repo OWNER/NAME, creating it if needed.

    The files are verified against the index first, README.md is replaced by
    a generated model card, and the commit is recorded in the store only after
    the Hub accepted it.
    """
    check_repo(repo)
    target = _target(store, store.get(ref), merged)
    is_merged = target.kind == "merged"
    report = verify_version(target)
    if not report.ok:
        raise IntegrityError(f"{target.ref}: {', '.join(f'{p.path} ({p.problem})' for p in report.problems)}; "
                             "not pushing files that differ from the registry", hint=f"qlora-tui verify {target.ref}")
    secret = _token(token)

    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    endpoint = os.environ.get("HF_ENDPOINT") or None
    api = HfApi(endpoint=endpoint, token=secret)
    evals = store.evals(target.ref, with_answers=False)
    if not evals and target.parent_ref:  # a merged model is judged as the adapter it came from
        evals = store.evals(target.parent_ref, with_answers=False)
    card = model_card(target, repo, merged=is_merged, evals=evals).encode()
    operations = [CommitOperationAdd(path_in_repo=f.path, path_or_fileobj=str(target.path / f.path))
                  for f in target.files if f.path != "README.md"]
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card))
    try:
        api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        commit = api.create_commit(repo, operations, commit_message=f"Upload {target.ref} with qlora-tui",
                                   repo_type="model")
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        detail = err.server_message or str(err).splitlines()[0]
        hint = {401: "the token was refused: check HF_TOKEN", 403: f"the token cannot write to {repo}"}.get(
            status, "nothing was recorded; try again")  # type: ignore[call-overload]
        raise RegistryError(_scrub(f"push of {target.ref} to {repo} failed: HTTP {status}: {detail}", secret),
                            hint=hint) from None
    except (OSError, ValueError) as err:
        raise RegistryError(_scrub(f"push of {target.ref} to {repo} failed: {type(err).__name__}: {err}", secret),
                            hint=f"check the network and HF_ENDPOINT ({endpoint or 'https://huggingface.co'})") \
            from None
    except Exception as err:  # httpx transport errors are not OSErrors; name them without a traceback
        if type(err).__module__.startswith("httpx"):
            raise RegistryError(_scrub(f"push of {target.ref} to {repo} failed: cannot reach "
                                       f"{endpoint or 'https://huggingface.co'} ({type(err).__name__})", secret),
                                hint="check the network and HF_ENDPOINT") from None
        raise
    store.record_push(target.ref, repo=repo, commit_id=commit.oid, url=commit.commit_url, merged=is_merged)
    return PushRecord(target.ref, repo, commit.oid, commit.commit_url, is_merged,
                      [op.path_in_repo for op in operations])
