"""Per-stage, per-role peak memory per GPU and per host, from a stage config and the hardware; no weights loaded.

``estimate_stage(stage, cfg, hardware)`` is the one entry point (``rlhf plan``, the stages' pre-flight check and the
GPU comparison script all call it). It returns a ``StagePlan`` whose ``to_dict()`` is the JSON form, all in bytes.

A GPU's peak is the sum of the states of every role it holds plus, for the phase that needs most, the sum of those
roles' transient memory in that phase: PPO generates (actor: gathered weights, KV cache), scores (every role's
no-grad forward) and trains (actor and critic activations) one phase after another.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from rlhf.errors import UserError
from rlhf.plan import memory as mem
from rlhf.plan.model_size import ModelShape, model_shape

# "fits" needs this share of each GPU free; between 0 and this the plan is "tight" (runs, with a warning).
HEADROOM = 0.10
PLANNED_STAGES = ("sft", "rm", "dpo", "ppo")


@dataclass(frozen=True)
class Hardware:
    gpus_per_node: int = 8
    nodes: int = 1
    gpu_mem: int = 80 * mem.GiB
    host_mem: int | None = None  # per node; None = not checked

    @property
    def gpus(self) -> int:
        return self.gpus_per_node * self.nodes

    def layout(self, workers: int) -> tuple[int, int]:
        """(GPUs per node, nodes) that ``workers`` data-parallel ranks span when packed onto whole nodes."""
        per_node = min(workers, self.gpus_per_node)
        return per_node, math.ceil(workers / per_node)


@dataclass
class RoleMemory:
    """One role's bytes on each of its GPUs (states and per-phase transients) and on its host."""

    role: str
    model: str
    params: int
    trainable: int
    workers: int
    weights: int = 0
    gradients: int = 0
    optimizer_states: int = 0
    activations: int = 0  # the larger of training and scoring activations
    gathered_weights: int = 0  # ZeRO-3: the full 16-bit weights gathered for generation
    kv_cache: int = 0
    host: int = 0
    transients: dict[str, int] = field(default_factory=dict)  # phase -> bytes on top of the states
    asleep: int = 0  # bytes of the states moved to the host while the actor generates (offload_while_generating)

    @property
    def states(self) -> int:
        return self.weights + self.gradients + self.optimizer_states

    @property
    def peak(self) -> int:
        return self.states + max(self.transients.values(), default=0) + mem.RESERVED_BYTES

    def to_dict(self) -> dict:
        return {**asdict(self), "states": self.states, "peak": self.peak}


@dataclass
class GpuGroup:
    """GPUs that hold the same roles (a colocated set of bundles); ``peak`` is per GPU."""

    roles: list[str]
    gpus: int
    peak: int
    phase: str


@dataclass
class StagePlan:
    name: str
    stage: str
    hardware: Hardware
    roles: list[RoleMemory]
    groups: list[GpuGroup]
    gpus_needed: int
    host_peak: int
    notes: list[str] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)

    @property
    def gpu_peak(self) -> int:
        return max(g.peak for g in self.groups)

    @property
    def headroom(self) -> float:
        """Free share of a GPU at the peak (negative: over by that share)."""
        return 1 - self.gpu_peak / self.hardware.gpu_mem

    @property
    def problems(self) -> list[str]:
        hw, out = self.hardware, []
        if self.gpus_needed > hw.gpus:
            out.append(f"needs {self.gpus_needed} GPUs, the plan has {hw.gpus}")
        if self.gpu_peak > hw.gpu_mem:
            out.append(f"{gib(self.gpu_peak)} GiB per GPU > {gib(hw.gpu_mem)} GiB")
        if hw.host_mem is not None and self.host_peak > hw.host_mem:
            out.append(f"{gib(self.host_peak)} GiB per host > {gib(hw.host_mem)} GiB")
        return out

    @property
    def verdict(self) -> str:
        if self.problems:
            return "does not fit"
        return "fits" if self.headroom >= HEADROOM else "tight"

    def to_dict(self) -> dict:
        return {"name": self.name, "stage": self.stage, "hardware": asdict(self.hardware),
                "roles": [r.to_dict() for r in self.roles], "groups": [asdict(g) for g in self.groups],
                "gpus_needed": self.gpus_needed, "gpu_peak": self.gpu_peak, "host_peak": self.host_peak,
                "headroom": self.headroom, "verdict": self.verdict, "problems": self.problems,
                "notes": self.notes, "suggestions": self.suggestions}


