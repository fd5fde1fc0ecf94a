"""``rlhf stage NAME --config FILE --out DIR [key.sub=value ...]``: run one stage."""

from __future__ import annotations

import argparse
import textwrap

from rlhf.config import describe_fields, load_config


def add_parser(sub) -> None:
    p = sub.add_parser(
        "stage",
        help="run one stage (collect, sft, rm, ppo, eval)",
        description="Run one stage. `rlhf stage NAME --help` lists its config keys.",
        add_help=False,
    )
    p.add_argument("name", nargs="?", help="stage name")
    p.add_argument("--config", "-c", help="stage YAML (see `rlhf configs`)")
    p.add_argument("--out", "-o", help="output directory")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.add_argument("-h", "--help", action="store_true", help="show this help (with a NAME: its config keys)")
    p.set_defaults(func=main, parser=p)


def stage_help(name: str) -> str:
    from stages import load_stage

    module = load_stage(name)
    doc = (module.__doc__ or "").strip()
    rows = describe_fields(module.Config)
    width = max(len(k) for k, _, _ in rows)
    lines = [doc, "", "usage: rlhf stage " + name + " --config FILE --out DIR [key.sub=value ...]", "", "config keys:"]
    for key, default, desc in rows:
        lines.append(f"  {key.ljust(width)}  {desc} [default: {default}]")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from rlhf.manifest import make_out_dir
    from stages import STAGES, load_stage

    if args.help or not args.name:
        if args.name:
            print(stage_help(args.name))
        else:
            args.parser.print_help()
            print("\nstages: " + ", ".join(STAGES))
        return 0
    if not args.out:
        args.parser.error("--out is required")
    module = load_stage(args.name)
    cfg = load_config(module.Config, args.config, args.overrides)
    make_out_dir(args.out)  # before the stage loads models or starts workers
    manifest = module.run(cfg, args.out)
    metrics = manifest.get("metrics", {})
    print(textwrap.shorten(f"[rlhf] {args.name} complete: {metrics}", 400))
    return 0
