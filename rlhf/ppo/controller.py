"""The PPO loop on the driver: rollout -> experience -> update, with metrics, checkpoint/resume and NaN safety.

One iteration (InstructGPT / DeepSpeed-Chat / OpenRLHF's single-controller layout):
  1. generation: the actor workers sample ``rollout.samples_per_prompt`` responses per prompt (a group; their
     share of the batch each);
  2. scoring: actor log-probs (+ entropy), reference log-probs, critic values and rewards, all roles at once;
  3. advantages on the driver: score - beta * KL per token, then ``algorithm.estimator`` (``compute_advantages``);
  4. training: actor and critic run their minibatch epochs at the same time, each in its own process group.
With a critic-free estimator (grpo, dr_grpo, rloo, reinforce_pp) there is no critic role at all.
Every ``eval.every`` iterations the held-out prompts are sampled and scored (``rlhf.ppo.evaluation``).
Checkpoints are written only after a good update, and ``checkpoints/latest.json`` (atomic) names the newest
complete one, so a crash or a run of skipped updates never leaves a half-written checkpoint as "latest".
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhf.engine.checkpoint import prune_checkpoints
from rlhf.engine.loop import batch_indices
from rlhf.errors import UserError
from rlhf.manifest import write_json_atomic
from rlhf.metrics import MetricsLogger
from rlhf.ppo.evaluation import Evaluator
from rlhf.ppo.experience import NonFinite, Rollout, build_rollout, compute_advantages
from rlhf.ppo.group import RoleGroup
from rlhf.ppo.kl import AdaptiveKLController, FixedKLController
from rlhf.ppo.masking import masked_mean
from rlhf.ppo.prompts import Prompt
from rlhf.reward.shaping import RunningMoments

LATEST = "latest.json"


@dataclass
class Roles:
    actor: RoleGroup
    critic: RoleGroup | None  # None with a critic-free estimator
    ref: RoleGroup | None  # None with LoRA: the actor's base (adapters off) is the reference
    reward: RoleGroup

    def all(self) -> list[RoleGroup]:
        return [g for g in (self.actor, self.critic, self.ref, self.reward) if g is not None]

    def trained(self) -> list[tuple[str, RoleGroup]]:
        return [(name, g) for name, g in (("actor", self.actor), ("critic", self.critic)) if g is not None]


def gather(refs: list) -> list:
    import ray

    return ray.get(refs)


class Controller:
    def __init__(self, cfg, out: Path, roles: Roles, prompts: list[Prompt], eos_id: int, pad_id: int,
                 eval_prompts: list[Prompt] | None = None) -> None:
        self.cfg, self.out, self.roles, self.prompts = cfg, out, roles, prompts
        self.eos_id, self.pad_id = eos_id, pad_id
        algo = cfg.algorithm
        self.kl_ctl = (AdaptiveKLController(algo.kl_coef, algo.kl_target, algo.kl_horizon) if algo.kl_target
                       else FixedKLController(algo.kl_coef))
        self.moments = RunningMoments()
        self.skips_in_a_row = 0
        self.evaluator = Evaluator(cfg.eval, roles, eval_prompts or [], cfg.algorithm.kl_estimator, eos_id, pad_id,
                                   out, cfg.loop.seed)
        self.ckpt_root = out / "checkpoints"
        self.start = self.resume()
        self.logger = MetricsLogger(out, resume_step=self.start)

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        loop = self.cfg.loop
        try:
            for it in range(self.start, loop.iterations):
                row = self.iteration(it)
                if "skipped" not in row and self.evaluator.due(it + 1, loop.iterations):
                    row.update(self.evaluator.run(it + 1))
                row.update(self.memory_peaks())
                self.logger.log(it + 1, row)
                if "skipped" in row:
                    self.on_skip(it, row["skip_reason"])
                    continue
                self.skips_in_a_row = 0
                if it == self.start or (it + 1) % loop.log_every == 0:
                    value = f" value_loss {row['value_loss']:.4f}" if "value_loss" in row else ""
                    print(f"[rlhf] ppo {it + 1}/{loop.iterations}: reward {row['reward_mean']:.3f} kl {row['kl']:.4f}"
                          f" policy_loss {row['policy_loss']:.4f}{value} ({row['time_iteration_s']:.1f} s)", flush=True)
                if loop.checkpoint_every and (it + 1) % loop.checkpoint_every == 0 and it + 1 < loop.iterations:
                    self.save_checkpoint(it + 1)
        finally:
            self.logger.close()

    def iteration(self, it: int) -> dict:
        """One rollout + update. Returns the metrics row; a skipped update returns {"skipped": 1, "skip_reason"}."""
        cfg, roles = self.cfg, self.roles
        t0 = time.perf_counter()
        n, k = cfg.rollout.prompts_per_iteration, cfg.rollout.samples_per_prompt
        batch = [self.prompts[i] for i in batch_indices(len(self.prompts), cfg.loop.seed, it * n, n)]
        batch = [p for p in batch for _ in range(k)]  # each prompt k times in a row: one group per prompt
        group_ids = torch.arange(n).repeat_interleave(k)
        # offload_while_generating: the trained roles' optimizer states sleep in host memory during generation.
        sleep = cfg.resources.offload_while_generating
        offload_s = max(gather([r for _, g in roles.trained() for r in g.submit("offload_states")])) if sleep else 0.0
        rollout, sync_s, truncated, sampled = generate(roles, batch, self.seed(it), self.eos_id, self.pad_id)
        if sleep:
            offload_s += max(gather([r for _, g in roles.trained() for r in g.submit("reload_states")]))
        t1 = time.perf_counter()

        refs = [actor_logprob_refs(roles, rollout, sampled), ref_logprob_refs(roles, rollout),
                score_refs(roles, rollout, batch)]
        if roles.critic is not None:
            refs.append(roles.critic.submit_sharded("values", rollout))
        actor_out, ref_out, scores_out, *values_out = (gather(r) for r in refs)
        old_logp, entropy = actor_logprobs(actor_out, sampled)
        scores, parts = merge_scores(scores_out)
        values = torch.cat(values_out[0]) if values_out else None
        t2 = time.perf_counter()
        moments = copy.deepcopy(self.moments)  # the running score moments take this batch only if the update is kept
        try:
            exp, stats = compute_advantages(rollout, old_logp, torch.cat(ref_out), values, scores, self.kl_ctl.value,
                                            cfg.algorithm, cfg.reward, moments, group_ids)
        except NonFinite as err:
            return {"skipped": 1, "skip_reason": str(err)}
        if len(parts) > 1:
            stats.update({f"reward_{name}_mean": v.mean().item() for name, v in parts.items()})

        trained = [(name, group.submit_sharded("train", exp, it, self.kl_ctl.value)) for name, group in roles.trained()]
        results = {name: gather(refs)[0] for name, refs in trained}
        t3 = time.perf_counter()
        if any(r.pop("nonfinite_loss") for r in results.values()):
            # A role whose own loss went non-finite has restored itself; the others undo their whole update too.
            gather([ref for _, group in roles.trained() for ref in group.submit("rollback")])
            return {"skipped": 1, "skip_reason": "non-finite loss"}
        self.moments = moments
        self.kl_ctl.update(stats["kl"], n * k)
        return {
            **stats,
            "entropy": masked_mean(entropy, rollout.response_mask).item(),
            **{k: v for r in results.values() for k, v in r.items() if k != "loss"},
            "prompts_truncated": truncated,
            "old_logprobs_sampled": float(sampled is not None),  # 1: the sampler's stood for the recompute
            "time_generation_s": t1 - t0 - sync_s - offload_s,
            "time_weight_sync_s": sync_s,
            **({"time_state_offload_s": offload_s} if sleep else {}),
            "time_scoring_s": t2 - t1,
            "time_training_s": t3 - t2,
            "time_iteration_s": t3 - t0,
        }

    def memory_peaks(self) -> dict[str, float]:
        """On GPUs, each role's largest per-worker peak so far (``gpu_mem_peak_gib_<role>``, what `rlhf plan` predicts
        per GPU); nothing on CPU, where the first call finds no CUDA worker and the rest cost nothing."""
        if getattr(self, "_on_cuda", True) is False:
            return {}
        names = [(n, g) for n, g in (("actor", self.roles.actor), ("critic", self.roles.critic),
                                     ("ref", self.roles.ref), ("reward", self.roles.reward)) if g is not None]
        peaks = gather([ref for _, g in names for ref in g.submit("peak_memory_gib")])
        self._on_cuda = any(p is not None for p in peaks)
        out, i = {}, 0
        for name, g in names:
            values = [p for p in peaks[i:i + len(g.workers)] if p is not None]
            i += len(g.workers)
            if values:
                out[f"gpu_mem_peak_gib_{name}"] = max(values)
        return out

    def seed(self, it: int) -> int:
        return self.cfg.loop.seed * 1_000_003 + it * 1009

    def on_skip(self, it: int, reason: str) -> None:
        self.skips_in_a_row += 1
        limit = self.cfg.loop.max_nonfinite_in_a_row
        print(f"[rlhf] ppo {it + 1}: update skipped ({reason}); {self.skips_in_a_row} in a row (stop at {limit})",
              flush=True)
        if self.skips_in_a_row >= limit:
            last = self.latest_iteration()
            where = f"{self.ckpt_root}/step_{last}" if last else "none (no checkpoint was due yet)"
            raise UserError(f"ppo: {limit} updates in a row skipped for non-finite values (last: {reason}, "
                            f"iteration {it + 1}); stopping. Last good checkpoint: {where}")

    # ------------------------------------------------------------------ checkpoints

    def latest_iteration(self) -> int:
        p = self.ckpt_root / LATEST
        return int(json.loads(p.read_text())["iteration"]) if p.is_file() else 0

    def save_checkpoint(self, iteration: int) -> None:
        """Actor and critic DeepSpeed states, then the controller's state, then latest.json (last, atomic)."""
        gather([ref for name, group in self.roles.trained()
                for ref in group.submit("save_state", str(self.ckpt_root / name), iteration, {})])
        state = {"iteration": iteration, "kl_coef": self.kl_ctl.value, "moments": self.moments.state_dict(),
                 "best": self.evaluator.best.state_dict()}
        write_json_atomic(self.ckpt_root / "controller" / f"step_{iteration}" / "state.json", state)
        write_json_atomic(self.ckpt_root / LATEST, {"iteration": iteration})
        for part in [name for name, _ in self.roles.trained()] + ["controller"]:
            prune_checkpoints(self.ckpt_root / part, self.cfg.loop.keep_checkpoints)

    def resume(self) -> int:
        """Restore the newest complete checkpoint; returns the iteration to continue from (0 when none)."""
        iteration = self.latest_iteration()
        if not iteration:
            return 0
        state = json.loads((self.ckpt_root / "controller" / f"step_{iteration}" / "state.json").read_text())
        gather([ref for name, group in self.roles.trained()
                for ref in group.submit("load_state", str(self.ckpt_root / name), iteration)])
        self.kl_ctl.value = float(state["kl_coef"])
        self.moments.load_state_dict(state["moments"])
        self.evaluator.best.load_state_dict(state.get("best", {}))
        print(f"[rlhf] ppo: resumed from {self.ckpt_root} at iteration {iteration}", flush=True)
        return iteration

    def save_outputs(self) -> None:
        gather([ref for name, group in self.roles.trained() for ref in group.submit("save_hf", str(self.out / name))])


