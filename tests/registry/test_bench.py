"""`qlora-tui bench`: an lm-evaluation-harness task of our own (a local YAML over a local data file) on the adapter,
loaded over its 4-bit base as trained, and on the base; the accuracy equals one computed by hand from the same
model's log-likelihoods, and the scores are kept with the version."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.registry.helpers import cli

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install 'qlora-tui[eval]')")

DOCS = [("Add the two numbers. 32 and 7", ["39", "40", "25"], 0),
        ("Write the word in capital letters. forest", ["FOREST", "forest", "Forest"], 0),
        ("Sort the numbers from smallest to largest. 21, 7, 15", ["7, 15, 21", "21, 15, 7"], 0),
        ("Is the number even or odd? 14", ["even", "odd"], 0),
        ("Is the number even or odd? 7", ["even", "odd"], 1),
        ("Count the letters in the word. pencil", ["pencil has 6 letters.", "pencil has 3 letters."], 0)]
TASK = """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
doc_to_choice: "{{{{choices}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def by_hand(home: Path, ref: str) -> tuple[float, float]:
    """Accuracy of the adapter and of the base: the choice with the highest summed log-probability wins."""
    import torch

    from qlora_tui.registry.basemodel import version_base
    from qlora_tui.registry.compare import load_with_adapters
    from qlora_tui.registry.quant import training_quant
    from qlora_tui.registry.store import open_store

    store = open_store(home)
    version = store.get(ref)
    model, tokenizer = load_with_adapters(version_base(store, version).path, [version], training_quant(version),
                                          lambda m, f: None)

    def score(context: str, choice: str) -> float:
        ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
        whole = tokenizer(context + " " + choice, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
        return sum(float(logprobs[i - 1, whole[i]]) for i in range(len(ctx), len(whole)))

    def accuracy() -> float:
        hits = [max(range(len(c)), key=lambda j: score(f"{q}\nAnswer:", c[j])) == a for q, c, a in DOCS]
        return sum(hits) / len(hits)

    adapter = accuracy()
    with model.disable_adapter():
        base = accuracy()
    return adapter, base


def test_bench_runs_a_local_task_on_adapter_and_base_and_keeps_the_scores(
        trained_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "tasks" / "tiny_mc.jsonl"
    data.parent.mkdir()
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in DOCS))
    (data.parent / "tiny_mc.yaml").write_text(TASK.format(data=data))
    result = cli(capsys, trained_copy, "bench", "quick@1", "--task", "tiny_mc", "--include", str(data.parent),
                 "--json")
    assert result.code == 0, result.err
    (task,) = json.loads(result.out)["tasks"]
    adapter, base = by_hand(trained_copy, "quick@1")
    assert task["summary"]["metrics"]["acc,none"] == pytest.approx(adapter)
    assert task["summary"]["base_metrics"]["acc,none"] == pytest.approx(base)
    assert task["summary"]["samples"] == len(DOCS) and task["settings"]["quant"].startswith("4-bit nf4")
    shown = cli(capsys, trained_copy, "show", "quick@1").out
    assert f"bench tiny_mc: acc {adapter:.4g} (base {base:.4g})" in shown
    assert not math.isnan(task["summary"]["metrics"]["acc_stderr,none"])
    unknown = cli(capsys, trained_copy, "bench", "quick@1", "--task", "no_such_task")
    assert unknown.code == 2 and "lm_eval knows no such task" in unknown.err
