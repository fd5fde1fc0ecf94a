"""``rlhf report DIR``: (re)write DIR/report.md, DIR/report.json and DIR/plots/*.png from a pipeline's outputs."""

from __future__ import annotations

import argparse
import json

from rlhf.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="write report.md/json and plots for a pipeline output directory",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", help="output directory of `rlhf run` (holds pipeline.json)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from rlhf.paths import resolve_path
    from rlhf.report import write_report

    out = resolve_path(args.dir)
    if not out.is_dir():
        raise UserError(f"report: {args.dir} is not a directory")
    report = write_report(out)
    headline = {k: report.get(k) for k in ("oracle_accuracy", "win_rate_ppo_vs_sft", "rm_accuracy_clean",
                                           "kl_ppo_vs_sft", "wall_s", "seed")}
    print(json.dumps(headline, indent=1))
    print(f"[rlhf] report: {out / 'report.md'}, {out / 'report.json'}, plots in {out / 'plots'}")
    return 0