def gib(n: float) -> str:
    return f"{n / mem.GiB:.1f}"


def gpu_precision(precision: str) -> str:
    """The precision a stage trains in on GPUs: 'auto' is bf16 there (rlhf.engine.deepspeed_config)."""
    return "bf16" if precision == "auto" else precision


def trained_role(role: str, model: str, shape: ModelShape, params: int, trainable: int, ds, hw: Hardware,
                 workers: int, micro_batch: int, seq: int, checkpointing: bool, logit_tokens: int,
                 kernels: str = "hf") -> RoleMemory:
    per_node, nodes = hw.layout(workers)
    states = mem.trained_states(params, trainable, shape.largest_layer_params(), gpu_precision(ds.precision),
                                ds.zero_stage, ds.offload_optimizer, ds.offload_params, per_node, nodes)
    acts = mem.training_activation_bytes(shape, micro_batch, seq, checkpointing, logit_tokens, kernels=kernels)
    return RoleMemory(role, model, params, trainable, workers, states.weights, states.gradients,
                      states.optimizer_states, acts, host=states.host, transients={"train": acts})


def lora_trainable(shape: ModelShape, lora, head_params: int = 0) -> int:
    return shape.lora_params(lora.r, list(lora.target_modules)) + head_params


def estimate_supervised(name: str, stage: str, cfg, hw: Hardware) -> StagePlan:
    """SFT (causal LM, logits on every position), RM (pairs: 2 sequences per example, a [1, h] score head) or DPO
    (pairs through the causal LM, plus a frozen reference engine when it keeps one)."""
    shape = model_shape(cfg.model.path, cfg.model.tokenizer)
    ds, workers = cfg.deepspeed, cfg.resources.num_workers
    if stage == "sft":
        params, seqs, logit_tokens, head = shape.causal_lm_params(), ds.micro_batch_size, cfg.data.max_length, 0
    elif stage == "dpo":  # chosen and rejected of each pair (one row each for KTO), log-probs over every position
        seqs = ds.micro_batch_size * (1 if cfg.loss.kind == "kto" else 2)
        params, logit_tokens, head = shape.causal_lm_params(), cfg.data.max_length, 0
    else:
        params, seqs, logit_tokens, head = shape.value_model_params(), 2 * ds.micro_batch_size, 0, shape.hidden_size
    trainable = lora_trainable(shape, cfg.lora, head) if cfg.lora is not None else params
    kernels = getattr(cfg.model, "kernels", "hf") if stage == "sft" else "hf"  # only SFT applies model.kernels
    if kernels == "liger":
        logit_tokens = 0  # fused linear cross-entropy: logits only chunk by chunk, never the whole [B, T, V]
    role = trained_role("model", cfg.model.path, shape, params, trainable, ds, hw, workers, seqs,
                        cfg.data.max_length, cfg.model.gradient_checkpointing, logit_tokens, kernels)
    notes = [f"{shape.name}: {params:,} params" + (f", {trainable:,} trained (LoRA)" if trainable < params else "")]
    roles = [role]
    if stage == "dpo" and dpo_reference_engine(cfg):
        # A frozen reference engine beside the policy on every worker (live, or a separate reference.path).
        ref_path = cfg.reference.path or cfg.model.path
        ref_shape = model_shape(ref_path, cfg.model.tokenizer)
        roles.append(frozen_role("reference", ref_path, ref_shape, ref_shape.causal_lm_params(), ds, hw, workers,
                                 seqs, cfg.data.max_length, cfg.data.max_length))
        notes.append(f"reference ({cfg.reference.mode}): a frozen copy on every worker")
    phases = {p: sum(r.states + r.transients.get(p, 0) for r in roles) for p in ("train", "score")}
    phase = max(phases, key=lambda p: phases[p])
    group = GpuGroup([r.role for r in roles], workers, phases[phase] + mem.RESERVED_BYTES, phase)
    return StagePlan(name, stage, hw, roles, [group], workers, sum(r.host for r in roles), notes)


