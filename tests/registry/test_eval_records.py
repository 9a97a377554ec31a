"""Eval results kept with a version: in the index (a forward migration adds their tables), in the version's record,
back after a rebuild, gone with the version; and what "newly fails" means across versions."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from qlora_tui.registry.evalrecords import KIND_BENCH, KIND_PROMPTS, EvalAnswer, EvalResult
from qlora_tui.registry.evalrun import _previous_change
from qlora_tui.registry.evalsummary import latest_per_set, result_line
from qlora_tui.registry.promptsets import load_prompt_set
from qlora_tui.registry.rebuild import rebuild_index
from qlora_tui.registry.schema import MIGRATIONS, SCHEMA_VERSION
from qlora_tui.registry.store import NewVersion, Store, open_store
from tests.registry.helpers import cli
from tests.registry.test_maintenance import adapter_dir


def result(passed: list[bool | None], name: str = "smoke", content_hash: str = "sha256:1") -> EvalResult:
    answers = [EvalAnswer(f"p{i}", f"prompt {i}", f"answer {i}", ok, None, {} if ok else {"failed": ["x"]},
                          f"base {i}", False) for i, ok in enumerate(passed)]
    scored = [a for a in passed if a is not None]
    return EvalResult(KIND_PROMPTS, name, content_hash, time.time(), {"decoding": {"max_new_tokens": 8}},
                      {"pass_rate": sum(scored) / len(scored), "passed": sum(scored), "scored": len(scored),
                       "prompts": len(passed), "base_pass_rate": 0.0}, answers)


def two_versions(tmp_path: Path) -> Store:
    store = open_store(tmp_path / "home")
    store.add("demo", adapter_dir(tmp_path, "a"), NewVersion(base_model="builtin:tiny-llama"))
    store.add("demo", adapter_dir(tmp_path, "b", b"other"), NewVersion(base_model="builtin:tiny-llama"))
    return store


def test_a_result_is_kept_in_the_index_and_the_record_and_survives_a_rebuild(tmp_path: Path) -> None:
    store = two_versions(tmp_path)
    kept = store.add_eval("demo@1", result([True, False, None]))
    assert kept.id and kept.ref == "demo@1"
    store.add_eval("demo@1", EvalResult(KIND_BENCH, "tiny_mc", "sha256:2", time.time(), {},
                                        {"metrics": {"acc,none": 0.5}, "base_metrics": {"acc,none": 0.25}}))
    (back,) = store.evals("demo@1", kind=KIND_PROMPTS)
    assert [a.passed for a in back.answers] == [True, False, None] and back.answers[1].detail == {"failed": ["x"]}
    assert back.answers[0].base_answer == "base 0" and back.summary["pass_rate"] == 0.5
    record = json.loads(store.record_path(store.get("demo@1")).read_text())
    assert [e["name"] for e in record["evals"]] == ["smoke", "tiny_mc"]
    assert record["evals"][0]["answers"][2]["passed"] is None

    store.db_path.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{store.db_path}{suffix}").unlink(missing_ok=True)
    rebuilt = Store(store.root)
    rebuild_index(rebuilt)
    again = rebuilt.evals("demo@1")
    assert [r.to_json() | {"created": 0} for r in again] == \
        [r.to_json() | {"created": 0} for r in store.evals("demo@1")]
    assert [result_line(r) for r in latest_per_set(again)] == [
        "prompts smoke: 50.0% passed (1/2; base 0.0%)", "bench tiny_mc: acc 0.5 (base 0.25)"]


def test_a_broken_eval_entry_costs_the_entry_not_the_version(tmp_path: Path) -> None:
    store = two_versions(tmp_path)
    store.add_eval("demo@2", result([True]))
    path = store.record_path(store.get("demo@2"))
    record = json.loads(path.read_text())
    record["evals"].append({"kind": "prompts"})  # no name, no hash
    path.write_text(json.dumps(record))
    report = rebuild_index(store, force=True)
    assert "demo@2" in report.versions and not report.skipped
    assert [r.name for r in store.evals("demo@2")] == ["smoke"]


def test_deleting_a_version_deletes_its_results(tmp_path: Path) -> None:
    store = two_versions(tmp_path)
    store.add_eval("demo@2", result([True]))
    store.delete("demo@2")
    with sqlite3.connect(store.db_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM evals").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM eval_answers").fetchone()[0] == 0


def test_an_index_from_before_evals_is_migrated_forward_and_keeps_its_versions(tmp_path: Path) -> None:
    store = two_versions(tmp_path)
    conn = sqlite3.connect(store.db_path)  # what schema version 2 had: no eval tables
    conn.executescript("DROP TABLE eval_answers; DROP TABLE evals; PRAGMA user_version = 2;")
    conn.close()
    assert SCHEMA_VERSION == len(MIGRATIONS) == 3
    fresh = Store(store.root)
    assert [v.ref for v in fresh.list_versions()] == ["demo@1", "demo@2"]
    fresh.add_eval("demo@1", result([True]))
    with sqlite3.connect(store.db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3


def test_newly_failing_prompts_are_counted_against_the_previous_version_on_the_same_set_bytes(tmp_path: Path) -> None:
    store = two_versions(tmp_path)
    set_path = tmp_path / "home" / "prompts" / "smoke.jsonl"
    set_path.parent.mkdir(parents=True)
    set_path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": "x", "contains": "y"}) + "\n" for i in range(3)))
    prompt_set = load_prompt_set(tmp_path / "home", "smoke")
    store.add_eval("demo@1", result([True, False, True], content_hash="sha256:older-bytes"))
    now = result([False, True, True]).answers
    v2 = store.get("demo@2")
    assert _previous_change(store, v2, now, prompt_set, {}).previous == ""  # other set bytes: never compared
    store.add_eval("demo@1", result([True, False, True], content_hash=prompt_set.content_hash))
    change = _previous_change(store, v2, now, prompt_set, {})
    assert (change.previous, change.newly_failing, change.newly_passing) == ("demo@1", ["p0"], ["p1"])


def test_show_lists_the_latest_result_of_each_set(tmp_path: Path, capsys: object) -> None:
    store = two_versions(tmp_path)
    store.add_eval("demo@2", result([False, False]))
    store.add_eval("demo@2", result([True, False]))
    shown = cli(capsys, tmp_path / "home", "show", "demo@2")  # type: ignore[arg-type]
    assert "  evals (latest per set)\n    prompts smoke: 50.0% passed (1/2; base 0.0%)\n" in shown.out
    as_json = json.loads(cli(capsys, tmp_path / "home", "show", "demo@2", "--json").out)  # type: ignore[arg-type]
    assert [e["summary"]["pass_rate"] for e in as_json["evals"]] == [0.5]
