"""`qlora-tui eval`: base and versions answer a prompt set in batched generate calls; each answer equals the one
a single-prompt compare gives; results are kept; what newly fails is named, and --fail-on-regression exits 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qlora_tui.registry.compare import compare_generate
from qlora_tui.registry.store import open_store
from tests.registry.helpers import cli

PROMPTS = ["Add the two numbers.\n\n12 and 5", "Is the number even or odd?\n\n14",
           "Write the word in capital letters.\n\nforest", "Sort the numbers from smallest to largest.\n\n21, 7, 15",
           "Reverse the order of the words.\n\nyellow black red"]
NEW_TOKENS = 12


def write_set(home: Path, name: str, rows: list[dict[str, object]]) -> None:
    path = home / "prompts" / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [{"settings": {"max_new_tokens": NEW_TOKENS}}, *rows]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_eval_batches_base_and_versions_keeps_results_and_names_regressions(
        ops_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_set(ops_copy, "demo", [{"id": f"p{i}", "prompt": p, "contains": "e"} for i, p in enumerate(PROMPTS)])
    result = cli(capsys, ops_copy, "eval", "quick@1", "quick@2", "--prompts", "demo", "--batch-rows", "6", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["rows"] == len(PROMPTS) * 3 and [v["ref"] for v in report["versions"]] == ["quick@1", "quick@2"]
    assert report["versions"][1]["change"]["previous"] == "quick@1"  # judged in the same run

    # every batched, left-padded row answers as a compare of that prompt alone does
    store = open_store(ops_copy)
    answers = {"base": [a["answer"] for a in report["base"]]}
    answers |= {v["ref"]: [a["answer"] for a in v["answers"]] for v in report["versions"]}
    for i, prompt in enumerate(PROMPTS):
        alone = compare_generate(store, ["quick@1", "quick@2"], prompt, max_new_tokens=NEW_TOKENS)
        assert [answers[a.label][i] for a in alone] == [a.text for a in alone], prompt
    differ = [i for i in range(len(PROMPTS)) if answers["quick@1"][i] != answers["quick@2"][i]]
    assert differ, "the two versions answer alike: the regression check below would prove nothing"

    kept = store.evals("quick@2", kind="prompts", name="demo")
    assert len(kept) == 1 and [a.answer for a in kept[0].answers] == answers["quick@2"]
    assert kept[0].summary["pass_rate"] == report["versions"][1]["summary"]["pass_rate"]
    assert "prompts demo: " in cli(capsys, ops_copy, "show", "quick@2").out

    # a set that quick@1 passes exactly: quick@2, judged alone later, is compared with quick@1's kept result
    write_set(ops_copy, "golden", [{"id": f"p{i}", "prompt": p, "exact": answers["quick@1"][i]}
                                   for i, p in enumerate(PROMPTS)])
    assert cli(capsys, ops_copy, "eval", "quick@1", "--prompts", "golden").code == 0
    table = cli(capsys, ops_copy, "eval", "quick@2", "--prompts", "golden", "--fail-on-regression")
    assert table.code == 1
    assert f"vs quick@1: {len(differ)} newly fail" in table.out
    assert f"quick@2 newly fails: {', '.join(f'p{i}' for i in differ)}" in table.out


def test_eval_refuses_bad_requests_before_loading(ops_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "no prompt set of that name" in cli(capsys, ops_copy, "eval", "quick@1", "--prompts", "nope").err
    write_set(ops_copy, "demo", [{"prompt": "x"}])
    assert "--batch-rows must be at least 1" in cli(capsys, ops_copy, "eval", "quick@1", "--prompts", "demo",
                                                    "--batch-rows", "0").err
    assert "no adapter named 'quik'" in cli(capsys, ops_copy, "eval", "quik@1", "--prompts", "demo").err
