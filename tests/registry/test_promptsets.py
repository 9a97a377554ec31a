"""Prompt sets and judging: the file format, its errors (file and line named), the checks and the similarities."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qlora_tui.registry.promptsets import PromptSetError, list_prompt_sets, load_prompt_set
from qlora_tui.registry.scoring import Expectation, chrf, judge, rouge_l, token_f1


def write_set(home: Path, name: str, rows: list[object]) -> Path:
    path = home / "prompts" / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_set_is_read_with_its_settings_checks_and_chat_turns(tmp_path: Path) -> None:
    write_set(tmp_path, "smoke", [
        {"settings": {"max_new_tokens": 12, "system": "Be brief.", "similarity": "chrf", "threshold": 0.3}},
        {"id": "even", "prompt": "Is 14 even or odd?", "contains": "even", "not_contains": ["odd"]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                      {"role": "user", "content": "Sort: 3, 1"}], "reference": "1, 3"},
        {"prompt": "Say anything."},
    ])
    assert list_prompt_sets(tmp_path) == ["smoke"]
    prompt_set = load_prompt_set(tmp_path, "smoke")
    assert prompt_set.decoding.max_new_tokens == 12 and prompt_set.decoding.temperature == 0
    assert [c.id for c in prompt_set.cases] == ["even", "2", "3"] and prompt_set.scored == 2
    assert prompt_set.cases[0].messages == [{"role": "system", "content": "Be brief."},
                                            {"role": "user", "content": "Is 14 even or odd?"}]
    assert prompt_set.cases[1].text == "Sort: 3, 1" and prompt_set.cases[1].expect.similarity == "chrf"
    assert prompt_set.cases[2].expect.empty
    same = load_prompt_set(tmp_path, str(tmp_path / "prompts" / "smoke.jsonl"))
    assert same.content_hash == prompt_set.content_hash
    write_set(tmp_path, "smoke", [{"prompt": "Is 14 even or odd?", "contains": "even"}])
    assert load_prompt_set(tmp_path, "smoke").content_hash != prompt_set.content_hash


@pytest.mark.parametrize(("rows", "message"), [
    ([{"prompt": "a", "contain": "x"}], "smoke.jsonl:1: unknown key(s) contain"),
    ([{"prompt": "a"}, {"settings": {}}], "smoke.jsonl:2: the settings line must be the first line"),
    ([{"settings": {"temperature": -1}}, {"prompt": "a"}], "temperature >= 0"),
    ([{"prompt": "a", "regex": "("}], "smoke.jsonl:1: regex /(/ does not compile"),
    ([{"prompt": "a", "reference": "b", "similarity": "bleu"}], "similarity 'bleu': use one of token_f1, chrf"),
    ([{"id": "x", "prompt": "a"}, {"id": "x", "prompt": "b"}], "smoke.jsonl:2: id 'x' is used twice"),
    ([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}],
     "the last message must be the user's"),
    ([{"prompt": "a", "messages": []}], "either prompt (a string) or messages"),
    ([], "no prompts in the set"),
])
def test_a_bad_set_is_refused_naming_file_and_line(tmp_path: Path, rows: list[object], message: str) -> None:
    write_set(tmp_path, "smoke", rows)
    with pytest.raises(PromptSetError, match=None) as caught:
        load_prompt_set(tmp_path, "smoke")
    assert message in caught.value.message


def test_a_missing_set_names_the_sets_there(tmp_path: Path) -> None:
    write_set(tmp_path, "smoke", [{"prompt": "a"}])
    with pytest.raises(PromptSetError) as caught:
        load_prompt_set(tmp_path, "smokey")
    assert "no prompt set of that name" in caught.value.message and caught.value.hint == "sets here: smoke"


def test_checks_pass_only_when_every_one_holds() -> None:
    expect = Expectation(contains=("even",), not_contains=("odd",), regex=(r"\b14\b",))
    assert judge("14 is even.", expect).passed is True
    verdict = judge("14 is odd, not even", expect)
    assert verdict.passed is False and verdict.failed == ["contains 'odd'"]
    assert judge("Seven is EVEN", expect).failed == ["does not match /\\b14\\b/"]
    assert judge("  Paris ", Expectation(exact="paris")).passed is True
    assert judge("Paris!", Expectation(exact="paris")).passed is False
    assert judge("anything", Expectation()).passed is None


def test_similarities_have_their_known_values() -> None:
    assert token_f1("The cat sat", "a cat sat down") == pytest.approx(2 * (2 / 2) * (2 / 3) / (1 + 2 / 3))
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0
    assert chrf("abc", "abc") == 1.0 and chrf("abc", "xyz") == 0.0 and 0 < chrf("kitten", "sitting") < 1
    assert rouge_l("the cat sat on the mat", "the cat on the mat") == pytest.approx(6 / 7)  # articles dropped
    verdict = judge("12, 20, 21", Expectation(reference="12, 20, 21", similarity="token_f1", threshold=0.9))
    assert verdict.passed is True and verdict.score == 1.0
    low = judge("21", Expectation(reference="12, 20, 21", similarity="token_f1", threshold=0.9))
    assert low.passed is False and low.failed == [f"token_f1 {low.score:.2f} < 0.9 against the reference"]
