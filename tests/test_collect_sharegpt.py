from __future__ import annotations

import json
from pathlib import Path

import pytest

import rlhf.paths
from rlhf.collect.sharegpt import (
    clean_conversations,
    detect_language,
    html_to_markdown,
    split_long_conversation,
)

SHARED = Path(rlhf.paths.REPO_ROOT).parent / "shared" / "data"


def count_words(text: str) -> int:
    return len(text.split())


def conv(conv_id: str, *turns: tuple[str, str], **extra) -> dict:
    return {"id": conv_id, "conversations": [{"from": r, "value": v} for r, v in turns], **extra}


Q1 = ("human", "What is the capital of France?")
A1 = ("gpt", "The capital of France is Paris.")
Q2 = ("human", "And what about Germany?")
A2 = ("gpt", "The capital of Germany is Berlin.")


def clean(convs, max_length=1000, lang=None, **kwargs):
    return clean_conversations(convs, count_words, max_length, lang, turn_overhead=0, **kwargs)


def test_a_clean_conversation_is_kept_unchanged():
    c = conv("a", Q1, A1, Q2, A2, system="Be brief.")
    assert clean([c]) == ([c], {})


def test_html_becomes_markdown_with_code_blocks_kept():
    html = (
        '<div class="markdown prose"><p>Use <strong>this</strong> helper:</p><pre><div class="bg-black">'
        '<div class="flex"><span>python</span><button>Copy code</button></div><div>'
        '<code class="language-python">def add_one(x_value):\n    return x_value + 1\n</code></div></div></pre>'
        "<ol><li>call it</li><li>print it</li></ol></div>"
    )
    assert html_to_markdown(html) == (
        "Use **this** helper:\n\n```python\ndef add_one(x_value):\n    return x_value + 1\n```\n\n1. call it\n2. print it"
    )
    # Plain text, even with angle brackets and markdown, is left alone.
    assert html_to_markdown("  if a<b and c>d: use *args and snake_case  ") == (
        "if a<b and c>d: use *args and snake_case"
    )


def test_html_is_converted_inside_conversations():
    kept, _ = clean([conv("h", Q1, ("gpt", "<p>It is <em>Paris</em>.</p>"))])
    assert kept[0]["conversations"][1]["value"] == "It is *Paris*."


def test_too_short_conversations_are_dropped():
    kept, drops = clean([conv("one_turn", Q1), conv("tiny", ("human", "Hi"), ("gpt", "Hey")), conv("none")])
    assert kept == [] and drops == {"too_short": 3}


def test_empty_turn_cuts_the_conversation():
    kept, drops = clean([conv("e", Q1, A1, Q2, ("gpt", "   ")), conv("f", Q1, ("gpt", "<div></div>"))])
    assert [c["conversations"] for c in kept] == [conv("e", Q1, A1)["conversations"]]
    assert drops == {"empty": 1, "truncated_at_empty_turn": 1, "trimmed_trailing_user": 1}


def test_leading_assistant_turn_is_dropped():
    kept, drops = clean([conv("l", ("gpt", "Hello! How can I help?"), Q1, A1)])
    assert kept == [conv("l", Q1, A1)] and drops == {"trimmed_leading_assistant": 1}


def test_trailing_user_turn_is_dropped():
    kept, drops = clean([conv("t", Q1, A1, Q2)])
    assert kept == [conv("t", Q1, A1)] and drops == {"trimmed_trailing_user": 1}


def test_roles_must_alternate():
    kept, drops = clean([conv("r", Q1, Q2, A1, A2)])
    assert kept == [] and drops == {"roles_not_alternating": 1}


def test_user_assistant_and_system_turn_names_are_normalized():
    c = {"id": 7, "conversations": [{"from": "system", "value": "Be brief."}, {"from": "user", "value": Q1[1]},
                                    {"from": "assistant", "value": A1[1]}]}
    assert clean([c])[0] == [conv("7", Q1, A1, system="Be brief.")]


def test_malformed_conversations_are_counted():
    bad = [{"conversations": []}, {"id": "x"}, conv("r", ("robot", "beep"), A1), "not a dict"]
    assert clean(bad) == ([], {"malformed": 4})


def test_dedupe_by_id_and_by_first_exchange():
    kept, drops = clean([conv("a", Q1, A1), conv("a", Q2, A2), conv("b", Q1, A1, Q2, A2), conv("c", Q2, A2)])
    assert [c["id"] for c in kept] == ["a", "c"]
    assert drops == {"duplicate_id": 1, "duplicate_first_exchange": 1}


