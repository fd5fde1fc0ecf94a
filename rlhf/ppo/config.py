"""Typed config sections of the PPO stage (prompts, roles, reward, rollout, algorithm, loop, resources).

Defaults follow TRL's old PPOTrainer / OpenRLHF where they agree; every field documents itself for ``--help``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from rlhf.config import Section
from rlhf.sampling.config import GenerationSection
from rlhf.sections import OptimSection, SourceSection


class PromptsSection(SourceSection):
    path: str = Field(..., description="prompt records: alpaca (output optional), sharegpt, messages or prompt rows")
    format: Literal["auto", "alpaca", "sharegpt", "messages", "prompt_completion"] = Field(
        "auto", description="record format; auto detects by keys"
    )
    template: Literal["alpaca", "vicuna", "koala", "chat"] = Field("alpaca", description="prompt template")
    max_prompt_length: int = Field(256, ge=1, description="prompts longer than this many tokens are skipped")
    limit: int | None = Field(None, ge=1, description="use only the first N rows")


class CriticSection(Section):
    path: str | None = Field(
        None, description="critic init: an RM dir or a causal-LM dir (new value head); default: reward.model, else the actor"
    )
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward to save memory")


class RewardSection(Section):
    model: str | None = Field(None, description="reward-model dir from the rm stage (LlamaForSequenceClassification)")
    url: str | None = Field(None, description="remote scorer: http://host:port/score (ours) or .../get_reward (OpenRLHF)")
    protocol: Literal["auto", "score", "get_reward"] = Field(
        "auto", description="remote protocol; auto = from the URL path"
    )
    function: str | None = Field(
        None, description="programmatic reward 'module:callable'(prompts, responses[, records]) -> scores; a "
                          "'records' parameter receives each prompt's source row (e.g. its reference answer)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for reward.function")
    weights: dict[Literal["model", "url", "function"], float] = Field(
        default_factory=dict, description="score = sum of weight * source score over the sources set (default 1 each)"
    )
    timeout_s: float = Field(60.0, gt=0, description="remote scorer: seconds per request")
    retries: int = Field(3, ge=0, description="remote scorer: retries after a failed request")
    clip: float | None = Field(None, gt=0, description="clip scores to [-clip, clip] (DeepSpeed-Chat)")
    normalize: bool = Field(False, description="divide scores by their running std after centring (TRL use_score_norm)")
    missing_eos_penalty: float | None = Field(
        None, description="subtracted from the score of a response that hit max_new_tokens without EOS"
    )

    @model_validator(mode="after")
    def _some_source(self):
        given = self.sources()
        if not given:
            raise ValueError("set at least one of reward.model, reward.url, reward.function")
        unused = sorted(set(self.weights) - set(given))
        if unused:
            raise ValueError(f"reward.weights names {unused}, which are not set")
        if self.function and ":" not in self.function:
            raise ValueError("reward.function must look like 'package.module:callable'")
        return self

    def sources(self) -> list[str]:
        """The reward sources set, in a fixed order (model, url, function)."""
        return [k for k in ("model", "url", "function") if getattr(self, k)]


class RolloutSection(Section):
    prompts_per_iteration: int = Field(16, ge=1, description="prompts sampled per PPO iteration")
    samples_per_prompt: int = Field(1, ge=1, description="responses sampled per prompt (a group, for grpo/dr_grpo/rloo)")
    max_new_tokens: int = Field(32, ge=1, description="response length cap")
    temperature: float = Field(1.0, gt=0, description="sampling temperature (also applied to training log-probs)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling")
    forward_batch_size: int = Field(16, ge=1, description="sequences per forward pass when scoring experience")
    old_logprobs: Literal["auto", "sampler", "recompute"] = Field(
        "auto", description="where PPO's old log-probs (and the entropy stat) come from: sampler (what the sampler "
        "computed for each token it drew, from the same weights and tempered distribution: one actor forward per "
        "iteration saved), recompute (an actor forward over the rollout, as TRL and OpenRLHF do); auto = sampler "
        "when the actor runs in fp32, where the decode step and the full forward agree to ~1e-6, recompute in "
        "bf16/fp16/amp, where they differ by rounding. A batch with prompts cut to the context is always recomputed")
    generation: GenerationSection = Field(default_factory=GenerationSection,
                                          description="sampling engine and token budget (rlhf.sampling)")


class AlgorithmSection(Section):
    estimator: Literal["gae", "grpo", "dr_grpo", "rloo", "reinforce_pp"] = Field(
        "gae", description="advantages: gae (critic), grpo, dr_grpo, rloo, reinforce_pp (no critic; rlhf.ppo.estimators)"
    )
    ppo_epochs: int = Field(1, ge=1, description="passes over each rollout batch")
    mini_batch_size: int = Field(8, ge=1, description="sequences per optimizer step, over all workers of a role")
    micro_batch_size: int | None = Field(
        None, ge=1, description="sequences per forward/backward on one worker; a worker's share of a minibatch is "
                                "accumulated over mini_batch_size / (workers * micro_batch_size) of them (default: "
                                "the whole share at once)"
    )
    clip_eps: float = Field(0.2, gt=0, description="policy ratio clip")
    dual_clip: float | None = Field(None, gt=1, description="dual-clip bound c > 1 for negative advantages (off if unset)")
    value_clip: float | None = Field(0.2, gt=0, description="value clip around old values (off if unset)")
    entropy_coef: float = Field(0.0, ge=0, description="entropy bonus weight in the policy loss")
    gamma: float = Field(1.0, ge=0, le=1, description="GAE discount")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda")
    whiten_advantages: bool = Field(True, description="normalise GAE advantages per rollout batch (gae only)")
    kl_in: Literal["reward", "loss"] = Field(
        "reward", description="KL penalty: subtracted from the per-token reward, or added to the actor loss (GRPO)"
    )
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k1", description="per-token KL estimator (k3 is GRPO's)")
    kl_coef: float = Field(0.05, ge=0, description="KL coefficient (the initial one when adaptive)")
    kl_target: float | None = Field(None, gt=0, description="adaptive KL target (Ziegler et al.); unset = fixed coefficient")
    kl_horizon: float = Field(10000.0, gt=0, description="adaptive KL horizon in samples")


class LoopSection(Section):
    iterations: int = Field(30, ge=1, description="PPO iterations (rollout + update)")
    seed: int = Field(0, description="seed for prompt order, sampling and minibatch order")
    log_every: int = Field(1, ge=1, description="print a progress line every N iterations (metrics.jsonl gets all)")
    checkpoint_every: int = Field(0, ge=0, description="save actor/critic/controller state every N iterations (0 = off)")
    keep_checkpoints: int = Field(2, ge=1, description="how many checkpoints to keep on disk")
    max_nonfinite_in_a_row: int = Field(3, ge=1, description="stop after this many skipped (non-finite) updates in a row")


class EvalSection(Section):
    every: int = Field(0, ge=0, description="evaluate every K iterations and after the last (0 = off)")
    prompts: str | None = Field(None, description="held-out prompt records (prompts.format/template apply)")
    validation_fraction: float | None = Field(
        None, gt=0, lt=1, description="instead of eval.prompts: hold this seeded share (loop.seed) of the training "
                                      "prompts out of training and evaluate on it, so that keep_best selects on a "
                                      "validation split and the final held-out eval stays untouched")
    limit: int | None = Field(64, ge=1, description="evaluate on the first N held-out prompts")
    function: str | None = Field(
        None, description="extra score logged as eval_function, 'module:callable' like reward.function (e.g. the oracle)"
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for eval.function")
    keep_best: Literal["eval_reward", "eval_function", "eval_kl"] | None = Field(
        None, description="keep the actor of the best evaluation as OUT/actor_best (higher is better; eval_kl: lower)"
    )

    @model_validator(mode="after")
    def _consistent(self):
        if self.prompts and self.validation_fraction:
            raise ValueError("set one of eval.prompts and eval.validation_fraction, not both")
        if self.every and not (self.prompts or self.validation_fraction):
            raise ValueError("eval.every needs eval.prompts or eval.validation_fraction")
        if self.keep_best and not self.every:
            raise ValueError("eval.keep_best needs eval.every")
        if self.keep_best == "eval_function" and not self.function:
            raise ValueError("eval.keep_best=eval_function needs eval.function")
        if self.function and ":" not in self.function:
            raise ValueError("eval.function must look like 'package.module:callable'")
        return self


class PPOResourcesSection(Section):
    actor_workers: int = Field(1, ge=1, description="data-parallel actor workers (one DeepSpeed group)")
    critic_workers: int = Field(1, ge=1, description="data-parallel critic workers (one DeepSpeed group)")
    ref_workers: int = Field(1, ge=1, description="reference-model workers")
    reward_workers: int = Field(1, ge=1, description="reward workers (RM or reward function)")
    colocate_actor_ref: bool = Field(False, description="actor and reference worker i share one bundle (needs equal counts)")
    colocate_critic_reward: bool = Field(False, description="critic and reward worker i share one bundle (needs equal counts)")
    colocate_all: bool = Field(False, description="all four roles' worker i share bundle i, each a quarter of its GPU "
                                                  "(OpenRLHF's colocate_all_models, DeepSpeed-Chat); needs equal counts")
    offload_while_generating: bool = Field(
        False, description="move the actor's and critic's optimizer states and gradients to host memory while the actor "
                           "generates, back before scoring (DeepSpeed offload_states; needs zero_stage >= 1)")
    cpus_per_bundle: float = Field(1.0, gt=0, description="CPUs per placement-group bundle; colocated roles split it")
    use_gpu: bool | Literal["auto"] = Field("auto", description="GPUs for the bundles; auto = if the cluster has GPUs")
    gpus_per_bundle: float = Field(1.0, gt=0, le=1, description="GPU share per bundle with use_gpu; 0.5 puts 2 bundles "
                                                                "(2 ranks of a role) on a GPU")
    backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="role groups' collectives on GPU: auto = nccl with whole GPUs per bundle, gloo with shared "
                            "ones (NCCL refuses two ranks of a group on one GPU); always gloo on CPU"
    )
    threads_per_worker: int | None = Field(None, ge=1, description="torch threads per worker (default: CPUs / actor workers)")
    address: str | None = Field(None, description="Ray address to join; default: RAY_ADDRESS or a local instance")
    memory_check: bool = Field(True, description="on GPUs, refuse a plan `rlhf plan` says does not fit (false: go on anyway)")
    max_failures: int = Field(1, ge=0, description="times the roles are restarted after a worker process dies; they "
                                                   "resume from the newest checkpoint (loop.checkpoint_every)")

    @model_validator(mode="after")
    def _colocated_counts_match(self):
        counts = {self.actor_workers, self.critic_workers, self.ref_workers, self.reward_workers}
        if self.colocate_all and len(counts) != 1:
            raise ValueError("colocate_all needs actor_workers == critic_workers == ref_workers == reward_workers")
        if self.colocate_actor_ref and self.actor_workers != self.ref_workers:
            raise ValueError("colocate_actor_ref needs actor_workers == ref_workers")
        if self.colocate_critic_reward and self.critic_workers != self.reward_workers:
            raise ValueError("colocate_critic_reward needs critic_workers == reward_workers")
        return self


def default_critic_optim() -> OptimSection:
    # The critic learns a fresh (or RM-initialised) value function: a higher LR than the actor, as in DeepSpeed-Chat.
    return OptimSection(lr=5e-4, schedule="constant")
