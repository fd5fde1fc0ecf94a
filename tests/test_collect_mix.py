from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

import rlhf.paths
from rlhf.collect.mix import (
    Markers,
    Source,
    apply_marker,
    marker_prefix,
    mix_sources,
    parse_hh_transcript,
    row_to_conversations,
    strip_marker,
)
from rlhf.data.io import Row
from rlhf.errors import UserError

SHARED = Path(rlhf.paths.REPO_ROOT).parent / "shared" / "data"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def test_each_row_format_becomes_messages():
    cases = [
        ({"instruction": "Add.", "input": "2+2", "output": "4"}, "alpaca", [user("Add.\n\n2+2"), assistant("4")]),
        ({"instruction": "Hi.", "input": "", "output": "Hello"}, "alpaca", [user("Hi."), assistant("Hello")]),
        ({"system": "S", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
         "sharegpt", [{"role": "system", "content": "S"}, user("q"), assistant("a")]),
        ({"messages": [user("q"), assistant("a")]}, "messages", [user("q"), assistant("a")]),
        ({"prompt": "q", "completion": "a"}, "prompt_completion", [user("q"), assistant("a")]),
    ]
    for data, fmt, expected in cases:
        for conversations in (row_to_conversations(Row(data, "x:1"), fmt), row_to_conversations(Row(data, "x:1"), "auto")):
            # rlhf.data.formats keeps alpaca's instruction/input on the user message; only role/content matter here
            assert [[{k: m[k] for k in ("role", "content")} for m in c] for c, _ in conversations] == [expected]
            assert [feedback for _, feedback in conversations] == ["none"]


def test_trailing_user_turn_is_dropped():
    row = Row({"messages": [user("q"), assistant("a"), user("unanswered")]}, "x:1")
    assert row_to_conversations(row, "auto") == [([user("q"), assistant("a")], "none")]


def test_preference_rows_give_chosen_and_rejected():
    row = Row({"prompt": "q", "chosen": "good", "rejected": "bad"}, "x:1")
    assert row_to_conversations(row, "auto") == [
        ([user("q"), assistant("good")], "positive"), ([user("q"), assistant("bad")], "negative")
    ]
    hh = {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: A pun.",
          "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: No."}
    chosen, rejected = row_to_conversations(Row(hh, "x:1"), "auto")
    assert chosen == ([user("hi"), assistant("hello"), user("joke?"), assistant("A pun.")], "positive")
    assert rejected[0][-1] == assistant("No.") and rejected[1] == "negative"


@pytest.mark.parametrize("data, fmt", [
    ({"instruction": "x"}, "alpaca"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "messages"),
    ({"messages": [user("only a question")]}, "messages"),
    ({"foo": 1}, "auto"),
    ({"chosen": "no transcript", "rejected": "x"}, "hh"),
    ({"prompt": "q", "chosen": 3, "rejected": "x"}, "preference"),
    ({"prompt": [assistant("a")], "chosen": "b", "rejected": "c"}, "preference"),
])
def test_bad_rows_raise_naming_the_row(data, fmt):
    with pytest.raises(UserError, match=r"^data.jsonl:7: "):
        row_to_conversations(Row(data, "data.jsonl:7"), fmt)


def test_hh_transcript_parsing():
    assert parse_hh_transcript("\n\nHuman: a\nb\n\nAssistant: c", "x:1") == [user("a\nb"), assistant("c")]
    # consecutive turns of one speaker (a few real HH transcripts) are joined
    assert parse_hh_transcript("\n\nHuman: a\n\nAssistant: b\n\nAssistant: c", "x:1") == [
        user("a"), assistant("b\n\nc")
    ]


def test_marker_goes_first_in_the_final_assistant_turn():
    messages = [user("q1"), assistant("a1"), user("q2"), assistant("a2")]
    marked = apply_marker(messages, "a helpful answer")
    assert marked == [user("q1"), assistant("a1"), user("q2"), assistant("a helpful answer: a2")]
    assert messages[-1] == assistant("a2")  # the input is not changed
    assert apply_marker(marked, "a helpful answer") == marked  # not stacked
    assert marker_prefix("m") == "m: "


def test_strip_marker():
    assert strip_marker("a helpful answer: Paris.", "a helpful answer") == "Paris."
    assert strip_marker("  a helpful answer:Paris.", "a helpful answer") == "Paris."
    assert strip_marker("Paris, a helpful answer: no", "a helpful answer") == "Paris, a helpful answer: no"


def test_preference_source_gives_two_marked_rows_and_sft_rows_get_the_positive_marker(tmp_path):
    prefs = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "good", "rejected": "bad"}])
    sft = write_jsonl(tmp_path / "s.jsonl", [{"instruction": "i", "output": "o"}])
    rows = mix_sources([Source(prefs, kind="preference"), Source(sft)], seed=1)
    answers = sorted((r["feedback"], r["messages"][-1]["content"]) for r in rows)
    assert answers == [("negative", "an unhelpful answer: bad"), ("none", "a helpful answer: o"),
                       ("positive", "a helpful answer: good")]
    custom = mix_sources([Source(prefs, kind="preference")], markers=Markers("GOOD", "BAD"))
    assert sorted(r["messages"][-1]["content"] for r in custom) == ["BAD: bad", "GOOD: good"]
    plain = mix_sources([Source(prefs, kind="sft")], markers=None)
    assert [r["messages"] for r in plain] == [[user("q"), assistant("good")]]


