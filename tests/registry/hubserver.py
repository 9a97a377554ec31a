"""A small stand-in for the Hugging Face Hub API on 127.0.0.1, answering what huggingface_hub 2.x sends for
create_repo and create_commit/upload_folder: /api/repos/create, /api/validate-yaml, the preupload call, and the
NDJSON commit. It keeps every request and the committed files so tests can check what arrived."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HubState:
    repos: dict[str, dict[str, Any]] = field(default_factory=dict)  # repo id -> {"private": bool, "files": {...}}
    requests: list[Request] = field(default_factory=list)
    fail: dict[str, int] = field(default_factory=dict)  # endpoint kind ("create", "preupload", "commit") -> status
    commits: list[dict[str, Any]] = field(default_factory=list)


class Handler(BaseHTTPRequestHandler):
    state: HubState
    endpoint: str

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        return

    def _reply(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status >= 400:
            self.send_header("X-Error-Message", payload.get("error", ""))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches to
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.state.requests.append(Request("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts[:3] == ["api", "repos", "create"]:
            return self._create(json.loads(body))
        if parts[:2] == ["api", "validate-yaml"]:
            return self._reply(200, {"errors": [], "warnings": []})
        if len(parts) >= 6 and parts[:2] == ["api", "models"] and parts[4] in ("preupload", "commit"):
            repo = f"{parts[2]}/{parts[3]}"
            if parts[4] in self.state.fail:
                return self._reply(self.state.fail[parts[4]], {"error": f"{parts[4]} failed on the server"})
            if repo not in self.state.repos:
                return self._reply(404, {"error": "Repository not found"})
            return self._preupload(json.loads(body)) if parts[4] == "preupload" else self._commit(repo, body)
        return self._reply(404, {"error": f"no route for {self.path}"})

    def _create(self, payload: dict[str, Any]) -> None:
        if "create" in self.state.fail:
            return self._reply(self.state.fail["create"], {"error": "create failed on the server"})
        repo = f"{payload['organization']}/{payload['name']}"
        if repo in self.state.repos:
            return self._reply(409, {"error": "You already created this model repo", "url": f"{self.endpoint}/{repo}"})
        self.state.repos[repo] = {"private": payload.get("visibility") == "private" or bool(payload.get("private")),
                                  "files": {}}
        return self._reply(200, {"url": f"{self.endpoint}/{repo}"})

    def _preupload(self, payload: dict[str, Any]) -> None:
        # Every file goes inline in the commit ("regular"); the LFS path needs S3-like storage this stand-in lacks.
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                 for f in payload["files"]]
        return self._reply(200, {"files": files, "commitOid": "0" * 40})

    def _commit(self, repo: str, body: bytes) -> None:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        for line in lines:
            if line["key"] == "file":
                value = line["value"]
                content = base64.b64decode(value["content"]) if value.get("encoding") == "base64" else \
                    value["content"].encode()
                self.state.repos[repo]["files"][value["path"]] = content
        oid = hashlib.sha1(body).hexdigest()
        self.state.commits.append({"repo": repo, "summary": header["summary"], "oid": oid})
        return self._reply(200, {"commitUrl": f"{self.endpoint}/{repo}/commit/{oid}", "commitOid": oid,
                                 "pullRequestUrl": None, "success": True})


class HubServer:
    """Start with `with HubServer() as hub:`; hub.endpoint is what HF_ENDPOINT should be."""

    def __init__(self) -> None:
        self.state = HubState()
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        handler.endpoint = self.endpoint
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
