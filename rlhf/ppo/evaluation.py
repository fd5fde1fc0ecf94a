"""Evaluation inside the RL loop, and keeping the best actor.

Reward hacking shows up mid-run, and AlpacaFarm (Dubois et al. 2023) found PPO's best checkpoint at 20-80 steps:
so every ``eval.every`` iterations (and after the last) the actor samples the held-out prompts with the same
sampling path as the rollouts (``actor.generate``, one response each, a fixed seed so evaluations differ only
by the weights), and the row logs
  - ``eval_reward``: the mean training reward (the same weighted sources: RM, service, function);
  - ``eval_kl``: the mean over responses of the summed per-token KL to the reference (``algorithm.kl_estimator``);
  - ``eval_function``: the mean of ``eval.function`` (e.g. the task world's oracle), when given;
  - ``eval_response_length``.
With ``eval.keep_best: METRIC`` the actor of the best evaluation so far is written to OUT/actor_best
(higher is better, except eval_kl), beside the last one in OUT/actor.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from rlhf.ppo.kl import kl_penalty
from rlhf.ppo.masking import masked_sum

LOWER_IS_BETTER = ("eval_kl",)
BEST_DIR = "actor_best"


class BestTracker:
    """The iteration whose metric was best so far. ``update`` is True when ``value`` is a new best (strictly
    better; the first finite value always is; NaN never is)."""

    def __init__(self, metric: str | None) -> None:
        self.metric = metric
        self.lower = metric in LOWER_IS_BETTER
        self.iteration: int | None = None
        self.value: float | None = None

    def update(self, iteration: int, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.value is not None and not (value < self.value if self.lower else value > self.value):
            return False
        self.iteration, self.value = iteration, float(value)
        return True

    def state_dict(self) -> dict:
        return {"metric": self.metric, "iteration": self.iteration, "value": self.value}

    def load_state_dict(self, state: dict) -> None:
        if state.get("metric") == self.metric:
            self.iteration, self.value = state.get("iteration"), state.get("value")


def trim_to_multiple(prompts: list, workers: list[int]) -> list:
    """The longest prefix of ``prompts`` whose length every worker count divides (each role shards it evenly)."""
    step = math.lcm(*workers)
    return prompts[: len(prompts) // step * step]


class Evaluator:
    def __init__(self, section, roles, prompts: list, kl_estimator: str, eos_id: int, pad_id: int, out: Path,
                 seed: int = 0) -> None:
        self.section, self.roles, self.kl_estimator = section, roles, kl_estimator
        self.eos_id, self.pad_id, self.out, self.seed = eos_id, pad_id, out, seed * 7919 + 17
        self.prompts = trim_to_multiple(prompts, [len(g) for g in roles.all()]) if section.every else []
        if section.every and not self.prompts:
            from rlhf.errors import UserError

            raise UserError(f"eval.prompts: {len(prompts)} prompts, fewer than one per worker of each role")
        self.best = BestTracker(section.keep_best)

    def due(self, iteration: int, total: int) -> bool:
        every = self.section.every
        return bool(every) and (iteration % every == 0 or iteration == total)

    def run(self, iteration: int) -> dict[str, float]:
        """Sample and score the held-out prompts; save OUT/actor_best on a new best. Returns the eval_* metrics."""
        from rlhf.ppo.controller import (actor_logprob_refs, actor_logprobs, gather, generate, merge_scores,
                                         ref_logprob_refs, score_refs)

        roles = self.roles
        rollout, _, _, sampled = generate(roles, self.prompts, self.seed, self.eos_id, self.pad_id)
        refs = [actor_logprob_refs(roles, rollout, sampled), ref_logprob_refs(roles, rollout),
                score_refs(roles, rollout, self.prompts, with_eval=True)]
        actor_out, ref_out, scores_out = (gather(r) for r in refs)
        (logp, _), ref_logp = actor_logprobs(actor_out, sampled), torch.cat(ref_out)
        scores, parts = merge_scores(scores_out)
        mask = rollout.response_mask
        row = {
            "eval_reward": scores.mean().item(),
            "eval_kl": masked_sum(kl_penalty(logp, ref_logp, self.kl_estimator), mask, dim=1).mean().item(),
            "eval_response_length": mask.sum(dim=1).mean().item(),
        }
        if "eval_function" in parts:
            row["eval_function"] = parts["eval_function"].mean().item()
        metric = self.section.keep_best
        if metric and self.best.update(iteration, row[metric]):
            gather(roles.actor.submit("save_hf", str(self.out / BEST_DIR)))
            row["eval_best"] = 1.0
        shown = " ".join(f"{k[5:]} {v:.4f}" for k, v in row.items() if k != "eval_best")
        print(f"[rlhf] ppo eval at {iteration}: {shown}" + (" (new best)" if "eval_best" in row else ""), flush=True)
        return row
