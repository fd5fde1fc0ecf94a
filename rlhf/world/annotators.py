"""Simulated annotators: noisy pairwise preferences derived from the oracle.

AlpacaFarm (Dubois et al. 2023, arXiv:2305.14387, Sec. 3.2) found that simulated annotators need label
noise to reproduce human preference data: with clean labels, methods over-optimise in ways human feedback
does not allow. Following it, each label is the oracle's preference flipped with probability ``noise``
(default 0.2, close to AlpacaFarm's 25% flip rate); a tie between equally scored responses is a coin toss.

``simulated_judge`` is the programmatic-judge form (``judge: rlhf.world.annotators:simulated_judge``):
prompt rows and, per prompt, K sampled responses in; one (chosen, rejected) pair or None per prompt out.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence

from rlhf.world.oracle import oracle_prefers, oracle_score, task_of

DEFAULT_NOISE = 0.2


def _check_noise(noise: float) -> None:
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"annotator noise {noise}: must be in [0, 1]")


def label_pairs(
    tasks: Sequence[dict],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    noise: float = DEFAULT_NOISE,
    seed: int = 0,
) -> list[int]:
    """Per pair, 0 if the annotator prefers ``responses_a[i]``, 1 if ``responses_b[i]``.

    ``tasks`` are task dicts or prompt rows carrying one. With ``noise == 0`` a label never differs from
    the oracle's (ties aside, which are random either way).
    """
    _check_noise(noise)
    if not len(tasks) == len(responses_a) == len(responses_b):
        raise ValueError(f"label_pairs: {len(tasks)} tasks, {len(responses_a)} a, {len(responses_b)} b")
    rng = random.Random(seed)
    labels = []
    for task, a, b in zip(tasks, responses_a, responses_b):
        label = oracle_prefers(task_of(task), a, b, rng)
        flip = rng.random() < noise
        labels.append(1 - label if flip else label)
    return labels


def annotate(
    prompt_row: dict, responses: Sequence[str], noise: float, rng: random.Random
) -> tuple[str, str] | None:
    """Turn K sampled responses into one (chosen, rejected) pair, or None when all score the same.

    Chosen is a best-scoring response and rejected a worst-scoring one (ties among them broken by
    ``rng``), the most informative pair K samples give; then the pair is swapped with probability
    ``noise``. None means "no preference" and is counted as a dropped prompt by the caller.
    """
    _check_noise(noise)
    task = task_of(prompt_row)
    scores = [oracle_score(task, r) for r in responses]
    if not scores or max(scores) == min(scores):
        return None
    chosen = rng.choice([r for r, s in zip(responses, scores) if s == max(scores)])
    rejected = rng.choice([r for r, s in zip(responses, scores) if s == min(scores)])
    if rng.random() < noise:
        chosen, rejected = rejected, chosen
    return chosen, rejected


def _pair_rng(seed: int, prompt_row: dict, responses: Sequence[str]) -> random.Random:
    """An rng that depends only on the seed and this prompt's content, so that labels do not change with
    batch size or order (a stable hash: Python's ``hash`` is salted per process)."""
    payload = json.dumps([seed, prompt_row.get("instruction"), prompt_row.get("input"), list(responses)])
    return random.Random(int.from_bytes(hashlib.sha256(payload.encode()).digest()[:8], "big"))


def simulated_judge(
    prompt_rows: Sequence[dict],
    response_lists: Sequence[Sequence[str]],
    noise: float = DEFAULT_NOISE,
    seed: int = 0,
) -> list[tuple[str, str] | None]:
    """Programmatic judge: per prompt row, ``annotate`` its K responses (see there)."""
    if len(prompt_rows) != len(response_lists):
        raise ValueError(f"simulated_judge: {len(prompt_rows)} prompts but {len(response_lists)} response lists")
    return [
        annotate(row, responses, noise, _pair_rng(seed, row, responses))
        for row, responses in zip(prompt_rows, response_lists)
    ]


def noiseless_judge(
    prompt_rows: Sequence[dict], response_lists: Sequence[Sequence[str]], seed: int = 0
) -> list[tuple[str, str] | None]:
    """The oracle as a judge (no label noise): for the clean labels that reward-model accuracy is measured on."""
    return simulated_judge(prompt_rows, response_lists, noise=0.0, seed=seed)
