"""One program per stage. Each module exposes ``Config`` (a pydantic model) and ``run(cfg, out) -> manifest``.

The CLI (``rlhf stage NAME``) and the pipeline runner both call that same ``run``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from rlhf.errors import UserError

STAGES = {
    "collect": "stages.collect",
    "sft": "stages.sft",
    "rm": "stages.rm",
    "dpo": "stages.dpo",
    "ppo": "stages.ppo",
    "eval": "stages.eval",
}


def load_stage(name: str) -> ModuleType:
    if name not in STAGES:
        raise UserError(f"unknown stage '{name}'; stages: {', '.join(STAGES)}")
    return importlib.import_module(STAGES[name])

