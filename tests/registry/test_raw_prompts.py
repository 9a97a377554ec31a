"""Which prompt form a version gets by default: as typed for one trained on plain text, else the chat template."""

from __future__ import annotations

from pathlib import Path

from qlora_tui.registry.compare import prompt_text, raw_by_default, trained_on_text
from qlora_tui.registry.records import AdapterVersion


def version(name: str, data_format: str | None, profile: str = "") -> AdapterVersion:
    return AdapterVersion(id=hash(name) % 1000, name=name, number=1, kind="adapter", created=0.0,
                          base_model="base", base_revision="r", method="sft", profile=profile, dataset="d",
                          dataset_fingerprint="f", metrics={}, parent_id=None, parent_ref="", library_versions={},
                          size_bytes=0, run_id="", path=Path("/nowhere"),
                          extra={"data_format": data_format} if data_format else {})


def test_text_trained_versions_are_prompted_raw_and_a_mix_says_why_it_is_not() -> None:
    quotes, chat = version("quotes", "text"), version("chat", "alpaca")
    legacy = version("legacy", None, profile='[data]\npath = "q.jsonl"\nformat = "text"\n')  # before data_format
    assert [trained_on_text(v) for v in (quotes, chat, legacy)] == [True, False, True]
    assert raw_by_default([quotes, legacy]) == (True, "")
    assert raw_by_default([chat]) == (False, "")
    raw, why = raw_by_default([quotes, chat])
    assert raw is False and why.startswith("quotes@1 was trained on plain text, the others on chat rows")
    assert trained_on_text(version("broken", None, profile="[data\n")) is False


def test_a_raw_prompt_is_sent_as_typed(model_home: Path) -> None:
    from transformers import AutoTokenizer

    from tests.registry.conftest import tiny_dir

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir(model_home))
    templated = prompt_text(tokenizer, "Be yourself;")
    assert templated != "Be yourself;" and "Be yourself;" in templated  # the built-in model has a chat template
    assert prompt_text(tokenizer, "Be yourself;", raw=True) == "Be yourself;"
