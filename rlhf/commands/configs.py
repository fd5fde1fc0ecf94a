"""``rlhf configs``: every shipped config with its one-line description (the YAML's first comment line)."""

from __future__ import annotations

from rlhf.config import yaml_header
from rlhf.paths import CONFIGS_DIR


def shipped_configs() -> list:
    return sorted(CONFIGS_DIR.rglob("*.yaml"))


def add_parser(sub) -> None:
    p = sub.add_parser("configs", help="list shipped configs", description=__doc__)
    p.set_defaults(func=main)


def main(args) -> int:
    files = shipped_configs()
    width = max((len(str(f.relative_to(CONFIGS_DIR.parent))) for f in files), default=0)
    for f in files:
        header = yaml_header(f)
        print(f"{str(f.relative_to(CONFIGS_DIR.parent)).ljust(width)}  {header[0] if header else ''}")
    return 0