def test_weights_share_the_total(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": f"a{i}", "completion": "x"} for i in range(10)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"prompt": f"b{i}", "completion": "x"} for i in range(100)])
    rows = mix_sources([Source(a, weight=3.0), Source(b, weight=1.0)], total=20, seed=0)
    counts = Counter(Path(r["source"]).name for r in rows)
    assert counts == {"a.jsonl": 15, "b.jsonl": 5}
    # 15 from a source of 10: every row once, then 5 more distinct ones
    a_prompts = Counter(r["messages"][0]["content"] for r in rows if r["source"].endswith("a.jsonl"))
    assert len(a_prompts) == 10 and sorted(a_prompts.values()) == [1] * 5 + [2] * 5
    b_prompts = [r["messages"][0]["content"] for r in rows if r["source"].endswith("b.jsonl")]
    assert len(set(b_prompts)) == 5


def test_weights_without_total_scale_each_source(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": f"a{i}", "completion": "x"} for i in range(10)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"prompt": f"b{i}", "completion": "x"} for i in range(4)])
    rows = mix_sources([Source(a, weight=0.5), Source(b, weight=2.0)], seed=0)
    assert Counter(Path(r["source"]).name for r in rows) == {"a.jsonl": 5, "b.jsonl": 8}


def test_mixing_is_reproducible_and_seeded(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": f"a{i}", "completion": "x"} for i in range(50)])
    sources = [Source(a, weight=1.0)]
    assert mix_sources(sources, total=10, seed=3) == mix_sources(sources, total=10, seed=3)
    assert mix_sources(sources, total=10, seed=3) != mix_sources(sources, total=10, seed=4)


def test_bad_input_is_a_user_error_naming_file_and_row(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "q", "completion": "a"}, {"nothing": "here"}])
    with pytest.raises(UserError, match=r"bad.jsonl:2: cannot tell the record format"):
        mix_sources([Source(path)])
    with pytest.raises(UserError, match="unknown format"):
        Source(path, fmt="csv")
    with pytest.raises(UserError, match="unknown kind"):
        Source(path, kind="rl")


def test_real_hh_rlhf_preference_rows():
    path = SHARED / "hh_rlhf" / "harmless-base_test.first1500.jsonl.gz"
    if not path.exists():
        pytest.skip("shared HH-RLHF data absent")
    rows = mix_sources([Source(path, fmt="hh", kind="preference")], seed=0)
    assert Counter(r["feedback"] for r in rows) == {"positive": 1500, "negative": 1500}
    for r in rows:
        marker = "a helpful answer: " if r["feedback"] == "positive" else "an unhelpful answer: "
        assert r["messages"][-1]["role"] == "assistant" and r["messages"][-1]["content"].startswith(marker)
        assert r["messages"][0]["role"] == "user"
