"""Loading records (rlhf.data.io) and turning them into conversations (rlhf.data.formats)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from rlhf.data.formats import detect_format, to_messages, to_prompt_messages
from rlhf.data.io import Row, read_rows, write_jsonl
from rlhf.errors import UserError

RECORDS = [{"instruction": "Add 2 and 3.", "input": "", "output": "5"}, {"instruction": "Reverse", "input": "ab",
                                                                         "output": "ba"}]


def _write(path: Path, text: str) -> str:
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("name", ["x.jsonl", "x.jsonl.gz"])
def test_reads_jsonl_with_line_numbers(tmp_path: Path, name: str) -> None:
    source = _write(tmp_path / name, json.dumps(RECORDS[0]) + "\n\n" + json.dumps(RECORDS[1]) + "\n")
    rows = read_rows(source)
    assert [r.data for r in rows] == RECORDS
    assert [r.where for r in rows] == [f"{source}:1", f"{source}:3"]  # the blank line 2 is skipped


@pytest.mark.parametrize("name", ["x.json", "x.json.gz"])
def test_reads_json_list_with_indices(tmp_path: Path, name: str) -> None:
    source = _write(tmp_path / name, json.dumps(RECORDS))
    rows = read_rows(source)
    assert [r.data for r in rows] == RECORDS
    assert rows[1].where == f"{source}[1]"


def test_reads_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = str(tmp_path / "x.parquet")
    pq.write_table(pa.Table.from_pylist(RECORDS), source)
    assert [r.data for r in read_rows(source)] == RECORDS


def test_write_jsonl_round_trips_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.jsonl"
    write_jsonl(target, RECORDS)
    assert [r.data for r in read_rows(str(target))] == RECORDS
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.jsonl"]


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nope\.jsonl: no such file"):
        read_rows(str(tmp_path / "nope.jsonl"))


def test_bad_json_line_names_the_line(tmp_path: Path) -> None:
    source = _write(tmp_path / "x.jsonl", json.dumps(RECORDS[0]) + "\n{oops\n")
    with pytest.raises(UserError, match=r"x\.jsonl:2: not valid JSON"):
        read_rows(source)


def test_row_that_is_not_an_object(tmp_path: Path) -> None:
    source = _write(tmp_path / "x.jsonl", json.dumps(RECORDS[0]) + "\n[1, 2]\n")
    with pytest.raises(UserError, match=r"x\.jsonl:2: expected a JSON object, got list"):
        read_rows(source)
    source = _write(tmp_path / "y.json", json.dumps({"a": 1}))
    with pytest.raises(UserError, match=r"y\.json: expected a JSON list of objects"):
        read_rows(source)


def test_empty_file_has_no_records(tmp_path: Path) -> None:
    source = _write(tmp_path / "x.jsonl", "\n\n")
    with pytest.raises(UserError, match=r"x\.jsonl: no records"):
        read_rows(source)
    with pytest.raises(UserError, match=r"y\.json: no records"):
        read_rows(_write(tmp_path / "y.json", "[]"))


def test_hub_name_offline_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UserError, match=r"^no-such-org/no-such-dataset: not a local file"):
        read_rows("no-such-org/no-such-dataset")


def _two_config_dataset(root: Path) -> Path:
    """A dataset folder laid out as on the hub: two configs declared in the card, one without a train split
    (as alpaca_farm's instructions config: sft, preference, unlabeled, val)."""
    (root / "instructions").mkdir(parents=True)
    (root / "eval").mkdir()
    _write(root / "instructions" / "sft.jsonl", json.dumps(RECORDS[0]) + "\n")
    _write(root / "instructions" / "unlabeled.jsonl", json.dumps(RECORDS[1]) + "\n")
    _write(root / "eval" / "eval.json", json.dumps(RECORDS))
    (root / "README.md").write_text(
        "---\nconfigs:\n"
        "- config_name: instructions\n  data_files:\n"
        "  - {split: sft, path: instructions/sft.jsonl}\n  - {split: unlabeled, path: instructions/unlabeled.jsonl}\n"
        "- config_name: evaluation\n  data_files:\n  - {split: eval, path: eval/eval.json}\n"
        "---\n# two configs\n", encoding="utf-8")
    return root


def test_dataset_folder_config_and_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    folder = str(_two_config_dataset(tmp_path / "ds"))
    rows = read_rows(folder, split="unlabeled", config="instructions")
    assert [r.data for r in rows] == [RECORDS[1]]
    assert rows[0].where == f"{folder}[instructions:unlabeled][0]"
    assert [r.data for r in read_rows(folder, split="eval", config="evaluation")] == RECORDS
    with pytest.raises(UserError, match=r"config 'instructions', split 'train'"):  # no train split: say which
        read_rows(folder, config="instructions")
    with pytest.raises(UserError, match=r"config 'nope'"):
        read_rows(folder, split="sft", config="nope")


def test_a_single_file_takes_no_config_or_split(tmp_path: Path) -> None:
    source = _write(tmp_path / "x.json", json.dumps(RECORDS))
    with pytest.raises(UserError, match=r"x\.json: a single data file has no config or split"):
        read_rows(source, split="test")


def test_hf_file_url_picks_the_builder_by_suffix(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"^hf://datasets/o/d/x\.csv: unsupported data file"):
        read_rows("hf://datasets/o/d/x.csv")


def test_alpaca_with_and_without_input() -> None:
    row = Row({"instruction": "Reverse the word.", "input": "abc", "output": "cba"}, "f.jsonl:1")
    assert detect_format(row) == "alpaca"
    user, answer = to_messages(row)
    assert user["role"] == "user" and user["content"] == "Reverse the word.\n\nabc"
    assert (user["instruction"], user["input"]) == ("Reverse the word.", "abc")
    assert answer == {"role": "assistant", "content": "cba"}
    plain = to_messages(Row({"instruction": "Say hi.", "output": "hi"}, "f.jsonl:2"))
    assert plain[0]["content"] == "Say hi." and plain[0]["input"] == ""


def test_sharegpt_with_system_and_leading_gpt_turn_dropped() -> None:
    row = Row({"system": "Be brief.", "conversations": [
        {"from": "gpt", "value": "stray"}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
        {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Bye!"}]}, "c.json[0]")
    assert to_messages(row) == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Bye!"}]
    assert to_prompt_messages(row)[-1] == {"role": "user", "content": "Bye"}
    assert len(to_prompt_messages(row)) == 4


def test_messages_and_prompt_completion() -> None:
    chat = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    assert to_messages(Row({"messages": chat}, "m:1")) == chat
    assert to_messages(Row({"prompt": "Q", "completion": "A"}, "p:1")) == chat
    assert to_prompt_messages(Row({"prompt": "Q"}, "p:2")) == chat[:1]
    assert to_prompt_messages(Row({"instruction": "Q"}, "a:1"))[0]["content"] == "Q"


def test_missing_or_wrong_fields_name_the_row_and_field() -> None:
    with pytest.raises(UserError, match=r"^a\.jsonl:7: missing field 'output'$"):
        to_messages(Row({"instruction": "x"}, "a.jsonl:7"))
    with pytest.raises(UserError, match=r"^a\.jsonl:8: field 'instruction' must be a str, got int$"):
        to_messages(Row({"instruction": 3, "output": "x"}, "a.jsonl:8"))
    with pytest.raises(UserError, match=r"^p:1: missing field 'completion'$"):
        to_messages(Row({"prompt": "x"}, "p:1"))
    with pytest.raises(UserError, match=r"^s:1: conversations\[0\] field 'from' is 'robot'"):
        to_messages(Row({"conversations": [{"from": "robot", "value": "x"}]}, "s:1"))
    with pytest.raises(UserError, match=r"^m:1: message 1 has role 'user'; expected 'assistant'"):
        to_messages(Row({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, "m:1"))
    with pytest.raises(UserError, match=r"^u:1: cannot tell the record format"):
        to_messages(Row({"text": "x"}, "u:1"))
    with pytest.raises(UserError, match=r"^m:2: the conversation has no assistant turn$"):
        to_messages(Row({"messages": [{"role": "user", "content": "a"}]}, "m:2"))
