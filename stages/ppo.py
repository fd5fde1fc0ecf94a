"""PPO stage: optimise the SFT policy against a reward with a KL penalty to the SFT model (InstructGPT, sec. 3.5).

    rlhf stage ppo --config configs/ppo/tiny.yaml --out runs/ppo [key.sub=value ...]

validate (typed config, batch arithmetic) -> setup (prompts; Ray placement group; actor, critic, reference and
reward workers, each role in its own process group; no critic with a critic-free estimator) -> train (the
controller's loop: rollout, experience, PPO epochs, evaluation; metrics, checkpoints, NaN safety) -> save
(OUT/actor, OUT/critic and OUT/actor_best as HF dirs when they exist, manifest.json last).
"""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import Field

from rlhf.config import Section
from rlhf.engine.collectives import resolve_backend
from rlhf.engine.launch import cluster_has_gpus, ensure_ray, root_cause, worker_env
from rlhf.errors import UserError
from rlhf.manifest import StageRun
from rlhf.plan.check import memory_check
from rlhf.metrics import read_metrics
from rlhf.models.loading import resolve_model_path
from rlhf.models.lora import LoraSection
from rlhf.reward.model import check_reward_model
from rlhf.models.tokenizer import load_tokenizer
from rlhf.ppo.config import (AlgorithmSection, CriticSection, EvalSection, LoopSection, PPOResourcesSection,
                             PromptsSection, RewardSection, RolloutSection, default_critic_optim)
from rlhf.ppo.estimators import ESTIMATORS
from rlhf.sections import DeepSpeedSection, ModelSection, OptimSection
from rlhf.trackers import LoggingSection


class Config(Section):
    """PPO with a separate critic (gae) or a critic-free estimator, and a frozen reference."""

    actor: ModelSection = Field(default_factory=ModelSection, description="the policy to optimise (an SFT dir)")
    critic: CriticSection = Field(default_factory=CriticSection, description="the value model")
    reward: RewardSection = Field(..., description="where scores come from: model, url, function (weighted sum)")
    prompts: PromptsSection = Field(..., description="prompts to sample responses for")
    rollout: RolloutSection = Field(default_factory=RolloutSection, description="sampling")
    algorithm: AlgorithmSection = Field(default_factory=AlgorithmSection, description="PPO hyperparameters")
    loop: LoopSection = Field(default_factory=LoopSection, description="iterations, checkpoints, safety")
    eval: EvalSection = Field(default_factory=EvalSection, description="held-out evaluation inside the loop")
    actor_optim: OptimSection = Field(default_factory=lambda: OptimSection(lr=1e-5, schedule="constant"),
                                      description="actor optimizer")
    critic_optim: OptimSection = Field(default_factory=default_critic_optim, description="critic optimizer")
    lora: LoraSection | None = Field(
        None, description="actor and critic train LoRA adapters (the critic's value head whole); the reference is the "
                          "actor's base with its adapters off, so no reference workers and no second policy copy")
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection, description="ZeRO and precision (trained roles)")
    resources: PPOResourcesSection = Field(default_factory=PPOResourcesSection, description="workers and placement")
    logging: LoggingSection = Field(default_factory=LoggingSection, description="W&B / MLflow, beside metrics.jsonl")


def uses_critic(cfg: Config) -> bool:
    return ESTIMATORS[cfg.algorithm.estimator].needs_critic


def check_batch_arithmetic(cfg: Config) -> None:
    """Every role's workers get equal shares and every minibatch splits evenly (DP ranks must step together);
    a group estimator gets groups of at least two."""
    algo, rollout, res = cfg.algorithm, cfg.rollout, cfg.resources
    if ESTIMATORS[algo.estimator].grouped and rollout.samples_per_prompt < 2:
        raise UserError(f"algorithm.estimator={algo.estimator} compares samples of one prompt: "
                        f"set rollout.samples_per_prompt >= 2 (got {rollout.samples_per_prompt})")
    n, mb = rollout.prompts_per_iteration * rollout.samples_per_prompt, algo.mini_batch_size
    rows = (f"rollout.prompts_per_iteration x samples_per_prompt = {n}" if rollout.samples_per_prompt > 1
            else f"rollout.prompts_per_iteration={n}")
    if n % mb:
        raise UserError(f"{rows} must be a multiple of algorithm.mini_batch_size={mb}")
    trained = ("actor_workers", "critic_workers") if uses_critic(cfg) else ("actor_workers",)
    roles = trained + ("ref_workers", "reward_workers")
    for key in roles:
        workers = getattr(res, key)
        if n % workers:
            raise UserError(f"{rows} must be a multiple of resources.{key}={workers}")
    if res.offload_while_generating and cfg.deepspeed.zero_stage == 0:
        raise UserError("resources.offload_while_generating needs deepspeed.zero_stage >= 1 (DeepSpeed offload_states)")
    micro = cfg.algorithm.micro_batch_size
    for key in trained:
        if mb % getattr(res, key):
            raise UserError(f"algorithm.mini_batch_size={mb} must be a multiple of resources.{key}={getattr(res, key)}")
        share = mb // getattr(res, key)
        if micro and micro < share and share % micro:
            raise UserError(f"algorithm.mini_batch_size={mb} over resources.{key}={getattr(res, key)} gives {share} "
                            f"rows per worker, not a multiple of algorithm.micro_batch_size={micro}")


