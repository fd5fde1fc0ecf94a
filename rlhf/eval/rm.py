"""Reward-model evaluation: scores of a policy's responses, and accuracy on held-out pairs with clean labels.

Clean pairs are made the way the collect stage made the RM's training pairs (``rlhf.world.annotators.annotate``:
K samples of the SFT policy per prompt, chosen = a best and rejected = a worst by the oracle), on held-out
prompts and without label noise (``noiseless_judge``). Accuracy on them says how well the RM learnt the
oracle's preferences on the distribution it was trained for, beyond the 20% label noise it was trained with
(AlpacaFarm, Dubois et al. 2023, measures its simulated annotators against held-out majority labels the same way).
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhf.world.annotators import noiseless_judge
from rlhf.world.winrate import pair_accuracy

Messages = list[dict]


@dataclass
class CleanPairs:
    prompt_index: list[int]  # which prompt each pair belongs to
    chosen: list[str]
    rejected: list[str]


def clean_pairs(rows: list[dict], response_lists: list[list[str]], seed: int = 0) -> CleanPairs:
    """One oracle-labelled (best, worst) pair per prompt whose responses differ in oracle score."""
    pairs = noiseless_judge(rows, response_lists, seed=seed)
    kept = [(i, p) for i, p in enumerate(pairs) if p is not None]
    return CleanPairs([i for i, _ in kept], [p[0] for _, p in kept], [p[1] for _, p in kept])


def rm_scores(scorer, prompts: list[Messages], responses: list[str], batch_size: int = 64) -> list[float]:
    """Raw RM scores (``rlhf.reward.model.RewardScorer``) of each (prompt, response)."""
    return scorer.score_pairs(prompts, responses, batch_size=batch_size) if responses else []


def rm_pair_accuracy(scorer, prompts: list[Messages], pairs: CleanPairs, batch_size: int = 64) -> float | None:
    """Share of pairs the RM orders as the oracle does (a tie counts half); None when there are no pairs."""
    if not pairs.chosen:
        return None
    msgs = [prompts[i] for i in pairs.prompt_index]
    chosen = rm_scores(scorer, msgs, pairs.chosen, batch_size)
    rejected = rm_scores(scorer, msgs, pairs.rejected, batch_size)
    return pair_accuracy(chosen, rejected)
