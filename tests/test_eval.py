"""Eval pieces on hand-made cases: the KL estimator, accuracy statistics, judge verdicts, clean RM pairs, and
sequence log-probs of a real (embedded) policy."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.eval.evaluate import best_of_n, best_of_n_kl, by_family, grouped, mean_and_stderr
from rlhf.eval.judge import JudgeResult, combine_orders
from rlhf.eval.kl import kl_estimate
from rlhf.eval.policy import Samples
from rlhf.eval.rm import clean_pairs
from rlhf.world.tasks import prompt_row

SORT = prompt_row({"family": "sort", "args": {"items": ["7", "2", "5"]}})  # answer "2 5 7"
MAX = prompt_row({"family": "max", "args": {"items": ["3", "9", "0"]}})  # answer "9"


def test_kl_estimate_is_the_mean_log_ratio_with_a_per_prompt_standard_error():
    policy = torch.tensor([-1.0, -2.0, -3.0, -4.0])
    base = torch.tensor([-2.0, -2.0, -5.0, -4.0])
    mean, err = kl_estimate(policy, base, [0, 0, 1, 1])
    # log-ratios 1, 0, 2, 0 -> mean 0.75; per-prompt means 0.5 and 1.0 -> sample var 0.125 -> se sqrt(0.125 / 2)
    assert mean == pytest.approx(0.75)
    assert err == pytest.approx(0.25)


def test_kl_estimate_of_a_policy_with_itself_is_zero_and_bad_shapes_are_refused():
    logp = torch.tensor([-1.5, -0.5])
    assert kl_estimate(logp, logp.clone(), [0, 1]) == (0.0, 0.0)
    with pytest.raises(ValueError):
        kl_estimate(logp, torch.tensor([-1.0]), [0, 1])
    with pytest.raises(ValueError):
        kl_estimate(logp[:0], logp[:0], [])


def test_mean_and_stderr_average_samples_and_spread_prompts():
    mean, err = mean_and_stderr([1.0, 0.0, 1.0, 1.0, 0.0, 0.0], [0, 0, 1, 1, 2, 2])
    assert mean == pytest.approx(0.5)
    # per-prompt means 0.5, 1, 0 -> var 0.25 -> se sqrt(0.25 / 3)
    assert err == pytest.approx(math.sqrt(0.25 / 3))
    assert mean_and_stderr([1.0, 0.0], [0, 0]) == (0.5, 0.0)


def test_by_family_and_grouped():
    rows = [SORT, MAX]
    assert by_family(rows, [1.0, 0.0, 1.0, 1.0], [0, 0, 1, 1]) == {"max": 1.0, "sort": 0.5}
    samples = Samples([0, 0, 1, 1], [[1], [2], [3], [4]], ["a", "b", "c", "d"], k=2)
    assert grouped(samples, 2) == [["a", "b"], ["c", "d"]]
    assert grouped(samples, 2, 1) == [["a"], ["c"]]


@pytest.mark.parametrize("first,second,expected", [
    ("... [[A]]", "... [[B]]", "win"),          # the policy is A first, B second: picked both times
    ("[[B]]", "[[A]]", "loss"),
    ("[[A]]", "[[A]]", "inconsistent"),       # always the first position: position bias, not a preference
    ("[[C]]", "[[C]]", "tie"),
    ("[[A]]", "[[C]]", "inconsistent"),
    ("no verdict", "[[B]]", "unparseable"),
    (None, "[[B]]", "no_reply"),
])
def test_combine_orders(first, second, expected):
    assert combine_orders(first, second) == expected


def test_judge_result_win_rate_counts_ties_half():
    assert JudgeResult(wins=3, losses=1, ties=2).win_rate == pytest.approx((3 + 1) / 6)
    assert JudgeResult().win_rate is None


def test_clean_pairs_take_best_against_worst_and_skip_all_equal_prompts():
    pairs = clean_pairs([SORT, MAX, MAX], [
        ["2, 5, 7", "2 5 7", "7 5 2"],   # one right: chosen; a wrong one rejected
        ["9", "9"],                        # all right: no pair
        ["The answer is: 9", "7"],         # all wrong: no pair
    ])
    assert pairs.prompt_index == [0]
    assert pairs.chosen == ["2 5 7"]
    assert pairs.rejected[0] in ("2, 5, 7", "7 5 2")


@pytest.fixture(scope="module")
def tiny_policy():
    from rlhf.eval.policy import Policy

    return Policy("embedded:tiny-llama")


def test_sequence_logprobs_sum_the_response_tokens(tiny_policy):
    """Against a direct forward pass: sum over the response of log softmax(logits / T)[token]."""
    prompt, response, t = [1, 50, 60, 70], [80, 90, tiny_policy.eos_id], 0.7
    got = tiny_policy.sequence_logprobs([prompt], [response], temperature=t)
    with torch.no_grad():
        logits = tiny_policy.model(torch.tensor([prompt + response])).logits[0]
    logp = torch.log_softmax(logits / t, dim=-1)
    expected = sum(logp[len(prompt) - 1 + j, tok].item() for j, tok in enumerate(response))
    assert got.shape == (1,)
    assert got.item() == pytest.approx(expected, abs=1e-4)


def test_sampling_is_seeded_and_k_per_prompt(tiny_policy):
    prompts = [[1, 50, 60], [1, 70]]
    a = tiny_policy.sample(prompts, 3, 1.0, 1.0, 5, seed=7)
    b = tiny_policy.sample(prompts, 3, 1.0, 1.0, 5, seed=7)
    assert a.prompt_index == [0, 0, 0, 1, 1, 1] and a.k == 3
    assert a.ids == b.ids and all(1 <= len(r) <= 5 for r in a.ids)


def test_best_of_n_keeps_the_rm_favourite_of_each_run_of_n():
    # 2 prompts x K=2 x n=3 draws, prompt-major; ties go to the first.
    texts = [f"t{i}" for i in range(12)]
    drawn = Samples([0] * 6 + [1] * 6, [[i] for i in range(12)], texts, 6)
    rm = [0.1, 0.9, 0.3, 0.5, 0.5, 0.2, -1.0, -2.0, -0.5, 2.0, 1.0, 2.0]
    picked, scores = best_of_n(drawn, rm, 3)
    assert picked.texts == ["t1", "t3", "t8", "t9"] and picked.k == 2
    assert picked.prompt_index == [0, 0, 1, 1] and picked.ids == [[1], [3], [8], [9]]
    assert scores == [0.9, 0.5, -0.5, 2.0]


def test_best_of_n_kl_is_log_n_minus_n_minus_one_over_n():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75)  # 0.636 nats
    assert best_of_n_kl(16) == pytest.approx(2.7726 - 0.9375, abs=1e-4)