def mean_of(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if key in r]
    return sum(values) / len(values) if values else None


def summarize(out: Path, iterations: int, best=None) -> dict:
    """Manifest metrics: reward means over the first and last 10% of (good) iterations, the last KL, time split,
    the last evaluation and (with eval.keep_best) the best one."""
    rows = [r for r in read_metrics(out) if "reward_mean" in r]
    k = max(1, math.ceil(0.1 * len(rows)))
    evals = [r for r in rows if "eval_reward" in r]
    extra = {f"{key}_last": evals[-1][key] for key in ("eval_reward", "eval_kl", "eval_function")
             if evals and key in evals[-1]}
    if best is not None and best.iteration is not None:
        extra.update(best_metric=best.metric, best_iteration=best.iteration, best_value=best.value)
    return {
        **extra,
        "reward_first": mean_of(rows[:k], "reward_mean"),
        "reward_last": mean_of(rows[-k:], "reward_mean"),
        "kl_last": rows[-1]["kl"] if rows else None,
        "iterations": iterations,
        "skipped_updates": sum(1 for r in read_metrics(out) if r.get("skipped")),
        **{key: mean_of(rows, key) for key in ("time_generation_s", "time_scoring_s", "time_training_s",
                                               "time_weight_sync_s", "time_iteration_s")},
    }


def run(cfg: Config, out: str | Path) -> dict:
    from rlhf.ppo.controller import Controller
    from rlhf.ppo.evaluation import BEST_DIR
    from rlhf.ppo.prompts import load_prompts

    out = Path(out)
    check_batch_arithmetic(cfg)
    memory_check("ppo", cfg)  # on GPUs: refuse a plan that does not fit, before anything loads
    actor_path = resolve_model_path(cfg.actor.path, cfg.actor.tokenizer)
    tokenizer_path = cfg.actor.tokenizer or actor_path
    reward_model = check_reward_model(resolve_model_path(cfg.reward.model)) if cfg.reward.model else None
    critic_path = None
    if uses_critic(cfg):
        critic_path = resolve_model_path(cfg.critic.path) if cfg.critic.path else (reward_model or actor_path)
    inputs = {"actor": actor_path, "critic": critic_path, "reward_model": reward_model, "prompts": cfg.prompts.path,
              "eval_prompts": cfg.eval.prompts if cfg.eval.every else None}
    if cfg.eval.every and cfg.eval.validation_fraction:
        inputs["eval_prompts"] = f"{cfg.prompts.path} (validation_fraction={cfg.eval.validation_fraction})"
    with StageRun("ppo", out, cfg, inputs=inputs) as stage:
        tokenizer = load_tokenizer(tokenizer_path)
        prompts, skipped = load_prompts(cfg.prompts, tokenizer)
        dropped = {"over_max_prompt_length": skipped} if skipped else {}
        prompts, eval_prompts = eval_split(cfg, tokenizer, prompts)
        held = f", {len(eval_prompts)} held out for in-loop eval" if cfg.eval.validation_fraction else ""
        print(f"[rlhf] ppo ({cfg.algorithm.estimator}): {len(prompts)} prompts{held} (dropped: {dropped or 'none'}), "
              f"{cfg.loop.iterations} iterations x {cfg.rollout.prompts_per_iteration} prompts x "
              f"{cfg.rollout.samples_per_prompt} samples -> {out}", flush=True)
        restarts = 0
        while True:
            try:
                with launch_roles(cfg, actor_path, critic_path, tokenizer_path, reward_model) as roles:
                    # Resumes from the newest OUT/checkpoints (none: from the start); metrics past it are dropped.
                    controller = Controller(cfg, out, roles, prompts, tokenizer.eos_token_id,
                                            tokenizer.pad_token_id, eval_prompts)
                    controller.run()
                    controller.save_outputs()
                break
            except Exception as err:  # Ray wraps a worker's exception; a user's mistake stays one line
                cause = root_cause(err)
                if isinstance(cause, UserError) and cause is not err:
                    raise UserError(str(cause)) from None
                if not worker_died(err) or restarts >= cfg.resources.max_failures:
                    raise
                restarts += 1
                print(f"[rlhf] ppo: a role's worker process died ({type(err).__name__}); restarting the roles from "
                      f"the newest checkpoint (restart {restarts} of at most {cfg.resources.max_failures})",
                      flush=True)
        best = controller.evaluator.best
        metrics = summarize(out, cfg.loop.iterations, best)
        outputs = {"actor": out / "actor", "metrics": out / "metrics.jsonl"}
        if critic_path:
            outputs["critic"] = out / "critic"
        if best.iteration is not None:
            outputs["actor_best"] = out / BEST_DIR
        manifest = stage.complete(metrics, outputs=outputs,
                                  extra={"data": {"prompts": len(prompts), "eval_prompts": len(eval_prompts),
                                                  "dropped": dropped}})
    print(f"[rlhf] ppo done: actor -> {out / 'actor'}", flush=True)
    return manifest


