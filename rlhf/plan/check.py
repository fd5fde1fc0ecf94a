"""Pre-flight memory check: every stage that will train on GPUs plans itself first and refuses a plan that does not
fit, in one line with the keys that would make it fit. ``resources.memory_check=false`` lets an expert go on anyway.

Cheap (configs only, no weights, no Ray) and silent on CPU runs: it runs only when the stage asks for GPUs
(``resources.use_gpu``: true, or auto on a driver that sees a CUDA device) and sizes the plan by the driver's GPU.
"""

from __future__ import annotations

import math

from rlhf.errors import UserError

SKIP_KEY = "resources.memory_check=false"


def driver_gpus() -> tuple[int, int]:
    """(CUDA devices the driver sees, bytes of the first one); (0, 0) without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return 0, 0
    return torch.cuda.device_count(), torch.cuda.get_device_properties(0).total_memory


def memory_check(stage: str, cfg, log=print) -> None:
    """Raise a one-line UserError when the stage's plan does not fit its GPUs; print the plan's peak otherwise."""
    from rlhf.plan.estimate import Hardware, estimate_stage, gib

    res = cfg.resources
    if not res.memory_check or res.use_gpu is False:
        return
    count, total = driver_gpus()
    if count == 0:
        if res.use_gpu is True:
            log(f"[rlhf] {stage}: memory check skipped: this driver sees no GPU to size it by "
                f"(run `rlhf plan` with --gpus/--gpu-mem)")
        return
    workers = sum(getattr(res, k) for k in ("num_workers", "actor_workers", "critic_workers", "ref_workers",
                                            "reward_workers") if hasattr(res, k))
    # Placement (GPU counts) is Ray's to check; here only memory per GPU, so give the plan enough nodes.
    hw = Hardware(gpus_per_node=count, nodes=max(1, math.ceil(workers / count)), gpu_mem=total)
    plan = estimate_stage(stage, cfg, hw)
    peak = f"{gib(plan.gpu_peak)} of {gib(total)} GiB per GPU"
    if plan.gpu_peak > total:
        fix = f"set {plan.suggestions[0]}" if plan.suggestions else "use more GPUs or a smaller model"
        raise UserError(f"{stage}: the memory plan does not fit: {peak}; {fix}; see `rlhf plan`, or set {SKIP_KEY} "
                        "to start anyway")
    note = " (tight: under 10% free)" if plan.verdict == "tight" else ""
    log(f"[rlhf] {stage}: memory plan: peak {peak}, {plan.headroom:.0%} free{note}", flush=True)
