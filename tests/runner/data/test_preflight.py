"""Tokenizing once: loss on responses only, truncation and drops reported, tokenizer problems said."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from qlora_tui.core.builtin import builtin_model_dir
from qlora_tui.runner.data.preflight import (
    FALLBACK_CHAT_TEMPLATE,
    IGNORE,
    prepare_tokenizer,
    tokenize_all,
    tokenize_example,
)
from qlora_tui.runner.data.rows import ConvertedData, Example
from qlora_tui.runner.errors import DataError


@pytest.fixture
def tokenizer(model_home: Path) -> Any:
    return AutoTokenizer.from_pretrained(builtin_model_dir(model_home, "builtin:tiny-llama"))


def pc(answer: str = "The opposite of hot is cold.") -> Example:
    return Example("t:1", prompt=[{"role": "user", "content": "What is the opposite of hot?"}],
                   completion=[{"role": "assistant", "content": answer}])


def test_labels_cover_the_response_and_its_end_token(tokenizer: Any) -> None:
    row = tokenize_example(tokenizer, pc())
    learned = [t for t, label in zip(row.input_ids, row.labels) if label != IGNORE]
    assert tokenizer.decode(learned).startswith("The opposite of hot is cold.<|end|>")
    assert row.labels[0] == IGNORE


def test_multi_turn_messages_learn_every_assistant_turn_only(tokenizer: Any) -> None:
    example = Example("t:1", messages=[
        {"role": "user", "content": "Count the letters in the word."},
        {"role": "assistant", "content": "Which word?"},
        {"role": "user", "content": "river"},
        {"role": "assistant", "content": "river has 5 letters."},
    ])
    row = tokenize_example(tokenizer, example)
    learned = tokenizer.decode([t for t, label in zip(row.input_ids, row.labels) if label != IGNORE])
    assert "Which word?" in learned and "river has 5 letters." in learned
    assert "Count the letters" not in learned and "<|user|>" not in learned


def test_truncation_and_drops_are_counted(tokenizer: Any) -> None:
    long = pc("word " * 200)
    data = ConvertedData([pc(), long], "alpaca", dropped={"empty response": 1})
    rows, report = tokenize_all(tokenizer, data, rows_read=3, max_seq_len=64, notes=[])
    assert report.rows_read == 3 and report.rows_used == 2 and report.rows_truncated == 1
    assert report.rows_dropped == {"empty response": 1}
    assert max(len(r.input_ids) for r in rows) == 64
    assert report.trainable_tokens == sum(1 for r in rows for label in r.labels if label != IGNORE)


def test_max_seq_len_shorter_than_every_prompt_is_an_error(tokenizer: Any) -> None:
    data = ConvertedData([pc(), pc()], "alpaca", dropped={})
    with pytest.raises(DataError, match=r"no trainable rows: all 2 rows were dropped \(2 no response tokens left "
                                        r"within max_seq_len=8\)") as err:
        tokenize_all(tokenizer, data, rows_read=2, max_seq_len=8, notes=[])
    assert "raise train.max_seq_len" in err.value.hint


def test_missing_chat_template_and_pad_token_are_handled_and_said(tokenizer: Any) -> None:
    tokenizer.chat_template = None
    tokenizer.pad_token = tokenizer.eos_token
    notes = prepare_tokenizer(tokenizer, needs_chat_template=True)
    assert tokenizer.chat_template == FALLBACK_CHAT_TEMPLATE
    assert any("no chat template" in n for n in notes)
    assert any("pad token is the eos token" in n for n in notes)
    row = tokenize_example(tokenizer, pc())
    learned = tokenizer.decode([t for t, label in zip(row.input_ids, row.labels) if label != IGNORE])
    assert learned.startswith("The opposite of hot is cold.<|end|>")  # eos is still a target
