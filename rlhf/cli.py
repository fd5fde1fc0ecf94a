"""The ``rlhf`` command. Bad input prints one line and exits 2; never a traceback for a user's mistake."""

from __future__ import annotations

import argparse
import importlib
import sys

from rlhf.commands import COMMANDS
from rlhf.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhf",
        description="Reproducible RLHF: collect -> SFT -> reward model -> PPO, on DeepSpeed and Ray.",
        epilog="`rlhf run` runs the embedded default pipeline offline. `rlhf COMMAND --help` for details.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"rlhf.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"rlhf.commands.{name}":
                continue  # not built in this checkout
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come before or after options; argparse leaves interleaved ones unparsed.
    args, extra = parser.parse_known_args(argv)
    if extra:
        bad = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
        if bad:
            parser.error(f"unrecognized arguments: {' '.join(bad)}")
        args.overrides = list(args.overrides or []) + extra
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"rlhf: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rlhf: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
