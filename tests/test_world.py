"""The task world: oracle, defects, simulated annotators, metrics and world generation."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from rlhf.errors import UserError
from rlhf.world.__main__ import main as world_main
from rlhf.world.annotators import annotate, label_pairs, noiseless_judge, simulated_judge
from rlhf.world.oracle import oracle_accuracy, oracle_prefers, oracle_reward, oracle_score
from rlhf.world.tasks import (
    DEFAULT_FAMILIES, DEFECT_KINDS, FAMILIES, HABITS, defective_answer, make_world, prompt_row, task_from_text,
)
from rlhf.world.winrate import pair_accuracy, win_rate

# (task, correct answer, wrong answer, ill-formed answers), all worked out by hand.
CASES = [
    ({"family": "reverse", "args": {"items": ["b", "x", "h"]}}, "h x b", "b x h", ["h, x, b", "hxb", "h x b!"]),
    ({"family": "sort", "args": {"items": ["7", "2", "5", "0"]}}, "0 2 5 7", "7 5 2 0", ["0, 2, 5, 7", "0 2  5 7"]),
    ({"family": "first", "args": {"items": ["q", "m", "c"]}}, "q", "m", ["The answer is: q", "q."]),
    ({"family": "last", "args": {"items": ["q", "m", "c"]}}, "c", "m", ["c\nHope this helps!", "C"]),
    ({"family": "count", "args": {"items": ["a", "b", "c", "d"]}}, "4", "5", ["four", "4 letters"]),
    ({"family": "max", "args": {"items": ["3", "9", "0", "7"]}}, "9", "7", ["9.", "9 7"]),
    ({"family": "min", "args": {"items": ["3", "9", "0", "7"]}}, "0", "3", ["0\nThat was easy.", "zero"]),
    ({"family": "upper", "args": {"items": ["m", "w"]}}, "M W", "m w", ["MW", "Sure! M W"]),
    ({"family": "repeat", "args": {"word": "bus", "times": 3}}, "bus bus bus", "bus bus", ["bus, bus, bus", "bus x3"]),
]


@pytest.mark.parametrize("task,correct,wrong,ill_formed", CASES, ids=[c[0]["family"] for c in CASES])
def test_oracle_scores_correct_wrong_and_ill_formed(task, correct, wrong, ill_formed):
    assert oracle_score(task, correct) == 1.0
    assert oracle_score(task, f"  {correct}\n") == 1.0  # surrounding whitespace is not part of the format
    assert oracle_score(task, wrong) == 0.0
    for response in ill_formed:
        assert oracle_score(task, response) == 0.0, response
    assert oracle_score(prompt_row(task), correct) == 1.0  # a prompt row works as well as its task


def test_every_family_has_a_hand_checked_case():
    assert {c[0]["family"] for c in CASES} == set(FAMILIES)


def test_prompt_rows_render_instruction_and_input():
    row = prompt_row(CASES[-1][0])
    assert row == {
        "instruction": "Repeat the word the given number of times.",
        "input": "bus, 3",
        "task": {"family": "repeat", "args": {"word": "bus", "times": 3}},
    }
    assert prompt_row(CASES[0][0])["input"] == "b x h"


@pytest.mark.parametrize("kind", DEFECT_KINDS)
@pytest.mark.parametrize("task", [c[0] for c in CASES], ids=[c[0]["family"] for c in CASES])
def test_every_defect_scores_zero(task, kind):
    for rng in (None, random.Random(0), random.Random(1)):
        assert oracle_score(task, defective_answer(task, kind, rng)) == 0.0


def test_defects_look_as_documented():
    sort, first, repeat = CASES[1][0], CASES[2][0], CASES[-1][0]
    assert defective_answer(sort, "format") == "0, 2, 5, 7"
    assert defective_answer(first, "format") == "q."
    assert defective_answer(first, "preamble") == "The answer is: q"
    assert defective_answer(repeat, "ramble") == "bus bus bus\nHope this helps!"
    assert defective_answer(repeat, "wrong") == "bus bus bus bus"


def test_bad_task_raises_user_error():
    with pytest.raises(UserError, match="family"):
        oracle_score({"family": "juggle", "args": {}}, "x")
    with pytest.raises(UserError, match="task"):
        oracle_reward([{"instruction": "hi", "input": ""}], ["x"])


def test_oracle_reward_and_accuracy():
    rows = [prompt_row(c[0]) for c in CASES[:3]]
    responses = ["h x b", "7 5 2 0", "q"]
    assert oracle_reward(rows, responses) == [1.0, 0.0, 1.0]
    assert oracle_accuracy(rows, responses) == pytest.approx(2 / 3)


ALPACA = ("Below is an instruction that describes a task, paired with an input that provides further context. "
          "Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n"
          "### Input:\n{input}\n\n### Response:\n")  # fmt: skip


@pytest.mark.parametrize("task", [c[0] for c in CASES], ids=[c[0]["family"] for c in CASES])
def test_task_is_read_back_from_prompt_texts(task):
    row = prompt_row(task)
    assert task_from_text(f"{row['instruction']}\n\n{row['input']}") == task  # what PPO passes
    assert task_from_text(ALPACA.format(**row)) == task
    assert task_from_text(f"USER: {row['instruction']}\n\n{row['input']}\nASSISTANT:") == task


def test_oracle_reward_takes_prompt_texts():
    texts = ["Write the largest digit.\n\n3 9 0 7", "Reverse the order of the letters.\n\nb x h"]
    assert oracle_reward(texts, ["9", "b x h"]) == [1.0, 0.0]
    with pytest.raises(UserError, match="no task-world instruction"):
        oracle_reward(["Write a poem.\n\nabout cats"], ["no"])
    with pytest.raises(UserError, match="no task-world instruction"):
        task_from_text("Write the largest digit.\n\nthree nine")  # instruction, but no input it can read


def test_oracle_prefers_better_and_breaks_ties_at_random():
    task = CASES[0][0]
    rng = random.Random(0)
    assert oracle_prefers(task, "h x b", "b x h", rng) == 0
    assert oracle_prefers(task, "b x h", "h x b", rng) == 1
    ties = [oracle_prefers(task, "b x h", "h, x, b", rng) for _ in range(400)]
    assert 150 < sum(ties) < 250


def test_label_noise_flips_at_the_configured_rate():
    task = CASES[0][0]
    n = 2000
    tasks, good, bad = [task] * n, ["h x b"] * n, ["b x h"] * n
    labels = label_pairs(tasks, good, bad, noise=0.2, seed=0)
    assert 0.15 <= sum(labels) / n <= 0.25  # label 1 = the worse one was preferred = a flip
    assert label_pairs(tasks, good, bad, noise=0.0, seed=0) == [0] * n
    assert label_pairs(tasks, bad, good, noise=0.0, seed=3) == [1] * n
    assert label_pairs(tasks, good, bad, noise=0.2, seed=0) == labels  # deterministic for a seed


def test_annotate_picks_the_oracle_better_response():
    row = prompt_row(CASES[4][0])  # count: answer "4"
    rng = random.Random(0)
    assert annotate(row, ["5", "4\nHope this helps!", "4", "3"], 0.0, rng)[0] == "4"
    chosen, rejected = annotate(row, ["5", "4"], 0.0, rng)
    assert (chosen, rejected) == ("4", "5")
    assert annotate(row, ["5", "3", "4."], 0.0, rng) is None  # all equally (badly) scored
    assert annotate(row, ["4", "4"], 0.0, rng) is None
    assert annotate(row, ["5", "4"], 1.0, rng) == ("5", "4")  # noise 1 always flips


def test_simulated_judge_is_per_prompt_and_order_independent():
    rows = [prompt_row(c[0]) for c in CASES]
    responses = [[c[1], c[2]] for c in CASES]
    assert noiseless_judge(rows, responses) == [(c[1], c[2]) for c in CASES]
    noisy = simulated_judge(rows, responses, noise=0.5, seed=7)
    assert simulated_judge(rows[::-1], responses[::-1], noise=0.5, seed=7) == noisy[::-1]
    assert simulated_judge(rows[:1], [[CASES[0][2], CASES[0][2]]]) == [None]


def test_win_rate_counts_ties_half():
    assert win_rate([1, 0, 1, 0], [0, 0, 1, 1]) == pytest.approx((1 + 0.5 + 0.5 + 0) / 4)
    assert win_rate([1.0], [0.0]) == 1.0
    with pytest.raises(ValueError):
        win_rate([1, 0], [1])


def test_pair_accuracy_counts_ties_half():
    assert pair_accuracy([0.9, 0.2, 0.5], [0.1, 0.3, 0.5]) == pytest.approx(1.5 / 3)
    assert pair_accuracy([3.0] * 4, [3.0] * 4) == 0.5  # a constant reward model is at chance
    with pytest.raises(ValueError):
        pair_accuracy([], [])


def _keys(rows):
    return {(r["instruction"], r["input"]) for r in rows}


def test_make_world_is_deterministic_and_heldout_is_disjoint():
    a = make_world(3, 140, 70, 0.4, n_demos=700)
    b = make_world(3, 140, 70, 0.4, n_demos=700)
    assert a == b
    assert make_world(4, 140, 70, 0.4, n_demos=700).demos != a.demos
    assert len(a.train_prompts) == len(_keys(a.train_prompts)) == 140
    assert len(a.heldout_prompts) == len(_keys(a.heldout_prompts)) == 70
    assert not _keys(a.heldout_prompts) & _keys(a.train_prompts)
    assert not _keys(a.heldout_prompts) & _keys(a.demos)
    assert Counter(r["task"]["family"] for r in a.heldout_prompts) == dict.fromkeys(DEFAULT_FAMILIES, 10)


@pytest.mark.parametrize("rate", [0.0, 0.25, 0.4, 0.6, 1.0])
def test_defect_rate_in_demos_matches_the_config(rate):
    world = make_world(0, 14, 14, rate, n_demos=700)
    defects = world.demo_defects
    assert sum(d is not None for d in defects) == round(rate * 700)
    for demo, task, defect in zip(world.demos, world.demo_tasks, defects):
        # the recorded label is the truth: clean demos are exactly right, defective ones are scored 0
        assert oracle_score(task, demo["output"]) == (1.0 if defect is None else 0.0)
        assert set(demo) == {"instruction", "input", "output"}


def test_defects_concentrate_on_habit_families():
    # 100 demos per family, a budget of 280 defects: 4 habit families x 60, then 40 over the other 3
    world = make_world(0, 14, 14, 0.4, n_demos=700)
    by_family = Counter((t["family"], d) for t, d in zip(world.demo_tasks, world.demo_defects))
    for family, habit in HABITS.items():
        assert by_family[(family, habit)] == 60 and by_family[(family, None)] == 40
    others = set(DEFAULT_FAMILIES) - set(HABITS)
    assert sorted(100 - by_family[(f, None)] for f in others) == [13, 13, 14]
    for demo, task, defect in zip(world.demos, world.demo_tasks, world.demo_defects):
        if task["family"] in HABITS and defect is not None:  # a habit keeps one wording
            assert demo["output"] == defective_answer(task, HABITS[task["family"]])
    spread = make_world(0, 14, 14, 0.4, n_demos=700, habits={})
    assert {t["family"] for t, d in zip(spread.demo_tasks, spread.demo_defects) if d} == set(DEFAULT_FAMILIES)


def test_make_world_rejects_bad_config():
    with pytest.raises(UserError, match="defect_rate"):
        make_world(0, 10, 10, 1.5)
    with pytest.raises(UserError, match="families"):
        make_world(0, 10, 10, 0.4, families=["juggle"])
    with pytest.raises(UserError, match="too few distinct prompts"):
        make_world(0, 10, 1000, 0.4, families=["repeat"])


def test_cli_writes_the_files(tmp_path):
    assert world_main(["--seed", "1", "--out", str(tmp_path), "--n-demos", "70", "--n-train", "14",
                       "--n-heldout", "7"]) == 0  # fmt: skip
    demos = [json.loads(line) for line in (tmp_path / "sft.jsonl").read_text().splitlines()]
    heldout = [json.loads(line) for line in (tmp_path / "prompts_heldout.jsonl").read_text().splitlines()]
    assert len(demos) == 70 and len(heldout) == 7
    assert all(prompt_row(row["task"]) == row for row in heldout)  # the task field reproduces the row
    assert make_world(1, 14, 7, 0.4, n_demos=70).heldout_prompts == heldout
    assert "python -m rlhf.world --seed 1" in (tmp_path / "SOURCES.md").read_text()


def test_committed_world_files_are_what_the_generator_writes():
    from rlhf.paths import DATA_DIR
    from rlhf.world.__main__ import DEFAULT_DEFECT_RATE, DEFAULT_DEMOS, DEFAULT_HELDOUT, DEFAULT_TRAIN

    world = make_world(0, DEFAULT_TRAIN, DEFAULT_HELDOUT, DEFAULT_DEFECT_RATE, n_demos=DEFAULT_DEMOS)
    for name, rows in (("sft", world.demos), ("prompts_train", world.train_prompts),
                       ("prompts_heldout", world.heldout_prompts)):  # fmt: skip
        lines = (DATA_DIR / "world" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in lines] == rows, f"data/world/{name}.jsonl is stale: rerun the generator"
