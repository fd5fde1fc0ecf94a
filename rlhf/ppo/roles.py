"""The four PPO roles, one Ray actor class each: actor, critic (trained, DeepSpeed), reference, reward (frozen).

Each role's workers form their own torch process group (rank 0 picks MASTER_ADDR = its node IP and a free port),
as OpenRLHF's ``PPORayActorGroup`` does, so a role's ZeRO collectives never mix with another role's. Trained
roles wrap their model with ``rlhf.engine.build.build_engine``; one PPO minibatch is one optimizer step.
Every method takes and returns CPU tensors (they travel through Ray's object store).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhf.engine import checkpoint as ckpt
from rlhf.engine import collectives, snapshot
from rlhf.engine.build import build_engine, device, init_distributed, zero3_config
from rlhf.engine.deepspeed_config import inference_precision, resolve_precision
from rlhf.ppo.config import AlgorithmSection, RewardSection, RolloutSection
from rlhf.ppo.experience import (Experience, Rollout, batched_logprobs, batched_values, map_tensors,
                                 response_logits, response_logprobs, response_token_values)
from rlhf.models.loading import partitioned
from rlhf.ppo.estimators import ESTIMATORS
from rlhf.ppo.kl import kl_penalty
from rlhf.ppo.losses import aggregate, entropy_bonus, entropy_from_logits, policy_loss, value_loss
from rlhf.ppo.minibatch import run_update
from rlhf.models.lora import LoraSection
from rlhf.sections import DeepSpeedSection, OptimSection


@dataclass
class RoleSpec:
    """Everything a worker needs; picklable (Ray ships it)."""

    model_path: str
    tokenizer_path: str
    deepspeed: DeepSpeedSection
    algo: AlgorithmSection
    rollout: RolloutSection
    threads: int
    seed: int = 0
    optim: OptimSection | None = None
    total_steps: int = 1
    mini_batch_per_worker: int = 1
    gradient_checkpointing: bool = False
    reward: RewardSection | None = None
    eval_function: str | None = None  # eval.function, scored beside the reward on held-out prompts
    eval_kwargs: dict = field(default_factory=dict)
    lora: LoraSection | None = None  # actor and critic train adapters; the actor's base is the reference
    env: dict[str, str] = field(default_factory=dict)
    backend: str = "gloo"  # torch backend of the role's process group (rlhf.engine.collectives.resolve_backend)


def cpu(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.detach().to("cpu")


class RoleWorker:
    """One process of a role. ``join`` forms the role's process group and calls ``setup``."""

    def __init__(self, spec: RoleSpec, rank: int, world: int) -> None:
        os.environ.update(spec.env)
        os.environ["OMP_NUM_THREADS"] = str(spec.threads)
        torch.set_num_threads(spec.threads)
        self.spec, self.rank, self.world = spec, rank, world

    def address(self) -> tuple[str, int]:
        """(node IP, a free TCP port) for this group's rendezvous; called on rank 0."""
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def join(self, master_addr: str, master_port: int) -> None:
        # Ray pins each worker's GPU via CUDA_VISIBLE_DEVICES, so the local device is always index 0.
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(self.rank),
                          WORLD_SIZE=str(self.world), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        init_distributed(self.spec.backend)
        torch.manual_seed(self.spec.seed + self.rank)
        self.dev = device()
        self.setup()

    def setup(self) -> None:
        raise NotImplementedError

    def inference_precision(self) -> str:
        """Frozen roles load in the trained roles' precision (deepspeed.precision; auto = bf16 on GPU, fp32 on CPU),
        as ``rlhf plan`` counts them."""
        return inference_precision(self.spec.deepspeed, torch.cuda.is_available())

    def to_dev(self, obj):
        return map_tensors(obj, lambda t: t.to(self.dev, non_blocking=True))

    def peak_memory_gib(self) -> float | None:
        """This process's peak CUDA allocation so far (GiB), None off the GPU."""
        return torch.cuda.max_memory_allocated(self.dev) / 2**30 if self.dev.type == "cuda" else None


