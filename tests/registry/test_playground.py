"""The playground: `registry.worker serve` keeps base and adapters loaded between prompts and reloads only changes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from qlora_tui.registry.compare import compare_generate, render_conversation
from qlora_tui.registry.store import open_store
from tests.registry.conftest import tiny_dir

PROMPT = "Add the two numbers.\n\n12 and 5"


class Serve:
    """A `serve` child driven request by request, reading its lines up to each answer."""

    def __init__(self, home: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "qlora_tui.registry.worker", "--home", str(home), "serve"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, bufsize=1)
        self.ready = self.read_until("ready")[-1]

    def read_until(self, *kinds: str) -> list[dict[str, Any]]:
        assert self.proc.stdout is not None
        lines = []
        for raw in self.proc.stdout:
            lines.append(json.loads(raw))
            if lines[-1]["type"] in kinds:
                return lines
        raise AssertionError(f"the worker ended before {kinds}: {lines}")

    def ask(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self.read_until("answers", "error")

    def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # EOF: it frees everything and exits
        return self.proc.wait(timeout=60)


def of_type(lines: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [line for line in lines if line["type"] == kind]


def test_the_second_prompt_reuses_the_loaded_models_and_other_versions_load_only_what_changed(ops_home: Path
                                                                                              ) -> None:
    serve = Serve(ops_home)
    try:
        first = serve.ask({"op": "generate", "id": 1, "refs": ["quick@1"], "prompt": PROMPT, "max_new_tokens": 12})
        (loaded,) = of_type(first, "loaded")
        assert loaded["base_loaded"] and loaded["loaded"] == ["quick@1"] and loaded["freed"] == []
        second = serve.ask({"op": "generate", "id": 2, "refs": ["quick@1"], "prompt": "Is 7 even or odd?",
                            "max_new_tokens": 12})
        assert of_type(second, "loaded") == []  # nothing loaded again: the same process answered from memory
        assert second[-1]["type"] == "answers" and second[-1]["id"] == 2
        assert [a["label"] for a in second[-1]["answers"]] == ["base", "quick@1"]

        more = serve.ask({"op": "generate", "id": 3, "refs": ["quick@1", "quick@2"], "prompt": PROMPT,
                          "max_new_tokens": 12})
        (loaded,) = of_type(more, "loaded")
        assert (loaded["base_loaded"], loaded["loaded"], loaded["freed"]) == (False, ["quick@2"], [])
        fewer = serve.ask({"op": "generate", "id": 4, "refs": ["quick@2"], "prompt": PROMPT, "max_new_tokens": 12})
        (loaded,) = of_type(fewer, "loaded")
        assert (loaded["base_loaded"], loaded["loaded"], loaded["freed"]) == (False, [], ["quick@1"])

        # what a kept session answers is what a fresh load answers (the CLI's compare)
        fresh = compare_generate(open_store(ops_home), ["quick@1", "quick@2"], PROMPT, max_new_tokens=12)
        assert [a["text"] for a in more[-1]["answers"]] == [a.text for a in fresh]
        assert [a["text"] for a in fewer[-1]["answers"]] == [fresh[0].text, fresh[2].text]

        bad = serve.ask({"op": "generate", "id": 5, "refs": ["qick"], "prompt": PROMPT})
        assert bad[-1] == {"type": "error", "id": 5, "message": "no adapter named 'qick'",
                           "hint": "did you mean quick?", "kind": "not_found"}
        after = serve.ask({"op": "generate", "id": 6, "refs": ["quick@2"], "prompt": PROMPT, "max_new_tokens": 12})
        assert of_type(after, "loaded") == []  # an error on the way changed nothing in memory
        assert [a["text"] for a in after[-1]["answers"]] == [a["text"] for a in fewer[-1]["answers"]]
    finally:
        code = serve.close()
    assert code == 0


def test_chat_turns_answer_as_separate_generate_calls_over_each_rows_conversation(ops_home: Path) -> None:
    """Rows with different histories are padded on the left in one batch; each row must read as if alone."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qlora_tui.registry.quant import bnb_config, training_quant

    serve = Serve(ops_home)
    try:
        first = serve.ask({"op": "generate", "id": 1, "refs": ["quick@1", "quick@2"], "prompt": PROMPT,
                           "max_new_tokens": 10})
        history = {a["label"]: [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": a["text"]}]
                   for a in first[-1]["answers"]}
        second = serve.ask({"op": "generate", "id": 2, "refs": ["quick@1", "quick@2"], "prompt": "And 3 and 4?",
                            "history": history, "max_new_tokens": 10})
    finally:
        serve.close()
    assert of_type(second, "loaded") == []
    store = open_store(ops_home)
    version = store.get("quick@1")
    tokenizer = AutoTokenizer.from_pretrained(version.path)
    for answer in second[-1]["answers"]:
        turns = [*history[answer["label"]], {"role": "user", "content": "And 3 and 4?"}]
        ids = tokenizer(render_conversation(tokenizer, turns), return_tensors="pt", add_special_tokens=False)
        model = AutoModelForCausalLM.from_pretrained(tiny_dir(ops_home), dtype=torch.float32,
                                                     quantization_config=bnb_config(training_quant(version)))
        if answer["ref"]:
            model = PeftModel.from_pretrained(model, str(store.get(answer["ref"]).path))
        out = model.generate(**ids, max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True) == answer["text"], \
            answer["label"]


def test_raw_prompts_and_a_reward_model_that_scores_the_answers(ops_copy: Path) -> None:
    """Issue 13: `raw` sends the prompt as typed (what a model trained on plain text continues), and a reward
    version named in the request scores every answer, base first, as `score` would."""
    from qlora_tui.core.profile.files import load_profile
    from qlora_tui.registry.score import score_answers
    from tests.conftest import ROOT, run_to_end

    reward = load_profile(ROOT / "profiles" / "demo-rlhf-reward.toml")
    reward.name, reward.train.max_steps, reward.train.save_steps, reward.data.max_rows = "rm", 8, 8, 40
    run_to_end(ops_copy, reward)
    serve = Serve(ops_copy)
    try:
        templated = serve.ask({"op": "generate", "id": 1, "refs": ["quick@1"], "prompt": PROMPT, "max_new_tokens": 8})
        raw = serve.ask({"op": "generate", "id": 2, "refs": ["quick@1"], "prompt": PROMPT, "max_new_tokens": 8,
                         "raw": True, "reward": "rm"})
        scored = serve.read_until("scores", "error")
    finally:
        serve.close()
    assert templated[-1]["raw"] is False and raw[-1]["raw"] is True  # quick was trained on chat rows: template
    store = open_store(ops_copy)
    as_typed = compare_generate(store, ["quick@1"], PROMPT, max_new_tokens=8, raw=True)
    assert [a["text"] for a in raw[-1]["answers"]] == [a.text for a in as_typed]
    assert [a["text"] for a in raw[-1]["answers"]] != [a["text"] for a in templated[-1]["answers"]]
    (line,) = of_type(scored, "scores")
    assert line["id"] == 2 and line["reward_model"] == "rm"
    expected = score_answers(store, "rm@1", PROMPT, [a["text"] for a in raw[-1]["answers"]])
    assert line["scores"] == pytest.approx(expected, abs=1e-4)
