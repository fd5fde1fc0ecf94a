"""``rlhf plan PIPELINE|STAGE_CONFIG [--gpus N] [--gpu-mem GiB] [--nodes K] [overrides]``: will it fit?

Prints, per stage and per role, the estimated peak memory per GPU (weights, gradients, optimizer states,
activations, gathered weights and KV cache for generation) and per host, then the verdict: fits (with the headroom),
tight (under 10% free), or does not fit, with the keys that would make it fit. Reads configs only, never weights.
Overrides are STAGE.key=value for a pipeline, key=value for a stage YAML.
"""

from __future__ import annotations

import argparse
import json

from rlhf.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("plan", help="estimate peak GPU/host memory per stage and role; say if it fits",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", help="shipped pipeline name, pipeline YAML, or an sft/rm/dpo/ppo stage YAML")
    p.add_argument("--gpus", type=int, default=8, help="GPUs per node (default 8)")
    p.add_argument("--gpu-mem", type=float, default=80.0, help="GiB per GPU (default 80)")
    p.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    p.add_argument("--host-mem", type=float, default=None, help="GiB of host memory per node (default: not checked)")
    p.add_argument("--stage", help="stage type of a stage YAML (default: from its folder or its keys)")
    p.add_argument("--json", action="store_true", help="print the plans as JSON (bytes)")
    p.add_argument("overrides", nargs="*", help="overrides: STAGE.key=value (pipeline) or key=value (stage YAML)")
    p.set_defaults(func=main)


def is_pipeline(path) -> bool:
    from rlhf.config import read_yaml

    return "stages" in read_yaml(path)


def main(args: argparse.Namespace) -> int:
    from rlhf.pipeline.shipped import find_pipeline, shipped_pipelines
    from rlhf.plan import GiB, Hardware
    from rlhf.plan.report import render
    from rlhf.plan.targets import plan_pipeline, plan_stage_file

    if args.gpus < 1 or args.nodes < 1 or args.gpu_mem <= 0:
        raise UserError("--gpus and --nodes must be >= 1 and --gpu-mem > 0")
    hw = Hardware(args.gpus, args.nodes, int(args.gpu_mem * GiB),
                  int(args.host_mem * GiB) if args.host_mem is not None else None)
    overrides = list(args.overrides or [])
    if args.target in shipped_pipelines() or is_pipeline(find_pipeline(args.target)):
        from rlhf.pipeline.spec import load_pipeline

        pipeline = load_pipeline(find_pipeline(args.target), overrides)
        plans, skipped = plan_pipeline(pipeline, hw)
        title = pipeline.name
    else:
        plans, skipped, title = [plan_stage_file(args.target, overrides, hw, args.stage)], [], args.target
    if args.json:
        print(json.dumps({"target": title, "plans": [p.to_dict() for p in plans], "not_planned": skipped}, indent=1))
    else:
        print(render(plans, title, skipped))
    return 0 if all(p.verdict != "does not fit" for p in plans) else 1