class TrainedRole(RoleWorker):
    """Shared by actor and critic: the DeepSpeed engine, minibatch epochs, checkpoints, HF export."""

    def deepspeed_section(self) -> DeepSpeedSection:
        # One minibatch per optimizer step (see rlhf.ppo.minibatch), accumulated over micro-batches.
        mini, micro = self.spec.mini_batch_per_worker, self.micro_batch()
        return self.spec.deepspeed.model_copy(update={"micro_batch_size": micro,
                                                      "gradient_accumulation_steps": mini // micro})

    def loading(self):
        """Context for loading the trained model: under ZeRO-3 each rank builds only its shard."""
        return partitioned(zero3_config(self.deepspeed_section(), self.spec.optim))

    def build(self, model: torch.nn.Module) -> None:
        self.engine = build_engine(model, self.deepspeed_section(), self.spec.optim, self.spec.total_steps)

    def micro_batch(self) -> int:
        """Rows per forward/backward on this worker: algorithm.micro_batch_size, default the whole minibatch share."""
        return min(self.spec.algo.micro_batch_size or self.spec.mini_batch_per_worker, self.spec.mini_batch_per_worker)

    # What leaves the GPU while the actor generates: fp32 master weights, Adam moments, gradient buffers. The 16-bit
    # weights stay (the actor generates with them; ZeRO-3 gathers from them).
    SLEEP_STATES = ("hp_params", "optim_states", "lp_grads", "contiguous_grad_buffer")

    def offload_states(self) -> float:
        """Optimizer states and gradients to host memory (DeepSpeed ``offload_states``); returns the seconds taken."""
        import time

        from deepspeed.runtime.zero.offload_config import OffloadStateTypeEnum

        start = time.perf_counter()
        on_gpu = self.dev.type == "cuda"
        self.engine.offload_states(include=[OffloadStateTypeEnum(s) for s in self.SLEEP_STATES], pin_memory=on_gpu)
        if on_gpu:
            torch.cuda.empty_cache()  # give the freed blocks back, so a colocated role can use them
        return time.perf_counter() - start

    def reload_states(self) -> float:
        import time

        start = time.perf_counter()
        self.engine.reload_states()
        return time.perf_counter() - start

    def loss(self, engine, batch: Experience) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def loss_weighting(self) -> str:
        """How ``loss`` averages a batch, for micro-batch weights: "tokens" (token mean) or "rows"."""
        return "tokens"

    def train(self, experience: Experience, iteration: int, kl_coef: float = 0.0) -> dict[str, float]:
        """PPO epochs over this worker's rows; stats averaged over steps and ranks. ``kl_coef``: this iteration's
        KL coefficient (used by the actor when the KL is a loss term). The state before the update is kept until the
        next one, so the controller can undo it (``rollback``) when another role's update failed."""
        self.engine.train()
        self.kl_coef = kl_coef
        seed = self.spec.seed * 1_000_003 + iteration * 7919 + self.rank
        self.before_update = snapshot.take(self.engine)
        return run_update(self.engine, experience, self.spec.algo.ppo_epochs, self.spec.mini_batch_per_worker,
                          seed, self.loss, self.dev, micro=self.micro_batch(), snap=self.before_update,
                          weigh_by=self.loss_weighting())

    def rollback(self) -> None:
        """Undo the last ``train`` (every rank restores its own shard; no collective)."""
        snapshot.restore(self.engine, self.before_update)

    def save_state(self, root: str, iteration: int, client_state: dict) -> None:
        ckpt.save_training_state(self.engine, Path(root), iteration, client_state)

    def load_state(self, root: str, iteration: int) -> None:
        """Restore the DeepSpeed state (and this rank's RNG) saved at ``iteration``."""
        tag = f"step_{iteration}"
        path, _ = self.engine.load_checkpoint(root, tag=tag)
        if path is None:
            raise RuntimeError(f"no DeepSpeed checkpoint {root}/{tag}")
        rng_file = Path(root) / tag / f"rng_rank{self.rank}.pt"
        if rng_file.is_file():
            ckpt.set_rng_state(torch.load(rng_file, weights_only=False))

    def save_hf(self, out_dir: str) -> None:
        state_dict = ckpt.full_state_dict(self.engine)  # every rank: ZeRO-3 gathers shards
        if self.rank == 0:
            from rlhf.models.tokenizer import load_tokenizer

            module, state_dict = self.hf_module(state_dict)
            ckpt.save_hf_dir(module, state_dict, load_tokenizer(self.spec.tokenizer_path), out_dir)
        collectives.barrier()

    def hf_module(self, state_dict: dict) -> tuple[torch.nn.Module, dict]:
        return self.engine.module, state_dict


class ActorWorker(TrainedRole):
    """The policy: samples rollouts with its own weights and takes clipped policy-gradient steps."""

    def setup(self) -> None:
        from rlhf.models.loading import load_causal_lm
        from rlhf.models.tokenizer import load_tokenizer

        from rlhf.models.lora import prepare_for_training

        with self.loading():
            model = load_causal_lm(self.spec.model_path)
        model = prepare_for_training(model, self.spec.lora, self.spec.gradient_checkpointing)
        tok = load_tokenizer(self.spec.tokenizer_path)
        self.eos_id, self.pad_id = tok.eos_token_id, tok.pad_token_id
        self.build(model)

    def generate(self, prompts: list[list[int]], seed: int) -> tuple[list[list[int]], dict | None, dict[str, float]]:
        """(responses, {"logprobs", "entropy"} per response token when they may stand for the old log-probs (see
        ``rollout.old_logprobs``) else None, timings)."""
        from rlhf.ppo.rollout import generate

        out, timings = generate(self.engine, prompts, self.spec.rollout, self.eos_id, self.pad_id, seed + self.rank)
        keep = self.sampler_logprobs() and not out.truncated  # a cut prompt: the rollout holds the whole prompt
        return out.tokens, ({"logprobs": out.logprobs, "entropy": out.entropy} if keep else None), timings

    def sampler_logprobs(self) -> bool:
        """Whether the sampler's log-probs are the old log-probs: ``rollout.old_logprobs``, auto = the actor in fp32
        (bf16 rounding makes a KV-cached decode step and a full forward differ; fp32 agrees to ~1e-6)."""
        mode = self.spec.rollout.old_logprobs
        if mode == "auto":
            return resolve_precision(self.spec.deepspeed, self.dev.type == "cuda") == "fp32"
        return mode == "sampler"

    @torch.no_grad()
    def logprobs(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """Old log-probs and per-token entropy [B, R] of the policy that sampled ``rollout``."""
        self.engine.eval()
        logp, ent = batched_logprobs(self.engine, self.to_dev(rollout), self.spec.rollout.temperature,
                                     self.spec.rollout.forward_batch_size, with_entropy=True)
        self.engine.train()
        return cpu(logp), cpu(ent)

    def loss_weighting(self) -> str:
        # The policy term's aggregation decides (the entropy bonus, a token mean, is a small extra term).
        return "tokens" if ESTIMATORS[self.spec.algo.estimator].loss_agg == "token_mean" else "rows"

    @torch.no_grad()
    def ref_logprobs(self, rollout: Rollout) -> torch.Tensor:
        """With LoRA: the reference's log-probs [B, R] from this actor's base weights, its adapters switched off."""
        from rlhf.models.lora import adapters_disabled

        self.engine.eval()
        with adapters_disabled(self.engine.module):
            logp, _ = batched_logprobs(self.engine, self.to_dev(rollout), self.spec.rollout.temperature,
                                       self.spec.rollout.forward_batch_size)
        self.engine.train()
        return cpu(logp)

    def hf_module(self, state_dict: dict) -> tuple[torch.nn.Module, dict]:
        if self.spec.lora is None:
            return self.engine.module, state_dict
        from rlhf.models.lora import merge_lora_state_dict

        return self.engine.module, merge_lora_state_dict(state_dict, self.spec.lora.scaling)

    def loss(self, engine, batch: Experience):
        algo, mask = self.spec.algo, batch.rollout.response_mask
        agg, horizon = ESTIMATORS[algo.estimator].loss_agg, self.spec.rollout.max_new_tokens
        logits = response_logits(engine, batch.rollout)
        logp = response_logprobs(logits, batch.rollout, self.spec.rollout.temperature)
        loss, stats = policy_loss(logp, batch.old_logp, batch.advantages, mask, algo.clip_eps, algo.dual_clip,
                                  agg, horizon)
        stats["policy_loss"] = loss.detach()
        if algo.kl_in == "loss":
            # GRPO (Shao et al. 2024, eq. 3): + beta * D_KL(pi || pi_ref) in the objective, estimated per token on
            # the current policy's log-probs (k3 in the paper), so its gradient pulls the policy back.
            kl = aggregate(kl_penalty(logp, batch.ref_logp, algo.kl_estimator), mask, agg, horizon)
            loss = loss + self.kl_coef * kl
            stats["kl_loss"] = kl.detach()
        if algo.entropy_coef > 0:
            bonus, entropy = entropy_bonus(entropy_from_logits(logits / self.spec.rollout.temperature), mask,
                                           algo.entropy_coef)
            loss = loss + bonus
            stats["train_entropy"] = entropy
        return loss, stats


class CriticWorker(TrainedRole):
    """The value function: per-token values from a reward-model-shaped network, clipped value loss."""

    def setup(self) -> None:
        from rlhf.reward.model import TokenValues, load_reward_model
        from rlhf.models.tokenizer import load_tokenizer

        tok = load_tokenizer(self.spec.tokenizer_path)
        from rlhf.models.lora import prepare_for_training

        with self.loading():
            classifier = load_reward_model(self.spec.model_path, pad_token_id=tok.pad_token_id)
        # With LoRA the value head is new or RM-trained: it trains whole, beside the adapters (as in the rm stage).
        classifier = prepare_for_training(classifier, self.spec.lora, self.spec.gradient_checkpointing,
                                          modules_to_save=["score"])
        self.build(TokenValues(classifier))

    @torch.no_grad()
    def values(self, rollout: Rollout) -> torch.Tensor:
        self.engine.eval()
        v = batched_values(self.engine, self.to_dev(rollout), self.spec.rollout.forward_batch_size)
        self.engine.train()
        return cpu(v)

    def loss(self, engine, batch: Experience):
        values = response_token_values(engine, batch.rollout)
        loss, stats = value_loss(values, batch.old_values, batch.returns, batch.rollout.response_mask,
                                 self.spec.algo.value_clip)
        stats["value_loss"] = loss.detach()
        return loss, stats

    def hf_module(self, state_dict: dict) -> tuple[torch.nn.Module, dict]:
        from rlhf.models.lora import merge_lora_state_dict
        from rlhf.reward.model import unwrap_state_dict

        state_dict = unwrap_state_dict(state_dict)
        if self.spec.lora is not None:
            state_dict = merge_lora_state_dict(state_dict, self.spec.lora.scaling)
        return self.engine.module.classifier, state_dict


class ReferenceWorker(RoleWorker):
    """The frozen SFT policy; its log-probs anchor the KL penalty. ZeRO-3 sharded for inference if asked."""

    def setup(self) -> None:
        from rlhf.models.loading import load_for_inference

        if self.spec.deepspeed.zero_stage != 3:
            self.model = load_for_inference(self.spec.model_path, "causal_lm", self.inference_precision(), self.dev)
            return
        with partitioned(zero3_config(self.spec.deepspeed, None)):  # each rank builds only its shard
            model = load_for_inference(self.spec.model_path, "causal_lm", self.inference_precision(), "keep")
        self.model = build_engine(model, self.spec.deepspeed, None, 1, trainable=False)

    @torch.no_grad()
    def logprobs(self, rollout: Rollout) -> torch.Tensor:
        logp, _ = batched_logprobs(self.model, self.to_dev(rollout), self.spec.rollout.temperature,
                                   self.spec.rollout.forward_batch_size)
        return cpu(logp)


def sequence_texts(rollout: Rollout, tokenizer) -> tuple[list[str], list[str]]:
    """(queries, prompts) for OpenRLHF's /get_reward: each whole sequence as the policy saw it (the templated prompt,
    bos included, then the response with its eos when it stopped) and the templated prompt alone, both decoded with
    special tokens kept, as OpenRLHF's own rollout builds its query."""
    width, queries, prompts = rollout.prompt_width, [], []
    for ids, mask, response_mask in zip(rollout.input_ids.tolist(), rollout.attention_mask.tolist(),
                                        rollout.response_mask.tolist()):
        prompt = [t for t, m in zip(ids[:width], mask[:width]) if m]  # left padding dropped
        response = ids[width:width + int(sum(response_mask))]
        prompts.append(tokenizer.decode(prompt, skip_special_tokens=False))
        queries.append(tokenizer.decode(prompt + response, skip_special_tokens=False))
    return queries, prompts


class RewardWorker(RoleWorker):
    """Scores responses: a weighted sum of a reward model, a remote service and a Python function (any of them)."""

    def setup(self) -> None:
        from rlhf.models.tokenizer import load_tokenizer
        from rlhf.reward.combined import build_sources
        from rlhf.reward.functions import load_reward_function

        self.tokenizer = load_tokenizer(self.spec.tokenizer_path)
        self.sources = build_sources(self.spec.reward, self.dev, self.spec.rollout.forward_batch_size,
                                     self.inference_precision())
        self.eval_function = (load_reward_function(self.spec.eval_function, "eval.function")
                              if self.spec.eval_function else None)

    def response_texts(self, rollout: Rollout) -> list[str]:
        """Each response's tokens up to its end, EOS dropped, decoded."""
        out = []
        for ids, mask in zip(rollout.response_ids.tolist(), rollout.response_mask.tolist()):
            ids = ids[: int(sum(mask))]
            if ids and ids[-1] == self.tokenizer.eos_token_id:
                ids = ids[:-1]
            out.append(self.tokenizer.decode(ids, skip_special_tokens=True))
        return out

    def score(self, rollout: Rollout, prompt_messages: list[list[dict]], prompt_texts: list[str],
              records: list[dict], with_eval: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """([B] combined scores, {source name: [B] its own scores}); with ``with_eval`` also "eval_function"."""
        from rlhf.reward.combined import combine
        from rlhf.reward.functions import call_reward_function

        responses = self.response_texts(rollout)
        sequences = sequence_texts(rollout, self.tokenizer)  # for OpenRLHF's /get_reward: what the policy saw
        parts = {name: source(prompt_messages, prompt_texts, responses, records, sequences)
                 for name, source in self.sources}
        total = combine(parts, self.spec.reward.weights)
        if with_eval and self.eval_function is not None:
            parts["eval_function"] = torch.tensor(call_reward_function(
                self.eval_function, prompt_texts, responses, records, self.spec.eval_kwargs), dtype=torch.float32)
        return total, parts
