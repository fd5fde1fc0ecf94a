"""The PPO loop on the driver: rollout -> experience -> update, with metrics, checkpoint/resume and NaN safety.

One iteration (InstructGPT / DeepSpeed-Chat / OpenRLHF's single-controller layout):
  1. generation: the actor workers sample one response per prompt (their share of the batch each);
  2. scoring: actor log-probs (+ entropy), reference log-probs, critic values and rewards, all roles at once;
  3. advantages on the driver: score - beta * KL per token, GAE, whitening (``compute_advantages``);
  4. training: actor and critic run their minibatch epochs at the same time, each in its own process group.
Checkpoints are written only after a good update, and ``checkpoints/latest.json`` (atomic) names the newest
complete one, so a crash or a run of skipped updates never leaves a half-written checkpoint as "latest".
"""

from __future__ import annotations

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
from rlhf.ppo.experience import NonFinite, build_rollout, compute_advantages
from rlhf.ppo.group import RoleGroup
from rlhf.ppo.kl import AdaptiveKLController, FixedKLController
from rlhf.ppo.masking import masked_mean
from rlhf.ppo.prompts import Prompt
from rlhf.ppo.rewards import RunningMoments

LATEST = "latest.json"


@dataclass
class Roles:
    actor: RoleGroup
    critic: RoleGroup
    ref: RoleGroup
    reward: RoleGroup

    def all(self) -> list[RoleGroup]:
        return [self.actor, self.critic, self.ref, self.reward]


def gather(refs: list) -> list:
    import ray

    return ray.get(refs)


class Controller:
    def __init__(self, cfg, out: Path, roles: Roles, prompts: list[Prompt], eos_id: int, pad_id: int) -> None:
        self.cfg, self.out, self.roles, self.prompts = cfg, out, roles, prompts
        self.eos_id, self.pad_id = eos_id, pad_id
        algo = cfg.algorithm
        self.kl_ctl = (AdaptiveKLController(algo.kl_coef, algo.kl_target, algo.kl_horizon) if algo.kl_target
                       else FixedKLController(algo.kl_coef))
        self.moments = RunningMoments()
        self.skips_in_a_row = 0
        self.ckpt_root = out / "checkpoints"
        self.start = self.resume()
        self.logger = MetricsLogger(out, resume_step=self.start)

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        loop = self.cfg.loop
        try:
            for it in range(self.start, loop.iterations):
                row = self.iteration(it)
                self.logger.log(it + 1, row)
                if "skipped" in row:
                    self.on_skip(it, row["skip_reason"])
                    continue
                self.skips_in_a_row = 0
                if it == self.start or (it + 1) % loop.log_every == 0:
                    print(f"[rlhf] ppo {it + 1}/{loop.iterations}: reward {row['reward_mean']:.3f} kl {row['kl']:.4f}"
                          f" policy_loss {row['policy_loss']:.4f} value_loss {row['value_loss']:.4f}"
                          f" ({row['time_iteration_s']:.1f} s)", flush=True)
                if loop.checkpoint_every and (it + 1) % loop.checkpoint_every == 0 and it + 1 < loop.iterations:
                    self.save_checkpoint(it + 1)
        finally:
            self.logger.close()

    def iteration(self, it: int) -> dict:
        """One rollout + update. Returns the metrics row; a skipped update returns {"skipped": 1, "skip_reason"}."""
        cfg, roles = self.cfg, self.roles
        t0 = time.perf_counter()
        n = cfg.rollout.prompts_per_iteration
        batch = [self.prompts[i] for i in batch_indices(len(self.prompts), cfg.loop.seed, it * n, n)]
        outs = gather(roles.actor.submit_sharded("generate", [p.ids for p in batch], self.seed(it)))
        responses = [r for rs, _ in outs for r in rs]
        sync_s = max(t["sync_s"] for _, t in outs)
        rollout = build_rollout([p.ids for p in batch], responses, self.eos_id, self.pad_id)
        t1 = time.perf_counter()

        refs = [roles.actor.submit_sharded("logprobs", rollout), roles.ref.submit_sharded("logprobs", rollout),
                roles.critic.submit_sharded("values", rollout),
                roles.reward.submit_sharded("score", rollout, extra_rows=[[p.messages for p in batch],
                                                                          [p.text for p in batch]])]
        actor_out, ref_out, values_out, scores_out = (gather(r) for r in refs)
        old_logp = torch.cat([lp for lp, _ in actor_out])
        entropy = torch.cat([e for _, e in actor_out])
        t2 = time.perf_counter()
        try:
            exp, stats = compute_advantages(rollout, old_logp, torch.cat(ref_out), torch.cat(values_out),
                                            torch.cat(scores_out), self.kl_ctl.value, cfg.algorithm, cfg.reward,
                                            self.moments)
        except NonFinite as err:
            return {"skipped": 1, "skip_reason": str(err)}

        actor_refs = roles.actor.submit_sharded("train", exp, it)
        critic_refs = roles.critic.submit_sharded("train", exp, it)
        actor_stats, critic_stats = gather(actor_refs)[0], gather(critic_refs)[0]
        t3 = time.perf_counter()
        if actor_stats.pop("nonfinite_loss") or critic_stats.pop("nonfinite_loss"):
            return {"skipped": 1, "skip_reason": "non-finite loss"}
        self.kl_ctl.update(stats["kl"], n)
        return {
            **stats,
            "entropy": masked_mean(entropy, rollout.response_mask).item(),
            **{k: v for k, v in actor_stats.items() if k != "loss"},
            **{k: v for k, v in critic_stats.items() if k != "loss"},
            "prompts_truncated": sum(t.get("prompts_truncated", 0.0) for _, t in outs),
            "time_generation_s": t1 - t0 - sync_s,
            "time_weight_sync_s": sync_s,
            "time_scoring_s": t2 - t1,
            "time_training_s": t3 - t2,
            "time_iteration_s": t3 - t0,
        }

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
        gather(self.roles.actor.submit("save_state", str(self.ckpt_root / "actor"), iteration, {}) +
               self.roles.critic.submit("save_state", str(self.ckpt_root / "critic"), iteration, {}))
        state = {"iteration": iteration, "kl_coef": self.kl_ctl.value, "moments": self.moments.state_dict()}
        write_json_atomic(self.ckpt_root / "controller" / f"step_{iteration}" / "state.json", state)
        write_json_atomic(self.ckpt_root / LATEST, {"iteration": iteration})
        for part in ("actor", "critic", "controller"):
            prune_checkpoints(self.ckpt_root / part, self.cfg.loop.keep_checkpoints)

    def resume(self) -> int:
        """Restore the newest complete checkpoint; returns the iteration to continue from (0 when none)."""
        iteration = self.latest_iteration()
        if not iteration:
            return 0
        state = json.loads((self.ckpt_root / "controller" / f"step_{iteration}" / "state.json").read_text())
        gather(self.roles.actor.submit("load_state", str(self.ckpt_root / "actor"), iteration) +
               self.roles.critic.submit("load_state", str(self.ckpt_root / "critic"), iteration))
        self.kl_ctl.value = float(state["kl_coef"])
        self.moments.load_state_dict(state["moments"])
        print(f"[rlhf] ppo: resumed from {self.ckpt_root} at iteration {iteration}", flush=True)
        return iteration

    def save_outputs(self) -> None:
        gather(self.roles.actor.submit("save_hf", str(self.out / "actor")) +
               self.roles.critic.submit("save_hf", str(self.out / "critic")))
