"""Reading data: every format, and errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qlora_tui.core.profile.schema import DataSection
from qlora_tui.runner.data.rows import data_fingerprint, read_rows, to_sft_examples
from qlora_tui.runner.errors import DataError


def jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def convert(path: Path, fmt: str = "auto", **kw: object) -> object:
    spec = DataSection(path=str(path), format=fmt, **kw)  # type: ignore[arg-type]
    return to_sft_examples(read_rows(spec), spec.format, spec.system_prompt)


def test_builtin_demo_set_is_alpaca() -> None:
    raw = read_rows(DataSection(path="builtin:demo-instructions"))
    data = to_sft_examples(raw, "auto")
    assert data.format == "alpaca" and len(data.examples) == 320
    first = data.examples[0]
    assert first.prompt[-1]["role"] == "user" and first.completion[0]["role"] == "assistant"


@pytest.mark.parametrize(("row", "fmt"), [
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}, "messages"),
    ({"instruction": "Say hi", "input": "", "output": "hi"}, "alpaca"),
    ({"instruction": "Say hi", "context": "ctx", "response": "hi", "category": "open_qa"}, "dolly"),
    ({"prompt": "Say hi", "completion": "hi"}, "prompt_completion"),
    ({"text": "plain text to learn"}, "text"),
])
def test_formats_are_detected(tmp_path: Path, row: dict[str, object], fmt: str) -> None:
    data = convert(jsonl(tmp_path / "d.jsonl", [row, row]))
    assert data.format == fmt and len(data.examples) == 2


def test_dolly_context_joins_the_instruction(tmp_path: Path) -> None:
    data = convert(jsonl(tmp_path / "d.jsonl", [{"instruction": "Q", "context": "C", "response": "A"}]),
                   system_prompt="Be brief.")
    example = data.examples[0]
    assert example.prompt == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q\n\nC"}]


def test_csv_json_and_parquet(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text('instruction,input,output\n"Add, please",1 and 2,3\n')
    assert convert(tmp_path / "d.csv").examples[0].prompt[-1]["content"] == "Add, please\n\n1 and 2"
    (tmp_path / "d.json").write_text(json.dumps({"data": [{"prompt": "p", "completion": "c"}]}))
    assert convert(tmp_path / "d.json").format == "prompt_completion"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["one", "two"]}), tmp_path / "d.parquet")
    assert len(convert(tmp_path / "d.parquet").examples) == 2


def test_malformed_jsonl_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": "broken"\n')
    with pytest.raises(DataError, match=rf"^{path}:3: not valid JSON"):
        convert(path)


def test_rows_lacking_columns_name_line_and_columns(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", [{"instruction": "a", "output": "b"}, {"instruction": "c"}])
    with pytest.raises(DataError, match=rf"^{path}:2: alpaca row lacks 'output'; alpaca rows have instruction, output"):
        convert(path)


def test_declared_format_checks_every_row(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", [{"text": "x"}])
    with pytest.raises(DataError, match=r":1: messages row lacks 'messages'"):
        convert(path, "messages")


def test_unknown_columns_and_missing_or_empty_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"cannot tell the data format from the columns foo"):
        convert(jsonl(tmp_path / "d.jsonl", [{"foo": 1}]))
    with pytest.raises(DataError, match=r"no such file"):
        convert(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match=r"the data set is empty"):
        convert(tmp_path / "empty.jsonl")


def test_bad_message_roles_and_types(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "human", "content": "hi"}]}])
    with pytest.raises(DataError, match=r":1: messages\[0\].role must be one of system, user, assistant"):
        convert(path)
    path = jsonl(tmp_path / "e.jsonl", [{"instruction": "a", "output": 5}])
    with pytest.raises(DataError, match=r":1: 'output' must be text, got int"):
        convert(path)


def test_empty_responses_are_dropped_and_counted(tmp_path: Path) -> None:
    data = convert(jsonl(tmp_path / "d.jsonl", [{"instruction": "a", "output": "b"},
                                                 {"instruction": "a", "output": "  "}]))
    assert len(data.examples) == 1 and data.dropped == {"empty response": 1}


def test_sft_refuses_preference_rows(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match=r"look like 'preference' data"):
        convert(path)


def test_fingerprint_follows_content_and_row_selection(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", [{"text": "a"}, {"text": "b"}])
    spec = DataSection(path=str(path))
    first = data_fingerprint(read_rows(spec), spec)
    assert data_fingerprint(read_rows(spec), spec) == first
    limited = DataSection(path=str(path), max_rows=1)
    assert data_fingerprint(read_rows(limited), limited) != first
    jsonl(path, [{"text": "a"}, {"text": "c"}])
    assert data_fingerprint(read_rows(spec), spec) != first


def test_text_field_names_the_column_of_plain_text(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "quotes.jsonl", [{"quote": "Be yourself.", "author": "Wilde"}])
    data = convert(path, "text", text_field="quote")
    assert data.format == "text" and data.examples[0].text == "Be yourself."
    with pytest.raises(DataError, match=r"quotes.jsonl:1: row lacks 'body' \(data.text_field\); it has author, quote"):
        convert(path, "text", text_field="body")


def test_sharegpt_rows_are_detected_and_become_conversations(tmp_path: Path) -> None:
    """LLaMA-Factory / Axolotl ShareGPT rows: conversations of from/value, roles human, gpt, system."""
    rows = [{"conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hi"},
                               {"from": "gpt", "value": "Hello!"}, {"from": "human", "value": "Bye"},
                               {"from": "gpt", "value": "See you."}]},
            {"system": "Be brief.",
             "conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]},
            {"conversations": [{"from": "human", "value": "no answer"}, {"from": "gpt", "value": "  "}]}]
    data = convert(jsonl(tmp_path / "d.jsonl", rows))
    assert data.format == "sharegpt" and len(data.examples) == 2
    assert data.dropped == {"no assistant turn with text": 1}
    assert [t["role"] for t in data.examples[0].messages] == ["system", "user", "assistant", "user", "assistant"]
    assert data.examples[1].messages == [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]


def test_sharegpt_problems_name_the_line_and_the_roles(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", [{"conversations": [{"from": "human", "value": "hi"}]},
                                        {"conversations": [{"from": "bot", "value": "hi"}]}])
    with pytest.raises(DataError) as err:
        convert(path)
    assert err.value.message == (f"{path}:2: conversations[0].from must be one of human, gpt, system; got 'bot'")
    path = jsonl(tmp_path / "e.jsonl", [{"conversations": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(DataError, match=r"e.jsonl:1: conversations\[0\] must be an object with \"from\" and \"value\""):
        convert(path, "sharegpt")


def test_a_data_path_is_checked_as_the_run_will_read_it(tmp_path: Path) -> None:
    from qlora_tui.core.errors import ProfileError
    from qlora_tui.core.profile.files import checked_data_path

    jsonl(tmp_path / "rows.jsonl", [{"text": "x"}])
    assert checked_data_path("rows.jsonl", tmp_path) == str(tmp_path / "rows.jsonl")
    assert checked_data_path("builtin:demo-instructions", tmp_path) == "builtin:demo-instructions"
    assert checked_data_path("someone/a-hub-set", tmp_path) == "someone/a-hub-set"
    with pytest.raises(ProfileError) as err:
        checked_data_path("missing.jsonl", tmp_path)
    assert err.value.message == f"data.path: {tmp_path / 'missing.jsonl'}: no such file"
    assert err.value.hint == f"a relative path is taken from {tmp_path}"
    with pytest.raises(ProfileError, match="no such file"):
        checked_data_path(str(tmp_path / "gone.jsonl"), Path("/"))


def test_a_text_set_without_a_text_column_names_data_text_field_in_its_hint(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "quotes.jsonl", [{"quote": "Be yourself.", "author": "Wilde"}])
    with pytest.raises(DataError) as err:
        convert(path, "text")
    assert err.value.message == f"{path}:1: text row lacks 'text'; text rows have text"
    assert err.value.hint.startswith('set data.text_field to the column that holds the text (e.g. data.text_field = '
                                     '"quote")') and "this row has: quote, author" in err.value.hint
    with pytest.raises(DataError) as err:
        convert(path, "text", text_field="body")
    assert "data.text_field" in err.value.hint
    with pytest.raises(DataError) as err:
        convert(path)  # auto cannot tell: the hint says how to name a text column
    assert 'data.format = "text" and data.text_field = "COLUMN"' in err.value.hint
