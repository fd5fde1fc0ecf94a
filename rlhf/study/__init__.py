"""``rlhf study``: every method from the same SFT model and the same preference pairs, per seed, then one table.

Per seed, into OUT/seed-<k>/ (each method its own pipeline directory, so every run is an ordinary `rlhf run`):

  ppo           the shipped ``rlhf`` pipeline (SFT -> preferences -> RM -> PPO -> eval); its sft, prefs and rm
                stages are the shared upstream of every other method
  dpo           ``dpo`` (-> DPO -> eval) on the same pairs
  grpo          ``grpo`` (-> GRPO against the same RM -> eval)
  grpo_oracle   ``grpo-verifiable`` (SFT -> GRPO against the oracle as a verifiable reward -> eval)
  bon4, bon16   the eval stage alone: the SFT policy, best of n by the RM at sampling time

The shared stages are copied into each method's directory before it runs, with their pipeline.json records; the
pipeline runner then skips them as complete and unchanged (a copied artifact with the same content hash is not a
change), so every method reads the very SFT model, pairs and RM of the PPO run. ``study.json`` lists any shared
stage whose output hash differs from the PPO run's (a rerun: none is expected). Every method's stages get the
seed: ``sft.train.seed``, ``prefs.preferences.seed`` and its judge's noise seed, ``rm.train.seed``,
``ppo/grpo.loop.seed``, ``dpo.train.seed``, and the eval's sampling and RM-pair seeds.

The methods' settings are the shipped pipelines' own, tuned (once) on the embedded task world; held-out prompts are
only evaluated.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

SHARED = ("sft", "prefs", "rm")


@dataclass(frozen=True)
class Method:
    name: str  # row name in the study, and the directory under OUT/seed-<k>/
    label: str  # how the report names it
    pipeline: str | None  # shipped pipeline to run, or None for an eval-only method (best-of-n)
    trained: str | None  # the pipeline's stage that trains the policy
    shared: tuple[str, ...] = ()  # stages copied from the ppo run before this one runs
    best_of: int = 1


METHODS = (
    Method("ppo", "PPO (RM)", "rlhf", "ppo"),
    Method("dpo", "DPO", "dpo", "dpo", ("sft", "prefs")),
    Method("grpo", "GRPO (RM)", "grpo", "grpo", SHARED),
    Method("grpo_oracle", "GRPO (oracle reward)", "grpo-verifiable", "grpo", ("sft",)),
    Method("bon4", "best-of-4 (RM)", None, None, best_of=4),
    Method("bon16", "best-of-16 (RM)", None, None, best_of=16),
)
METHOD_NAMES = [m.name for m in METHODS]


def seed_overrides(stage_names: list[str], seed: int) -> list[str]:
    """The seed keys of every stage a pipeline has (names as the shipped pipelines use them)."""
    keys = {"sft": ["sft.train.seed"], "prefs": ["prefs.preferences.seed", "prefs.preferences.judge.seed"],
            "rm": ["rm.train.seed"], "ppo": ["ppo.loop.seed"], "grpo": ["grpo.loop.seed"], "dpo": ["dpo.train.seed"],
            "eval": ["eval.sampling.seed", "eval.rm_pairs.seed"]}
    return [f"{k}={seed}" for name in stage_names for k in keys.get(name, [])]


def run_method(method: Method, root: Path, seed: int, overrides: list[str], log: Callable[[str], None]) -> Path:
    """Run one method for one seed into root/<method>; returns that directory."""
    from rlhf.pipeline.runner import run_pipeline
    from rlhf.pipeline.shipped import find_pipeline
    from rlhf.pipeline.spec import load_pipeline

    out = root / method.name
    if method.pipeline is None:
        return run_best_of(method, root, log)
    base = load_pipeline(find_pipeline(method.pipeline))
    mine = [o for o in overrides if o.split(".", 1)[0] in base.names()]
    pipeline = load_pipeline(find_pipeline(method.pipeline), seed_overrides(base.names(), seed) + mine)
    share_stages(root / "ppo", out, method.shared)
    log(f"[rlhf] study seed {seed}: {method.label} ({method.pipeline}) -> {out}")
    run_pipeline(pipeline, out, log=log)
    return out


def share_stages(src: Path, dst: Path, stages: tuple[str, ...]) -> None:
    """Copy ``stages``' directories from the pipeline run in ``src`` into ``dst``, with their pipeline.json records
    (the references they read and those artifacts' hashes), so that dst's runner skips them as unchanged."""
    from rlhf.manifest import write_json_atomic
    from rlhf.pipeline.runner import STATE_FILE

    records = json.loads((src / STATE_FILE).read_text())["stages"] if (src / STATE_FILE).is_file() else {}
    state = json.loads((dst / STATE_FILE).read_text()) if (dst / STATE_FILE).is_file() else {"stages": {}}
    for stage in stages:
        if (src / stage).is_dir() and not (dst / stage).exists():
            shutil.copytree(src / stage, dst / stage)
            if stage in records:
                state["stages"][stage] = records[stage]
    dst.mkdir(parents=True, exist_ok=True)
    write_json_atomic(dst / STATE_FILE, state)


def run_best_of(method: Method, root: Path, log: Callable[[str], None]) -> Path:
    """The eval stage alone, with the PPO row's exact eval settings: the SFT policy, best of n by the RM."""
    from rlhf.manifest import read_manifest
    from stages import eval as eval_stage

    reference = json.loads((root / "ppo" / "eval" / "manifest.json").read_text())["config"]
    cfg = eval_stage.Config.model_validate({
        **reference, "policy": str(root / "ppo" / "sft" / "model"), "policy_name": method.name,
        "sampling": {**reference["sampling"], "best_of": method.best_of},
    })
    out = root / method.name
    done = read_manifest(out)
    if done and done.get("status") == "complete" and done.get("config") == cfg.model_dump(mode="json"):
        log(f"[rlhf] study: {method.label}: skipped (complete; same eval config) -> {out}")
        return out
    log(f"[rlhf] study: {method.label} -> {out}")
    eval_stage.run(cfg, out)
    return out


def run_study(seeds: list[int], out: Path, methods: list[str] | None = None, overrides: list[str] | None = None,
              log: Callable[[str], None] = print) -> dict:
    """Every method for every seed, then the aggregate (study.json/md/png in ``out``); returns study.json."""
    from rlhf.errors import UserError
    from rlhf.study.report import write_study

    chosen = methods or METHOD_NAMES
    unknown = sorted(set(chosen) - set(METHOD_NAMES))
    if unknown:
        raise UserError(f"study: unknown method(s) {', '.join(unknown)}; known: {', '.join(METHOD_NAMES)}")
    if "ppo" not in chosen:
        raise UserError("study: the ppo method is needed (its run makes the SFT model, pairs and RM the others share)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "study-config.json").write_text(json.dumps({"seeds": seeds, "methods": chosen,
                                                       "overrides": overrides or []}, indent=1) + "\n")
    for seed in seeds:
        root = out / f"seed-{seed}"
        for method in METHODS:
            if method.name in chosen:
                run_method(method, root, seed, overrides or [], log)
    return write_study(out, seeds, [m for m in METHODS if m.name in chosen])
