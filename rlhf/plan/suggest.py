"""What would make a plan fit: candidate override sets, least invasive first, each re-planned; the ones that fit.

The candidates only touch memory keys (gradient checkpointing, micro batch, ZeRO stage, offload, colocation, LoRA),
never the recipe's batch: a smaller micro batch comes with more accumulation steps so the optimizer batch is kept.
"""

from __future__ import annotations

from rlhf.config import apply_overrides, validate
from rlhf.errors import UserError

MAX_SUGGESTIONS = 3


def supervised_candidates(cfg) -> list[list[str]]:
    ds = cfg.deepspeed
    mb, ga = ds.micro_batch_size, ds.gradient_accumulation_steps
    ckpt = ["model.gradient_checkpointing=true"]
    half = [f"deepspeed.micro_batch_size={max(1, mb // 2)}", f"deepspeed.gradient_accumulation_steps={ga * 2}"] \
        if mb > 1 else []
    one = ["deepspeed.micro_batch_size=1", f"deepspeed.gradient_accumulation_steps={ga * mb}"] if mb > 1 else []
    z3, opt, par = ["deepspeed.zero_stage=3"], ["deepspeed.offload_optimizer=true"], ["deepspeed.offload_params=true"]
    lora = ["lora.r=16", "lora.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]"]
    return [ckpt, ckpt + half, z3, ckpt + z3, ckpt + z3 + half, ckpt + z3 + one, ckpt + z3 + opt,
            ckpt + z3 + opt + one, ckpt + z3 + opt + par + one, ckpt + lora, ckpt + lora + z3 + one]


def ppo_candidates(cfg, hw) -> list[list[str]]:
    ckpt = ["actor.gradient_checkpointing=true", "critic.gradient_checkpointing=true"]
    z3, opt = ["deepspeed.zero_stage=3"], ["deepspeed.offload_optimizer=true"]
    # Colocate actor+ref on one half of the GPUs and critic+reward on the other: each model gets twice the ranks.
    n = max(1, hw.gpus // 2)
    coloc = ["resources.colocate_actor_ref=true", "resources.colocate_critic_reward=true",
             *(f"resources.{k}={n}" for k in ("actor_workers", "ref_workers", "critic_workers", "reward_workers"))]
    cands = [ckpt, ckpt + z3, ckpt + z3 + opt, ckpt + coloc, ckpt + z3 + coloc, ckpt + z3 + opt + coloc]
    n_all = max(1, hw.gpus)
    all4 = ["resources.colocate_all=true",
            *(f"resources.{k}={n_all}" for k in ("actor_workers", "ref_workers", "critic_workers", "reward_workers"))]
    sleep = ["resources.offload_while_generating=true"]
    cands += [ckpt + z3 + sleep + coloc, ckpt + z3 + all4, ckpt + z3 + sleep + all4, ckpt + z3 + opt + all4]
    if "lora" in type(cfg).model_fields:
        cands.append(ckpt + ["lora.r=16"])
    return cands


def suggestions(stage: str, cfg, hw) -> list[str]:
    """Up to MAX_SUGGESTIONS override sets (one string each) under which the stage plans as fitting."""
    from rlhf.plan.estimate import estimate_stage, gib

    cands = ppo_candidates(cfg, hw) if stage == "ppo" else supervised_candidates(cfg)
    base = cfg.model_dump(mode="json")
    found: list[str] = []
    for overrides in cands:
        try:
            data = apply_overrides(_copy(base), overrides)
            alt = validate(type(cfg), data, where="suggestion")
            if stage == "ppo":
                from stages.ppo import check_batch_arithmetic

                check_batch_arithmetic(alt)
            plan = estimate_stage(stage, alt, hw, suggest=False)
        except UserError:
            continue  # e.g. counts that no longer divide; not a suggestion
        changes = [o for o in overrides if apply_overrides(_copy(base), [o]) != base]
        text = " ".join(changes)
        if plan.verdict == "fits" and changes and not any(text.startswith(f) for f in found):
            found.append(f"{text} ({gib(plan.gpu_peak)} GiB/GPU, {plan.headroom:.0%} free)")
        if len(found) == MAX_SUGGESTIONS:
            break
    return found


def _copy(d: dict) -> dict:
    import copy

    return copy.deepcopy(d)
