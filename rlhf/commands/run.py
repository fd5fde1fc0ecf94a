"""``rlhf run [PIPELINE] [--out DIR] [--from STAGE] [STAGE.key.sub=value ...]``: run a pipeline's stages in order.

PIPELINE is a shipped name (see ``rlhf run --list``) or a pipeline YAML; without one, the embedded default full
RLHF pipeline runs offline. Stages already done with the same config and inputs are skipped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rlhf.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run",
        help="run a pipeline (default: the embedded full RLHF pipeline, offline)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pipeline", nargs="?", help="shipped pipeline name or pipeline YAML (default: rlhf)")
    p.add_argument("--out", "-o", help="output directory (default: runs/<pipeline name>)")
    p.add_argument("--from", dest="from_stage", metavar="STAGE", help="rerun this stage and every stage after it")
    p.add_argument("--check", action="store_true", help="validate the pipeline and its stage configs; run nothing")
    p.add_argument("--list", action="store_true", help="list the shipped pipelines")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="show Ray's, DeepSpeed's and torch's messages too (default: only in OUT/rlhf.log)")
    p.add_argument("overrides", nargs="*", help="STAGE.key.sub=value overrides, e.g. rm.optim.lr=1e-4")
    p.set_defaults(func=main)


def split_pipeline_arg(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """argparse puts a first override into ``pipeline`` when no PIPELINE is given; move it back."""
    pipeline, overrides = args.pipeline, list(args.overrides or [])
    if pipeline and "=" in pipeline and not pipeline.endswith((".yaml", ".yml")):
        return None, [pipeline, *overrides]
    return pipeline, overrides


def list_pipelines() -> None:
    from rlhf.pipeline.shipped import describe, shipped_pipelines

    shipped = shipped_pipelines()
    width = max((len(n) for n in shipped), default=0)
    for name, path in shipped.items():
        print(f"{name.ljust(width)}  {describe(path)}")


def main(args: argparse.Namespace) -> int:
    from rlhf.console import quiet_console
    from rlhf.pipeline.runner import StageFailed, run_pipeline
    from rlhf.pipeline.shipped import find_pipeline
    from rlhf.pipeline.spec import load_pipeline, validate_stages

    if args.list:
        list_pipelines()
        return 0
    name, overrides = split_pipeline_arg(args)
    pipeline = load_pipeline(find_pipeline(name), overrides)
    if args.check:
        validate_stages(pipeline)
        print(f"[rlhf] {pipeline.source}: valid; stages {' -> '.join(pipeline.names())}")
        return 0
    out = args.out or f"runs/{pipeline.name}"
    with quiet_console(Path(out), args.verbose) as log:
        try:
            run_pipeline(pipeline, out, from_stage=args.from_stage)
        except StageFailed as err:
            where = f" (traceback and library messages: {log})" if log and not isinstance(err.cause, UserError) else ""
            print(f"rlhf: error: {err}{where}", file=sys.stderr)
            return 2 if isinstance(err.cause, UserError) else 1
    return 0
