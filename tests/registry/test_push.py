"""`qlora-tui push`: real huggingface_hub calls against a local stand-in for the Hub on 127.0.0.1."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from qlora_tui.registry.modelcard import model_card
from qlora_tui.registry.store import NewVersion, open_store
from tests.registry.helpers import cli, snapshot
from tests.registry.hubserver import HubServer

TOKEN = "hf_qloratui_test_secret_0123456789"


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[HubServer]:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield server


def front_matter_of(card: str) -> dict:
    """The card's metadata as the Hub reads it (huggingface_hub's own parser), independent of how it was written."""
    from huggingface_hub import ModelCard

    return ModelCard(card).data.to_dict()


def _no_secret_anywhere(home: Path, *texts: str) -> None:
    assert all(TOKEN not in t for t in texts)
    for path in (home / "registry").glob("index.sqlite*"):
        assert TOKEN.encode() not in path.read_bytes()


def test_push_uploads_the_adapter_with_a_model_card_and_records_the_commit(
        trained_copy: Path, hub: HubServer, capsys: pytest.CaptureFixture[str]) -> None:
    result = cli(capsys, trained_copy, "push", "quick@1", "--repo", "me/quick-demo", "--private")
    assert result.code == 0, result.err
    commit = hub.state.commits[0]
    url = f"{hub.endpoint}/me/quick-demo/commit/{commit['oid']}"
    version = open_store(trained_copy).get("quick@1")
    assert result.out == f"pushed quick@1 to me/quick-demo ({len(version.files)} files)\n  commit {commit['oid']}\n" \
                         f"  {url}\n"
    repo = hub.state.repos["me/quick-demo"]
    assert repo["private"] is True and commit["summary"] == "Upload quick@1 with qlora-tui"
    uploaded = repo["files"]
    assert set(uploaded) == {f.path for f in version.files} | {"README.md"}
    for entry in version.files:
        if entry.path != "README.md":
            assert uploaded[entry.path] == (version.path / entry.path).read_bytes(), entry.path
    card = uploaded["README.md"].decode()
    body = card.split("\n---\n", 1)[1]
    meta = front_matter_of(card)
    assert meta["library_name"] == "peft" and "base_model" not in meta
    assert meta["tags"] == ["qlora-tui", "lora", "qlora", "sft", "peft"]
    for text in ("# quick-demo", "- method: sft", "- lora.r: 8", "- train.lr: 0.003", "- base quantization in "
                 "training: 4-bit nf4", "## Metrics", "| final_loss |", 'PeftModel.from_pretrained(base, '
                 '"me/quick-demo")', "`builtin:tiny-llama` is not on the Hub"):
        assert text in body, text
    assert {r.path.split("?")[0] for r in hub.state.requests} == {
        "/api/repos/create", "/api/validate-yaml", "/api/models/me/quick-demo/preupload/main",
        "/api/models/me/quick-demo/commit/main"}
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in hub.state.requests)

    again = cli(capsys, trained_copy, "push", "quick@1", "--repo", "me/quick-demo")
    assert again.code == 0, again.err
    pushes = open_store(trained_copy).get("quick@1").pushes
    assert [(p.repo, p.commit_id, p.url, p.merged) for p in pushes][0] == ("me/quick-demo", commit["oid"], url, False)
    assert len(pushes) == 2
    shown = cli(capsys, trained_copy, "show", "quick@1").out
    assert f"  pushed  me/quick-demo  {commit['oid']}  {url}" in shown
    _no_secret_anywhere(trained_copy, result.out, result.err, again.out, again.err, shown)


def test_push_merged_sends_the_merged_model(trained_copy: Path, hub: HubServer, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, trained_copy, "merge", "quick@1", "--out", str(tmp_path / "m"), "--quiet").code == 0
    result = cli(capsys, trained_copy, "push", "quick@1", "--merged", "--repo", "me/quick-merged", "--json")
    assert result.code == 0, result.err
    files = hub.state.repos["me/quick-merged"]["files"]
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= set(files)
    assert files["model.safetensors"] == (tmp_path / "m" / "model.safetensors").read_bytes()
    card = files["README.md"].decode()
    assert "library_name: transformers" in card and "## Merge" in card and "- base weights: nf4-roundtrip" in card
    assert "top-1 agreement" in card and 'AutoModelForCausalLM.from_pretrained("me/quick-merged")' in card
    store = open_store(trained_copy)
    assert store.get("quick-merged@1").pushes[0].merged and store.get("quick@1").pushes == []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_pushes_change_nothing_and_never_show_the_token(trained_copy: Path, hub: HubServer,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    def refused(args: tuple[str, ...], message: str) -> None:
        before = snapshot(trained_copy)
        result = cli(capsys, trained_copy, "push", *args)
        assert result.code == 2 and message in result.err, result.err
        assert snapshot(trained_copy) == before
        _no_secret_anywhere(trained_copy, result.out, result.err)

    for repo in ("noslash", "me/a/b", "me/bad name", "me/x--y", "-me/x"):
        refused(("quick@1", f"--repo={repo}"), f"--repo {repo!r}: not a Hub repo id; write OWNER/NAME")
    refused(("quick@1", "--repo", "me/x", "--merged"), "quick@1 has no merged model to push")
    refused(("quik@1", "--repo", "me/x"), "no adapter named 'quik'")
    weights = open_store(trained_copy).get("quick@1").path / "adapter_config.json"
    original = weights.read_bytes()
    weights.parent.chmod(0o755)
    weights.chmod(0o644)
    weights.write_bytes(original.replace(b'"r": 8', b'"r": 9'))
    refused(("quick@1", "--repo", "me/x"), "quick@1: adapter_config.json (changed); not pushing files that differ")
    weights.write_bytes(original)
    hub.state.fail["commit"] = 500
    refused(("quick@1", "--repo", "me/x"), "push of quick@1 to me/x failed: HTTP 500: commit failed on the server")
    hub.state.fail = {"create": 403}
    refused(("quick@1", "--repo", "other/x"), "push of quick@1 to other/x failed: HTTP 403")
    hub.state.fail = {}
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    refused(("quick@1", "--repo", "me/x"), "failed: cannot reach http://127.0.0.1:")
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.delenv("HF_TOKEN")
    refused(("quick@1", "--repo", "me/x"), "no Hugging Face token: pushing needs one with write access")
    assert "hint: set HF_TOKEN, or log in once with `hf auth login`" in cli(
        capsys, trained_copy, "push", "quick@1", "--repo", "me/x").err
    assert not any(r["files"] for r in hub.state.repos.values())


def test_model_card_names_hub_base_and_data_set(tmp_path: Path) -> None:
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    version = open_store(tmp_path / "home").add("x", folder, NewVersion(
        base_model="meta-llama/Llama-3.1-8B", dataset="tatsu-lab/alpaca", method="dpo", metrics={"eval_loss": 0.5},
        profile='[train]\nlr = 0.0002\n[lora]\nr = 16\ntarget_modules = ["q_proj", "v_proj"]\n',
        extra={"quant": {"bits": "none"}, "license": "llama3.1"}))
    card = model_card(version, "me/x")
    meta = front_matter_of(card)
    assert meta["base_model"] == "meta-llama/Llama-3.1-8B" and meta["library_name"] == "peft"
    assert meta["datasets"] == ["tatsu-lab/alpaca"] and meta["license"] == "llama3.1"
    assert meta["tags"] == ["qlora-tui", "lora", "dpo", "peft"]
    assert "- lora.target_modules: q_proj, v_proj" in card and "| eval_loss | 0.5 |" in card
    assert 'AutoModelForCausalLM.from_pretrained("meta-llama/Llama-3.1-8B")' in card