def generate(roles: Roles, batch: list[Prompt], seed: int, eos_id: int,
             pad_id: int) -> tuple[Rollout, float, int, tuple[torch.Tensor, torch.Tensor] | None]:
    """(the rollout of one response per row of ``batch``, the slowest worker's weight-sync seconds, how many prompts
    the actors cut to their model's context, the sampler's (log-probs, entropy) [B, R] when every worker kept them
    as old log-probs (``rollout.old_logprobs``), else None)."""
    outs = gather(roles.actor.submit_sharded("generate", [p.ids for p in batch], seed))
    responses = [r for rs, _, _ in outs for r in rs]
    truncated = int(sum(t.get("prompts_truncated", 0) for _, _, t in outs))
    rollout = build_rollout([p.ids for p in batch], responses, eos_id, pad_id)
    sampled = None
    if all(s is not None for _, s, _ in outs):
        sampled = tuple(padded([row for _, s, _ in outs for row in s[key]], rollout.response_width)
                        for key in ("logprobs", "entropy"))
    return rollout, max(t["sync_s"] for _, _, t in outs), truncated, sampled


def padded(rows: list[list[float]], width: int) -> torch.Tensor:
    """Ragged per-token values -> [B, width] float32, zeros after each row's end (the rollout's response layout)."""
    out = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.tensor(row, dtype=torch.float32)
    return out