def dpo_reference_engine(cfg) -> bool:
    """Whether DPO builds a second (reference) engine: a live reference, or a precomputed one from another path
    (a precomputed reference of the initial policy is the policy engine itself, before training)."""
    from rlhf.dpo.losses import REFERENCE_FREE

    if cfg.loss.kind in REFERENCE_FREE:
        return False
    return cfg.reference.mode == "live" or cfg.reference.path is not None


def frozen_role(role: str, model: str, shape: ModelShape, params: int, ds, hw: Hardware, workers: int, batch: int,
                seq: int, logit_tokens: int) -> RoleMemory:
    per_node, nodes = hw.layout(workers)
    states = mem.frozen_states(params, shape.largest_layer_params(), gpu_precision(ds.precision), ds.zero_stage,
                               per_node, nodes)
    acts = mem.inference_activation_bytes(shape, batch, seq, logit_tokens)
    return RoleMemory(role, model, params, 0, workers, states.weights, activations=acts, host=states.host,
                      transients={"score": acts})


def estimate_ppo(name: str, cfg, hw: Hardware) -> StagePlan:
    """Actor (trains, generates), critic (trains; none with a critic-free estimator), reference and reward (frozen),
    on the placement of ppo.placement."""
    from rlhf.ppo.estimators import ESTIMATORS
    from rlhf.ppo.placement import plan as placement

    res, ds, ro, algo = cfg.resources, cfg.deepspeed, cfg.rollout, cfg.algorithm
    actor_shape = model_shape(cfg.actor.path, cfg.actor.tokenizer)
    critic_path = cfg.critic.path or cfg.reward.model or cfg.actor.path
    critic_shape = model_shape(critic_path, cfg.actor.tokenizer)
    prompt, new = cfg.prompts.max_prompt_length, ro.max_new_tokens
    seq, fwd = prompt + new, ro.forward_batch_size
    lora = getattr(cfg, "lora", None)
    a_params = actor_shape.causal_lm_params()
    a_train = lora_trainable(actor_shape, lora) if lora is not None else a_params
    actor = trained_role("actor", cfg.actor.path, actor_shape, a_params, a_train, ds, hw, res.actor_workers,
                         algo.mini_batch_size // res.actor_workers, seq, cfg.actor.gradient_checkpointing, new + 1)
    score = mem.inference_activation_bytes(actor_shape, fwd, seq, new + 1)
    gen_batch = ro.prompts_per_iteration * ro.samples_per_prompt // res.actor_workers  # a group per prompt
    kv, gen_work = mem.generation_bytes(actor_shape, gen_batch, prompt, new)
    gathered = 2 * a_params if ds.zero_stage == 3 else 0
    actor.gathered_weights, actor.kv_cache = gathered, kv
    actor.activations = max(actor.activations, score)
    actor.transients.update(score=score, generate=gathered + kv + gen_work)
    with_critic = ESTIMATORS[algo.estimator].needs_critic
    c_params = critic_shape.value_model_params()
    c_train = lora_trainable(critic_shape, lora, critic_shape.hidden_size) if lora is not None else c_params
    critic = trained_role("critic", critic_path, critic_shape, c_params, c_train, ds, hw, res.critic_workers,
                          algo.mini_batch_size // res.critic_workers, seq, cfg.critic.gradient_checkpointing, 0)
    c_score = mem.inference_activation_bytes(critic_shape, fwd, seq, 0)
    critic.activations = max(critic.activations, c_score)
    critic.transients["score"] = c_score
    if not with_critic:
        critic = None  # a critic-free estimator places no critic (stages.ppo.uses_critic)
    notes = [f"actor {actor_shape.name}: {a_params:,} params; "
             + (f"critic {critic_path}: {c_params:,}" if with_critic else f"no critic ({algo.estimator})"),
             f"generation: {gen_batch} prompts per actor worker x {prompt}+{new} tokens"]
    if lora is not None:
        # The reference is the actor's base with the adapters off: no second copy of the policy (rlhf.ppo.roles).
        # Its log-probs run on the actor's workers, one after the actor's own: no memory beside the actor's scoring.
        ref = None
        notes.append("LoRA: the reference is the actor's base with its adapters off (no workers, no weights of its own)")
    else:
        ref = frozen_role("ref", cfg.actor.path, actor_shape, a_params, ds, hw, res.ref_workers, fwd, seq, new + 1)
    if cfg.reward.model:
        r_shape = model_shape(cfg.reward.model, cfg.actor.tokenizer)
        # Only ZeRO-3 shards the reward model; otherwise each worker holds it whole (rlhf.models.reward).
        reward = frozen_role("reward", cfg.reward.model, r_shape, r_shape.value_model_params(),
                             ds.model_copy(update={"zero_stage": 0}), hw, res.reward_workers, fwd, seq, 0)
    else:
        reward = RoleMemory("reward", cfg.reward.url or cfg.reward.function or "", 0, 0, res.reward_workers)
    roles = {k: v for k, v in {"actor": actor, "critic": critic, "ref": ref, "reward": reward}.items() if v is not None}
    if res.offload_while_generating:
        for r in (r for r in (actor, critic) if r is not None):
            r.asleep = r.gradients + r.optimizer_states
        notes.append("the actor's and critic's optimizer states and gradients sleep in host memory while generating")
    skip = (() if with_critic else ("critic",)) + (("ref",) if lora is not None else ())
    bundles, slots = placement(res, True, skip=skip)
    by_bundle: dict[int, list[str]] = {}
    for role, role_slots in slots.items():
        for s in role_slots:
            by_bundle.setdefault(s.bundle, []).append(role)
    groups: dict[tuple[str, ...], GpuGroup] = {}
    for held in by_bundle.values():
        key = tuple(r for r in ("actor", "critic", "ref", "reward") if r in held and r in roles)
        if key in groups:
            groups[key].gpus += 1
            continue
        phases = {p: sum(roles[r].states + mem.RESERVED_BYTES + roles[r].transients.get(p, 0)
                         - (roles[r].asleep if p == "generate" else 0) for r in key)
                  for p in ("generate", "score", "train")}
        phase = max(phases, key=lambda p: phases[p])
        groups[key] = GpuGroup(list(key), 1, phases[phase], phase)
    # Host: Ray packs the bundles onto nodes in order; each role's host bytes are per node it has a worker on.
    on_node: dict[int, set[str]] = {}
    for bundle, held in by_bundle.items():
        on_node.setdefault(bundle // hw.gpus_per_node, set()).update(held)
    host = max(sum(roles[r].host for r in held) for held in on_node.values())
    gpus_needed = len(bundles)
    if res.gpus_per_bundle < 1:
        # resources.gpus_per_bundle = 1/k: k bundles share each GPU (Ray packs them in order), so a GPU holds up
        # to k of them; count the k largest together.
        per_gpu = max(1, round(1 / res.gpus_per_bundle))
        gpus_needed = math.ceil(len(bundles) / per_gpu)
        largest = sorted(((g.peak, g) for g in groups.values() for _ in range(g.gpus)), key=lambda x: -x[0])[:per_gpu]
        shared = GpuGroup(sorted({r for _, g in largest for r in g.roles}), gpus_needed,
                          sum(p for p, _ in largest), largest[0][1].phase)
        groups = {("shared",): shared}
        notes.append(f"resources.gpus_per_bundle={res.gpus_per_bundle}: {per_gpu} bundles share each GPU")
    return StagePlan(name, "ppo", hw, list(roles.values()), list(groups.values()), gpus_needed, host, notes)


def estimate_stage(stage: str, cfg, hardware: Hardware | None = None, name: str | None = None,
                   suggest: bool = True) -> StagePlan:
    """The plan of one stage config (a stage module's typed Config) on ``hardware`` (default one 8 x 80 GiB node)."""
    hw = hardware or Hardware()
    if stage == "ppo":
        plan = estimate_ppo(name or stage, cfg, hw)
    elif stage in ("sft", "rm", "dpo"):
        plan = estimate_supervised(name or stage, stage, cfg, hw)
    else:
        raise UserError(f"cannot plan a '{stage}' stage: planned stages are {', '.join(PLANNED_STAGES)}")
    if suggest and plan.verdict != "fits":
        from rlhf.plan.suggest import suggestions

        plan.suggestions = suggestions(stage, cfg, hw)
    return plan
