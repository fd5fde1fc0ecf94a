"""Preference-pair loading (rlhf.data.preferences): every format, the HH split, drops and one-line errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

import rlhf.paths
from rlhf.data.io import Row, read_rows
from rlhf.data.preferences import DroppedPair, Pair, hh_messages, load_pairs, split_hh_transcript, to_pair
from rlhf.errors import UserError

HH_CHOSEN = ("\n\nHuman: What is 2 plus 2?\n\nAssistant: 2 plus 2 is 4.\n\nHuman: And times 3?"
             "\n\nAssistant: 4 times 3 is 12.")
HH_REJECTED = ("\n\nHuman: What is 2 plus 2?\n\nAssistant: 2 plus 2 is 4.\n\nHuman: And times 3?"
               "\n\nAssistant: I don't know.")
HH_DIR = Path(rlhf.paths.REPO_ROOT).parent / "shared" / "data" / "hh_rlhf"


def row(data: dict, where: str = "prefs.jsonl:1") -> Row:
    return Row(data=data, where=where)


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_hh_split_is_exact():
    prompt, answer = split_hh_transcript(HH_CHOSEN, "x", "chosen")
    assert prompt == "\n\nHuman: What is 2 plus 2?\n\nAssistant: 2 plus 2 is 4.\n\nHuman: And times 3?"
    assert answer == "4 times 3 is 12."
    pair = to_pair(row({"chosen": HH_CHOSEN, "rejected": HH_REJECTED}))
    assert pair == Pair(
        prompt=[{"role": "user", "content": "What is 2 plus 2?"},
                {"role": "assistant", "content": "2 plus 2 is 4."},
                {"role": "user", "content": "And times 3?"}],
        chosen="4 times 3 is 12.", rejected="I don't know.", margin=None)


def test_hh_joins_adjacent_turns_and_keeps_inline_markers():
    text = "\n\nHuman: hi\n\nHuman: are you there?\n\nAssistant: yes  Human: not a turn"
    assert hh_messages(text) == [{"role": "user", "content": "hi\n\nare you there?"},
                                 {"role": "assistant", "content": "yes  Human: not a turn"}]


def test_hh_prompt_mismatch_is_a_counted_drop_or_a_strict_error():
    other = HH_REJECTED.replace("And times 3?", "And times 5?")
    rows = [row({"chosen": HH_CHOSEN, "rejected": other}, "hh.jsonl:7"),
            row({"chosen": HH_CHOSEN, "rejected": HH_REJECTED}, "hh.jsonl:8")]
    pairs, dropped = load_pairs(rows)
    assert len(pairs) == 1 and dropped == {"prompt_mismatch": 1}
    with pytest.raises(UserError, match=r"^hh\.jsonl:7: pair dropped \(prompt_mismatch\)"):
        load_pairs(rows, strict=True)


def test_empty_and_identical_sides_are_dropped_and_counted():
    rows = [row({"chosen": HH_CHOSEN.rsplit("Assistant:", 1)[0] + "Assistant: ", "rejected": HH_REJECTED}),
            row({"prompt": "q", "chosen": " same ", "rejected": "same"}),
            row({"prompt": "q", "chosen": "a", "rejected": "b"})]
    pairs, dropped = load_pairs(rows)
    assert [p.chosen for p in pairs] == ["a"]
    assert dropped == {"empty": 1, "identical": 1}
    with pytest.raises(DroppedPair):
        to_pair(rows[1])


def test_pairs_with_strings_messages_and_margin():
    plain = to_pair(row({"prompt": "Add 1 and 2.", "chosen": "3", "rejected": "4", "margin": 2}))
    assert plain == Pair([{"role": "user", "content": "Add 1 and 2."}], "3", "4", 2.0)
    chat = to_pair(row({
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "chosen": [{"role": "assistant", "content": "Hello!"}],
        "rejected": {"role": "assistant", "content": "Go away."},
    }))
    assert chat.prompt[0] == {"role": "system", "content": "Be brief."}
    assert (chat.chosen, chat.rejected, chat.margin) == ("Hello!", "Go away.", None)
    assert to_pair(row({"prompt": "q", "chosen": "a", "rejected": "b", "margin": 1}), margin_key=None).margin is None


def test_deepspeed_chat_prompt_is_parsed_as_a_transcript():
    pair = to_pair(row({"prompt": "\n\nHuman: Name a fruit.\n\nAssistant: Apple.\n\nHuman: Another?\n\nAssistant:",
                        "chosen": " Pear.", "rejected": " No."}), "deepspeed_chat")
    assert pair.prompt == [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "Apple."},
                           {"role": "user", "content": "Another?"}]
    assert (pair.chosen, pair.rejected) == ("Pear.", "No.")


def test_colossal_context_joins_adjacent_turns():
    pair = to_pair(row({
        "context": [{"from": "human", "content": "Hello."}, {"from": "human", "content": "Add 2 and 2."}],
        "chosen": [{"from": "assistant", "content": "4"}],
        "rejected": [{"from": "assistant", "content": "5"}],
    }))
    assert pair == Pair([{"role": "user", "content": "Hello. Add 2 and 2."}], "4", "5", None)


def test_chat_transcripts_without_prompt_are_split_at_the_last_answer():
    conv = [{"role": "user", "content": "Hi"}]
    pair = to_pair(row({"chosen": conv + [{"role": "assistant", "content": "Hello"}],
                        "rejected": conv + [{"role": "assistant", "content": "Bye"}]}))
    assert pair == Pair(conv, "Hello", "Bye", None)


def test_missing_rejected_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"},
                                              {"prompt": "q", "chosen": "a"}])
    with pytest.raises(UserError, match=r"p\.jsonl:2: missing field 'rejected'"):
        load_pairs(read_rows(path))


def test_non_string_chosen_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": 5, "rejected": "b"}])
    with pytest.raises(UserError, match=r"p\.jsonl:1: field 'chosen' must be a string or one assistant message, got int"):
        load_pairs(read_rows(path))
    with pytest.raises(UserError, match=r"p\.jsonl:1: field 'chosen' must be an HH transcript string"):
        to_pair(Row({"chosen": 5, "rejected": HH_REJECTED}, f"{path}:1"), "hh")


def test_other_bad_records():
    with pytest.raises(UserError, match="field 'margin'"):
        to_pair(row({"prompt": "q", "chosen": "a", "rejected": "b", "margin": "big"}))
    with pytest.raises(UserError, match="must end with a user turn"):
        to_pair(row({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                     "chosen": "a", "rejected": "b"}))
    with pytest.raises(UserError, match="not an HH transcript"):
        to_pair(row({"chosen": "Assistant: hi", "rejected": "Assistant: ho"}))
    with pytest.raises(UserError, match="cannot tell the preference format"):
        to_pair(row({"text": "x"}))


def test_embedded_preferences_are_reproducible_and_parse_without_drops():
    import random

    from rlhf.data.embedded_preferences import PREFERENCES_PATH, SEED, make_preferences

    rows = read_rows(str(PREFERENCES_PATH))
    assert [r.data for r in rows] == make_preferences(random.Random(SEED))
    pairs, dropped = load_pairs(rows)
    assert len(pairs) >= 500 and dropped == {}


def test_every_real_hh_pair_parses_or_is_a_documented_drop():
    files = sorted(HH_DIR.glob("*.jsonl.gz"))
    if not files:
        pytest.skip(f"no HH data under {HH_DIR}")
    for path in files:
        rows = read_rows(str(path))
        pairs, dropped = load_pairs(rows, "hh")
        assert len(pairs) + sum(dropped.values()) == len(rows)
        assert sum(dropped.values()) <= 0.01 * len(rows), dropped
        for pair in pairs:
            assert pair.prompt and pair.prompt[-1]["role"] == "user" and pair.prompt[-1]["content"]
            assert pair.chosen and pair.rejected and pair.chosen != pair.rejected
        for r in rows:  # every drop is one the documentation names, and "empty" really is empty
            try:
                to_pair(r, "hh")
            except DroppedPair as drop:
                assert drop.reason in ("empty", "prompt_mismatch", "no_user_turn", "identical")
                if drop.reason == "empty":
                    assert any(t.rstrip().endswith("Assistant:") for t in (r.data["chosen"], r.data["rejected"]))
