"""Will it fit? Peak GPU and host memory of each stage and role, from configs alone (``rlhf plan``, pre-flight check).

    from rlhf.plan import Hardware, estimate_stage
    plan = estimate_stage("sft", cfg, Hardware(gpus_per_node=8, gpu_mem=80 * GiB))
    plan.verdict, plan.gpu_peak, plan.to_dict()   # bytes; to_dict() is the JSON form
"""

from rlhf.plan.estimate import Hardware, StagePlan, estimate_stage
from rlhf.plan.memory import GiB

__all__ = ["GiB", "Hardware", "StagePlan", "estimate_stage"]