def test_blocked_words_are_opt_in():
    c = conv("o", ("human", "Are you ChatGPT by OpenAI?"), ("gpt", "No, I am a different assistant."))
    assert clean([c])[0] == [c]
    assert clean([c], blocked_words=("openai",)) == ([], {"blocked_word": 1})


def test_language_filter():
    french = conv("fr", ("human", "Quelle est la capitale de la France ?"), ("gpt", "La capitale est Paris."))
    chinese = conv("zh", ("human", "法国的首都是哪里？"), ("gpt", "法国的首都是巴黎。"))
    english = conv("en", Q1, A1)
    kept, drops = clean([french, chinese, english], lang="en")
    assert [c["id"] for c in kept] == ["en"] and drops == {"language": 2}
    assert [c["id"] for c in clean([french, chinese, english], lang="zh")[0]] == ["zh"]


@pytest.mark.parametrize("text, expected", [
    ("Who are you? I am a helpful assistant.", "en"),
    ("Ich bin ein Student und wohne in Berlin.", "de"),
    ("Quelle est la capitale de la France ? La capitale est Paris.", "fr"),
    ("你好，请问你是谁？", "zh"),
    ("こんにちは、あなたは誰ですか", "ja"),
    ("안녕하세요, 반갑습니다", "ko"),
    ("Привет, как дела?", "ru"),
    ("12345 !!!", "unknown"),
])
def test_detect_language(text, expected):
    assert detect_language(text) == expected


def test_long_conversation_is_split_at_exchanges():
    # word counts: Q1 6, A1 6, Q2 4, A2 6 -> exchanges of 12 and 10 words
    c = conv("s", Q1, A1, Q2, A2, Q1, A1, system="S")
    chunks, dropped = split_long_conversation(c, count_words, max_length=22, turn_overhead=0)
    assert dropped == 0
    assert [(x["id"], x["system"], x["conversations"]) for x in chunks] == [
        ("s_0", "S", conv("", Q1, A1, Q2, A2)["conversations"]),
        ("s_1", "S", conv("", Q1, A1)["conversations"]),
    ]
    # turn_overhead counts per turn: exchanges of 16, 14, 16 and any two exceed 17, so each is its own chunk
    chunks, _ = split_long_conversation(c, count_words, max_length=17, turn_overhead=2)
    assert [x["id"] for x in chunks] == ["s_0", "s_1", "s_2"]


def test_exchange_longer_than_max_length_is_dropped():
    c = conv("x", Q1, A1, Q2, A2)
    chunks, dropped = split_long_conversation(c, count_words, max_length=11, turn_overhead=0)
    assert dropped == 1 and [(x["id"], x["conversations"]) for x in chunks] == [("x_0", conv("", Q2, A2)["conversations"])]
    story = conv("y", ("human", "Please tell me a long story about dragons."), ("gpt", "Once upon a time, dragons."))
    kept, drops = clean([c, story], max_length=10)  # story: 8 + 5 words
    assert [x["id"] for x in kept] == ["x_0"] and drops == {"too_long": 1, "split": 1, "dropped_long_exchanges": 2}


@pytest.mark.parametrize("name", ["dummy_conversation.json", "dummy_conversation_with_system.json"])
def test_real_sharegpt_sample_cleans(name):
    path = SHARED / "vicuna" / "sharegpt_sample" / name
    tokenizer_path = SHARED / "models" / "llama2c_tokenizer" / "tokenizer.model"
    if not path.exists() or not tokenizer_path.exists():
        pytest.skip("shared ShareGPT sample or tokenizer absent")
    import sentencepiece

    tokenizer = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer_path))
    convs = json.loads(path.read_text())
    kept, drops = clean_conversations(convs, tokenizer, max_length=2048, lang="en")
    # The sample is 500 scripted conversations over 334 distinct first exchanges, all English and short.
    assert len(kept) == 334 and drops == {"duplicate_first_exchange": 166}
    assert all(c["conversations"][0]["from"] == "human" for c in kept)
    # Exchanges are 20 to 54 tokens with the template overhead: at 64 every one fits but many pairs do not.
    split, drops = clean_conversations(convs, tokenizer, max_length=64)
    assert drops["split"] > 0 and "dropped_long_exchanges" not in drops and len(split) > len(kept)
    assert sum(len(c["conversations"]) for c in split) == sum(len(c["conversations"]) for c in kept)
    assert all(len(c["conversations"]) % 2 == 0 and c["conversations"][0]["from"] == "human" for c in split)
