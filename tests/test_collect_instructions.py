from __future__ import annotations

import json
from pathlib import Path

import pytest

import rlhf.paths
from rlhf.collect.instructions import (
    InstructionFilter,
    encode_prompt,
    load_seed_tasks,
    parse_instructions,
    seed_examples,
)
from rlhf.errors import UserError

SHARED_ALPACA = Path(rlhf.paths.REPO_ROOT).parent / "shared" / "data" / "alpaca"


def test_encode_prompt_numbers_tasks_and_opens_the_next():
    tasks = [
        {"instruction": "Name a  color.\n", "input": "", "output": "Blue."},
        {"instruction": "Translate to French:", "input": "cat", "output": "chat"},
    ]
    assert encode_prompt("HEADER", tasks) == (
        "HEADER\n"
        "###\n1. Instruction: Name a color.\n1. Input:\n<noinput>\n1. Output:\nBlue.\n"
        "###\n2. Instruction: Translate to French\n2. Input:\ncat\n2. Output:\nchat\n"
        "###\n3. Instruction:"
    )


TEACHER_REPLY = """ Give three tips for staying healthy.
4. Input:
<noinput>
4. Output:
1. Eat well. 2. Sleep. 3. Move.
###
5. Instruction: Classify the sentiment of the sentence.
5. Input:
I loved this movie!
5. Output:
Positive
###
6. Instruction: This item lost its input field.
6. Output:
Something
###
7. Instruction: Summarize the text.
7. Input:
A long text.
7. Output:
A summ"""


def test_parse_instructions_keeps_well_formed_items_and_skips_a_malformed_one():
    tasks = parse_instructions(TEACHER_REPLY, num_prompt_tasks=3)
    assert tasks == [
        {"instruction": "Give three tips for staying healthy.", "input": "", "output": "1. Eat well. 2. Sleep. 3. Move."},
        {"instruction": "Classify the sentiment of the sentence.", "input": "I loved this movie!", "output": "Positive"},
        {"instruction": "Summarize the text.", "input": "A long text.", "output": "A summ"},
    ]


def test_parse_instructions_drops_the_cut_off_last_item_when_truncated():
    tasks = parse_instructions(TEACHER_REPLY, num_prompt_tasks=3, truncated=True)
    assert [t["instruction"] for t in tasks] == [
        "Give three tips for staying healthy.", "Classify the sentiment of the sentence."
    ]


def test_parse_instructions_rejects_mixed_numbers_and_garbage():
    mixed = " Do a thing well.\n4. Input:\nx\n5. Output:\ny"
    assert parse_instructions(mixed, 3) == []
    assert parse_instructions("I cannot help with that.", 3) == []
    assert parse_instructions("", 3) == []


def test_rouge_filter_drops_near_duplicates_and_keeps_distinct_ones():
    f = InstructionFilter(["Give three tips for staying healthy."])
    # ROUGE-L: LCS "give three tips for staying healthy" = 6 of 6 and 7 tokens -> F1 = 2*6/13 = 0.923 > 0.7
    assert f.check("Give three tips for staying very healthy.") == "similar"
    assert f.max_similarity("Give three tips for staying very healthy.") == pytest.approx(12 / 13)
    # LCS "give three tips for" = 4 of 6 and 7 tokens -> F1 = 8/13 = 0.615 <= 0.7: kept
    assert f.check("Give three tips for learning a language.") is None
    assert f.check("Explain how vaccines train the immune system.") is None
    assert f.drops == {"similar": 1}


def test_filter_tasks_drops_in_batch_duplicates():
    f = InstructionFilter()
    tasks = [{"instruction": "Describe the water cycle in detail."},
             {"instruction": "describe the  water cycle in detail."},
             {"instruction": "Describe the water cycle in great detail."}]
    assert f.filter_tasks(tasks) == tasks[:1]
    assert f.drops == {"duplicate": 1, "similar": 1}
    assert f.kept == ["Describe the water cycle in detail."]