def eval_split(cfg: Config, tokenizer, prompts: list) -> tuple[list, list]:
    """(training prompts, in-loop eval prompts). With eval.validation_fraction the eval prompts are a seeded share
    of the training prompts, taken out of training (then eval.limit caps them); else eval.prompts, read whole."""
    from rlhf.data.splits import split_eval
    from rlhf.ppo.prompts import load_prompts

    if not cfg.eval.every:
        return prompts, []
    if cfg.eval.validation_fraction:
        train, held = split_eval(prompts, cfg.eval.validation_fraction, cfg.loop.seed)
        if not held:
            raise UserError(f"eval.validation_fraction={cfg.eval.validation_fraction}: {len(prompts)} prompt(s) "
                            "leave none to hold out")
        return train, held[: cfg.eval.limit]
    return prompts, load_prompts(cfg.prompts, tokenizer, cfg.eval.prompts, cfg.eval.limit)[0]


def worker_died(err: BaseException) -> bool:
    """A role's worker process is gone (killed, OOM, node lost), as opposed to an exception raised in its code."""
    from ray.exceptions import RayActorError

    return isinstance(err, RayActorError)


class launch_roles:
    """Context manager: placement group + the role groups (actor, critic unless critic-free, reference, reward);
    kills the workers and frees the bundles on exit."""

    def __init__(self, cfg: Config, actor_path: str, critic_path: str | None, tokenizer_path: str,
                 reward_model: str | None):
        self.cfg, self.paths = cfg, (actor_path, critic_path, tokenizer_path, reward_model)
        self.groups: list = []
        self.pg = None

    def __enter__(self):
        try:
            return self._launch()
        except BaseException:
            self.__exit__()  # __exit__ is not called when __enter__ raises; free what was reserved so far
            raise

    def _launch(self):
        import ray

        from rlhf.ppo.controller import Roles
        from rlhf.ppo.group import RoleGroup
        from rlhf.ppo.placement import create_placement_group, plan
        from rlhf.ppo.roles import ActorWorker, CriticWorker, ReferenceWorker, RewardWorker, RoleSpec

        cfg, res = self.cfg, self.cfg.resources
        actor_path, critic_path, tokenizer_path, reward_model = self.paths
        ensure_ray(res.address)
        use_gpu = cluster_has_gpus() if res.use_gpu == "auto" else bool(res.use_gpu)
        with_critic = uses_critic(cfg)
        # With LoRA the actor's base is the reference: no reference workers, no bundles for them.
        skip = (() if with_critic else ("critic",)) + (("ref",) if cfg.lora is not None else ())
        bundles, slots = plan(res, use_gpu, skip=skip)
        self.pg = create_placement_group(bundles)
        threads = res.threads_per_worker or max(1, round(res.cpus_per_bundle))
        rows = cfg.rollout.prompts_per_iteration * cfg.rollout.samples_per_prompt
        steps = cfg.loop.iterations * cfg.algorithm.ppo_epochs * (rows // cfg.algorithm.mini_batch_size)
        common = dict(tokenizer_path=tokenizer_path, deepspeed=cfg.deepspeed, algo=cfg.algorithm,
                      rollout=cfg.rollout, threads=threads, seed=cfg.loop.seed, total_steps=steps, env=worker_env(),
                      backend=resolve_backend(res.backend, use_gpu, res.gpus_per_bundle))
        specs = {
            "actor": RoleSpec(model_path=actor_path, optim=cfg.actor_optim, lora=cfg.lora,
                              gradient_checkpointing=cfg.actor.gradient_checkpointing,
                              mini_batch_per_worker=cfg.algorithm.mini_batch_size // res.actor_workers, **common),
            "critic": RoleSpec(model_path=critic_path or "", optim=cfg.critic_optim, lora=cfg.lora,
                               gradient_checkpointing=cfg.critic.gradient_checkpointing,
                               mini_batch_per_worker=cfg.algorithm.mini_batch_size // res.critic_workers, **common),
            "ref": RoleSpec(model_path=actor_path, **common),
            "reward": RoleSpec(model_path=reward_model or actor_path, reward=cfg.reward,
                               eval_function=cfg.eval.function, eval_kwargs=dict(cfg.eval.kwargs), **common),
        }
        classes = {"actor": ActorWorker, "critic": CriticWorker, "ref": ReferenceWorker, "reward": RewardWorker}
        built = {"critic": None, "ref": None}
        for role in ("actor", "critic", "ref", "reward"):
            if role in skip:
                continue
            built[role] = RoleGroup(role, classes[role], specs[role], slots[role], self.pg)
            self.groups.append(built[role])
        # All roles load their models at the same time; each group still rendezvouses on its own port.
        ray.get([ref for group in self.groups for ref in group.start_join()])
        return Roles(**built)

    def __exit__(self, *exc) -> None:
        from ray.util.placement_group import remove_placement_group

        for group in self.groups:
            group.kill()
        if self.pg is not None:
            remove_placement_group(self.pg)
