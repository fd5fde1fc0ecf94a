"""The eval stage's work: sample both policies on the held-out prompts, then score (see ``stages/eval.py``)."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable

from rlhf.errors import UserError
from rlhf.eval.kl import kl_estimate
from rlhf.eval.policy import Policy, Samples
from rlhf.eval.rm import clean_pairs, rm_pair_accuracy, rm_scores
from rlhf.world.oracle import oracle_score, task_of
from rlhf.world.winrate import win_rate

Messages = list[dict]


def mean_and_stderr(scores: list[float], prompt_index: list[int]) -> tuple[float, float]:
    """Mean over all samples; standard error over per-prompt means (samples of a prompt are correlated)."""
    per_prompt: dict[int, list[float]] = defaultdict(list)
    for i, s in zip(prompt_index, scores):
        per_prompt[i].append(s)
    means = [sum(v) / len(v) for v in per_prompt.values()]
    mean = sum(scores) / len(scores)
    if len(means) < 2:
        return mean, 0.0
    mu = sum(means) / len(means)
    return mean, math.sqrt(sum((m - mu) ** 2 for m in means) / (len(means) - 1) / len(means))


def by_family(rows: list[dict], scores: list[float], prompt_index: list[int]) -> dict[str, float]:
    """Oracle accuracy per task family, families sorted by name."""
    sums: dict[str, list[float]] = defaultdict(list)
    for i, s in zip(prompt_index, scores):
        sums[task_of(rows[i])["family"]].append(s)
    return {f: sum(v) / len(v) for f, v in sorted(sums.items())}


def grouped(samples: Samples, n_prompts: int, k: int | None = None) -> list[list[str]]:
    """Per prompt, its first ``k`` (default all) sampled texts."""
    k = k or samples.k
    return [samples.texts[i * samples.k:i * samples.k + k] for i in range(n_prompts)]


def best_of_n(samples: Samples, rm: list[float], n: int) -> tuple[Samples, list[float]]:
    """Keep the reward model's favourite of each run of ``n`` consecutive samples (ties: the first).

    samples: K*n responses per prompt, prompt-major; rm: [N*K*n] their RM scores. Returns K per prompt and their
    RM scores (Stiennon et al. 2020 and Nakano et al. 2021's best-of-n against a reward model)."""
    keep = [g * n + max(range(n), key=lambda j: (rm[g * n + j], -j)) for g in range(len(samples.ids) // n)]
    picked = Samples([samples.prompt_index[i] for i in keep], [samples.ids[i] for i in keep],
                     [samples.texts[i] for i in keep], samples.k // n)
    return picked, [rm[i] for i in keep]


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || base) = log n - (n-1)/n nats (Stiennon et al. 2020, appendix; exact without ties,
    an upper bound otherwise): the per-sample estimator would read the base model's own log-probs and give 0."""
    return math.log(n) - (n - 1) / n


def same_vocab(a: Policy, b: Policy) -> bool:
    return a.tokenizer.get_vocab() == b.tokenizer.get_vocab()


def evaluate(cfg, rows: list[dict], messages: list[Messages], use_oracle: bool,
             encode: Callable[[Messages, object], list[int]]) -> tuple[dict, list[dict]]:
    """(eval.json's content, samples.jsonl rows). ``encode(messages, tokenizer)`` -> prompt ids."""
    s, names = cfg.sampling, {"policy": cfg.policy_name, "baseline": cfg.baseline_name}
    if cfg.policy_name == cfg.baseline_name:
        raise UserError(f"eval: policy_name and baseline_name are both '{cfg.policy_name}'; name them apart")
    k = 1 if s.temperature == 0 else s.samples_per_prompt
    policies = {"policy": Policy(cfg.policy, cfg.tokenizer, cfg.precision)}
    if cfg.baseline:
        policies["baseline"] = Policy(cfg.baseline, cfg.tokenizer, cfg.precision)
    prompt_ids, truncated = {}, {}
    for role, p in policies.items():
        prompt_ids[role], truncated[names[role]] = p.bound([encode(m, p.tokenizer) for m in messages],
                                                           s.max_new_tokens)
    if s.best_of > 1 and not cfg.reward_model:
        raise UserError("eval: sampling.best_of needs reward_model (the RM picks the best of n)")
    draws = {"policy": k * s.best_of, "baseline": k}
    samples = {role: p.sample(prompt_ids[role], draws[role], s.temperature, s.top_p, s.max_new_tokens, s.seed,
                              cfg.batch_size, cfg.generation) for role, p in policies.items()}
    scorer = _rm_scorer(cfg) if cfg.reward_model else None
    if s.best_of > 1:
        drawn = samples["policy"]
        rm = rm_scores(scorer, [messages[i] for i in drawn.prompt_index], drawn.texts, cfg.batch_size)
        samples["policy"], _ = best_of_n(drawn, rm, s.best_of)
    n = len(rows)
    result: dict = {"policy": names["policy"], "baseline": names["baseline"] if cfg.baseline else None,
                    "prompts": n, "prompts_truncated": truncated, "samples_per_prompt": k,
                    "decoding": "greedy" if s.temperature == 0 else f"sampling, temperature {s.temperature}, top_p {s.top_p}",
                    "max_new_tokens": s.max_new_tokens, "best_of": s.best_of}
    scores: dict[str, dict[str, list[float]]] = defaultdict(dict)

    if use_oracle:
        result["oracle_accuracy"], result["oracle_accuracy_stderr"], result["oracle_accuracy_by_family"] = {}, {}, {}
        for role, smp in samples.items():
            scores[role]["oracle"] = [oracle_score(rows[i], t) for i, t in zip(smp.prompt_index, smp.texts)]
            mean, err = mean_and_stderr(scores[role]["oracle"], smp.prompt_index)
            result["oracle_accuracy"][names[role]] = mean
            result["oracle_accuracy_stderr"][names[role]] = err
            result["oracle_accuracy_by_family"][names[role]] = by_family(rows, scores[role]["oracle"], smp.prompt_index)
        if cfg.baseline:
            result[f"win_rate_{names['policy']}_vs_{names['baseline']}"] = win_rate(
                scores["policy"]["oracle"], scores["baseline"]["oracle"])

    if cfg.reward_model:
        _score_with_rm(cfg, scorer, rows, messages, policies, samples, prompt_ids, scores, result, names)

    if cfg.baseline and cfg.kl.enabled:
        _estimate_kl(cfg, policies, samples["policy"], prompt_ids, result, names)

    if cfg.baseline and cfg.judge is not None:
        from rlhf.eval.judge import judge_pairwise

        client = cfg.judge.chat_client()
        try:
            verdicts = judge_pairwise(client, cfg.judge, messages, grouped(samples["policy"], n, 1),
                                      grouped(samples["baseline"], n, 1))
        finally:
            client.close()
        result["judge"] = {"model": cfg.judge.model, "wins": verdicts.wins, "losses": verdicts.losses,
                           "ties": verdicts.ties, "tie_reasons": verdicts.reasons}
        result[f"judge_win_rate_{names['policy']}_vs_{names['baseline']}"] = verdicts.win_rate

    return result, _sample_rows(rows, samples, scores, names)


def _rm_scorer(cfg):
    from rlhf.models.loading import resolve_model_path
    from rlhf.reward.model import RewardScorer

    return RewardScorer(resolve_model_path(cfg.reward_model), device="auto", precision=cfg.precision)


def _score_with_rm(cfg, scorer, rows, messages, policies, samples, prompt_ids, scores, result, names) -> None:
    result["rm_score_mean"] = {}
    for role, smp in samples.items():
        scores[role]["rm"] = rm_scores(scorer, [messages[i] for i in smp.prompt_index], smp.texts, cfg.batch_size)
        result["rm_score_mean"][names[role]] = sum(scores[role]["rm"]) / len(scores[role]["rm"])
    if "baseline" in samples:
        result[f"rm_win_rate_{names['policy']}_vs_{names['baseline']}"] = win_rate(
            scores["policy"]["rm"], scores["baseline"]["rm"])
    if not result.get("oracle_accuracy"):
        return  # clean pair labels need the oracle
    # Pairs from the baseline (the SFT policy the RM's training pairs came from), else from the policy.
    role = "baseline" if "baseline" in samples else "policy"
    s, rp = cfg.sampling, cfg.rm_pairs
    reuse = (s.temperature == 1.0 and s.top_p == 1.0 and s.seed == rp.seed and samples[role].k >= rp.samples_per_prompt)
    smp = samples[role] if reuse else policies[role].sample(
        prompt_ids[role], rp.samples_per_prompt, 1.0, 1.0, s.max_new_tokens, rp.seed, cfg.batch_size, cfg.generation)
    pairs = clean_pairs(rows, grouped(smp, len(rows), rp.samples_per_prompt), seed=rp.seed)
    result["rm_accuracy_clean"] = rm_pair_accuracy(scorer, messages, pairs, cfg.batch_size)
    result["rm_pairs_clean"] = len(pairs.chosen)


def _estimate_kl(cfg, policies, policy_samples: Samples, prompt_ids, result, names) -> None:
    policy, baseline = policies["policy"], policies["baseline"]
    key = f"kl_{names['policy']}_vs_{names['baseline']}"
    if cfg.sampling.best_of > 1:
        result[key], result[f"{key}_stderr"], result["kl_method"] = best_of_n_kl(cfg.sampling.best_of), 0.0, \
            "best-of-n: log n - (n-1)/n"
        return
    if not same_vocab(policy, baseline):
        raise UserError("eval: kl needs the policy and the baseline to share a tokenizer; set kl.enabled: false")
    s, t = cfg.sampling, cfg.kl.temperature
    smp = policy_samples
    if s.temperature != t or s.top_p != 1.0:
        smp = policy.sample(prompt_ids["policy"], s.samples_per_prompt, t, 1.0, s.max_new_tokens, s.seed + 1,
                            cfg.batch_size, cfg.generation)
    x = [prompt_ids["policy"][i] for i in smp.prompt_index]
    logp_policy = policy.sequence_logprobs(x, smp.ids, t, cfg.batch_size)
    logp_base = baseline.sequence_logprobs(x, smp.ids, t, cfg.batch_size)
    kl, err = kl_estimate(logp_policy, logp_base, smp.prompt_index)
    result[key], result[f"{key}_stderr"], result["kl_samples"] = kl, err, len(smp.ids)


def _sample_rows(rows, samples, scores, names) -> list[dict]:
    out = []
    for role, smp in samples.items():
        for j, (i, text) in enumerate(zip(smp.prompt_index, smp.texts)):
            row = {"policy": names[role], "prompt_index": i, "sample": j % smp.k,
                   "instruction": rows[i].get("instruction"), "input": rows[i].get("input"), "response": text}
            for what, values in scores[role].items():
                row[what] = values[j]
            out.append(row)
    return out