@pytest.mark.parametrize("instruction", [
    "Describe the image below in detail.",
    "Summarize these FILES for me please.",
    "Plot the stock prices over time.",
    "Go to the store and buy some milk.",
])
def test_banned_keywords(instruction):
    assert InstructionFilter().check(instruction) == "banned_keyword"


def test_banned_keywords_match_whole_words_only():
    # "profile" contains "file", "mapping" contains "map": not banned
    assert InstructionFilter().check("Write a profile of a famous mapping expert.") is None


@pytest.mark.parametrize("instruction, rule", [
    ("", "empty"),
    ("Be nice", "too_short"),
    ("word " * 151, "too_long"),
    ("Write a program that sorts numbers.", "banned_prefix"),
    ("- List three fruits please.", "starts_with_punctuation"),
    ("Écris un poème sur la mer.", "non_english_start"),
])
def test_heuristic_rules(instruction, rule):
    f = InstructionFilter()
    assert f.check(instruction) == rule
    assert f.drops == {rule: 1}


def test_length_bounds_are_inclusive():
    f = InstructionFilter(min_words=3, max_words=5)
    assert f.check("Name three colors.") is None
    assert f.check("Name three primary colors now.") is None
    assert f.check("Name three primary colors right now.") == "too_long"


def test_load_seed_tasks_reports_file_and_line(tmp_path):
    good = {"id": "t0", "name": "n", "instruction": "Do it.", "instances": [{"input": "", "output": "ok"}],
            "is_classification": False}
    path = tmp_path / "seed.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "instances": []}) + "\n")
    with pytest.raises(UserError, match=rf"^{path}:3: key 'instances' is empty$"):
        load_seed_tasks(path)
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(UserError, match=rf"^{path}:2: not valid JSON"):
        load_seed_tasks(path)
    path.write_text(json.dumps(good) + "\n")
    assert seed_examples(load_seed_tasks(path)) == [{"instruction": "Do it.", "input": "", "output": "ok"}]
    with pytest.raises(UserError, match="cannot read"):
        load_seed_tasks(tmp_path / "missing.jsonl")


def _teacher_reply(tasks: list[dict], first_number: int) -> str:
    """What a teacher following the prompt would write after ``{first_number}. Instruction:``."""
    items = [
        f"{n}. Instruction: {t['instruction']}\n{n}. Input:\n{t['input'] or '<noinput>'}\n{n}. Output:\n{t['output']}\n"
        for n, t in enumerate(tasks, start=first_number)
    ]
    return "###\n".join(items).removeprefix(f"{first_number}. Instruction:")


def test_real_alpaca_seed_tasks_and_prompt():
    seed_path, prompt_path = SHARED_ALPACA / "seed_tasks.jsonl", SHARED_ALPACA / "prompt.txt"
    if not seed_path.exists() or not prompt_path.exists():
        pytest.skip("shared Alpaca data absent")
    tasks = load_seed_tasks(seed_path)
    assert len(tasks) == 175 and tasks[0]["id"] == "seed_task_0"
    examples = seed_examples(tasks)
    prompt = encode_prompt(prompt_path.read_text(), examples[:3])
    assert prompt.startswith("You are asked to come up with a set of 20 diverse task instructions.")
    assert prompt.count("###\n") == 4 and prompt.endswith("###\n4. Instruction:")
    # Seed tasks written back as a teacher reply parse to themselves (outputs hold "1." lists and newlines).
    parsed = parse_instructions(_teacher_reply(examples[3:20], first_number=4), num_prompt_tasks=3)
    assert parsed == [{k: v.strip() for k, v in e.items()} for e in examples[3:20]]
    # Seed tasks against each other: "Write a program to compute the sum of integers from k to n." is the only one
    # the heuristics drop.
    rules = [InstructionFilter().check(e["instruction"]) for e in examples]
    assert [(i, r) for i, r in enumerate(rules) if r] == [
        (i, "banned_prefix") for i, e in enumerate(examples) if e["instruction"].startswith("Write a program")
    ]