def actor_logprob_refs(roles: Roles, rollout: Rollout, sampled: tuple[torch.Tensor, torch.Tensor] | None) -> list:
    """Refs of the actor workers' recomputed (log-probs, entropy); none when the sampler's stand for them."""
    return [] if sampled is not None else roles.actor.submit_sharded("logprobs", rollout)


def actor_logprobs(outs: list, sampled: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The actor's old log-probs and entropy [B, R]: the sampler's, or the gathered ``actor_logprob_refs``."""
    if sampled is not None:
        return sampled
    return torch.cat([lp for lp, _ in outs]), torch.cat([e for _, e in outs])


def ref_logprob_refs(roles: Roles, rollout: Rollout) -> list:
    """The reference's log-probs: its own workers, or under LoRA the actor's base with the adapters off."""
    if roles.ref is not None:
        return roles.ref.submit_sharded("logprobs", rollout)
    return roles.actor.submit_sharded("ref_logprobs", rollout)


def score_refs(roles: Roles, rollout: Rollout, batch: list[Prompt], with_eval: bool = False) -> list:
    return roles.reward.submit_sharded("score", rollout, with_eval, extra_rows=[
        [p.messages for p in batch], [p.text for p in batch], [p.record for p in batch]])


def merge_scores(outs: list) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The reward workers' (scores, parts) -> ([B] scores, {part: [B]}) in row order."""
    return (torch.cat([s for s, _ in outs]),
            {name: torch.cat([p[name] for _, p in outs]) for name in outs[0][1]})
