"""``rlhf study [--seeds 0,1,2] [--out DIR] [--methods ppo,dpo,...] [STAGE.key=value ...]``: SFT, best-of-n, DPO,
PPO, GRPO (RM) and GRPO (oracle reward) from the same SFT model and pairs, per seed, then study.md/json/png in DIR.

Overrides apply to every method pipeline that has the named stage (e.g. ``eval.limit=100``, ``ppo.loop.iterations=30``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rlhf.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("study", help="compare every method over seeds on the task world (one table)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--out", "-o", default="runs/study", help="output directory (default runs/study)")
    p.add_argument("--methods", default=None, help="comma-separated subset (ppo is always needed)")
    p.add_argument("--verbose", "-v", action="store_true", help="show Ray's, DeepSpeed's and torch's messages too")
    p.add_argument("overrides", nargs="*", help="STAGE.key=value, applied in every method pipeline with that stage")
    p.set_defaults(func=main)


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"study: --seeds takes comma-separated integers, not '{text}'") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"study: --seeds needs distinct integers, got '{text}'")
    return seeds


def main(args: argparse.Namespace) -> int:
    from rlhf.console import quiet_console
    from rlhf.pipeline.runner import StageFailed
    from rlhf.study import run_study

    seeds = parse_seeds(args.seeds)
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    out = Path(args.out)
    with quiet_console(out, args.verbose) as log:
        try:
            run_study(seeds, out, methods, list(args.overrides or []))
        except StageFailed as err:
            where = f" (traceback and library messages: {log})" if log and not isinstance(err.cause, UserError) else ""
            print(f"rlhf: error: {err}{where}", file=sys.stderr)
            return 2 if isinstance(err.cause, UserError) else 1
    print(f"[rlhf] study: {out / 'study.md'} (table), {out / 'study.json'}, {out / 'study.png'}")
    return 0
