"""Pairwise comparison metrics: win rate (AlpacaEval-style, ties count half) and reward-model pair accuracy."""

from __future__ import annotations

from collections.abc import Sequence


def _half_credit_share(first: Sequence[float], second: Sequence[float], what: str) -> float:
    """Share of positions where ``first`` beats ``second``, a tie counting half."""
    if len(first) != len(second):
        raise ValueError(f"{what}: {len(first)} scores against {len(second)}")
    if not first:
        raise ValueError(f"{what}: no scores to compare")
    wins = sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(first, second))
    return wins / len(first)


def win_rate(scores_a: Sequence[float], scores_b: Sequence[float]) -> float:
    """How often system A beats system B on the same prompts, ties counting half (Dubois et al. 2023)."""
    return _half_credit_share(scores_a, scores_b, "win_rate")


def pair_accuracy(pred_chosen_scores: Sequence[float], pred_rejected_scores: Sequence[float]) -> float:
    """How often a reward model scores the chosen response above the rejected one, ties counting half.

    A tie counts half so that a constant reward model scores 0.5, as chance does, rather than 0 or 1.
    """
    return _half_credit_share(pred_chosen_scores, pred_rejected_scores, "pair_accuracy")
