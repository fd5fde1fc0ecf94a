"""Read a pipeline directory into what the report shows: the headline numbers and the training curves.

Stages are found by type through DIR/pipeline.json (written by the runner): the first ``sft`` and ``rm`` stages
and ``collect`` stage in ``preferences`` mode, and the last ``ppo``, ``dpo`` and ``eval`` stages (an iterative
pipeline's last round is the policy the eval scores). A stage that is
missing or not complete leaves its numbers out (None) rather than failing, so a partial run still reports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from rlhf.errors import UserError
from rlhf.manifest import read_manifest
from rlhf.metrics import read_metrics

# The targets for the embedded pipeline (`rlhf run`, 2 CPU cores).
TARGET_ACCURACY_GAIN = 0.15
TARGET_ACCURACY_GAIN_DPO = 0.10  # the DPO issue's bar (`rlhf run dpo`: offline pairs, no RM, no sampling in training)
TARGET_RM_ACCURACY = 0.85
TARGET_WALL_S = 15 * 60


@dataclass
class ReportData:
    summary: dict
    curves: dict[str, list[dict]] = field(default_factory=dict)  # stage type -> metrics.jsonl rows
    eval: dict = field(default_factory=dict)


def stage_dirs(out: Path) -> dict[str, Path]:
    """Stage type -> its directory (see the module docstring for which one of a type)."""
    state_file = out / "pipeline.json"
    if not state_file.is_file():
        raise UserError(f"{out}: no pipeline.json; give the output directory of `rlhf run`")
    stages = json.loads(state_file.read_text()).get("stages", {})
    found: dict[str, Path] = {}
    for name, entry in stages.items():
        kind, path = entry.get("stage"), out / name
        manifest = read_manifest(path) or {}
        if manifest.get("status") != "complete":
            continue
        if kind == "collect" and manifest.get("config", {}).get("mode") == "preferences":
            found.setdefault("prefs", path)
        elif kind in ("eval", "ppo", "dpo"):
            found[kind] = path
        elif kind in ("sft", "rm"):
            found.setdefault(kind, path)
    return found


def _config(path: Path | None) -> dict:
    return (read_manifest(path) or {}).get("config", {}) if path else {}


def _get(d: dict, dotted: str):
    for key in dotted.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def seeds(dirs: dict[str, Path]) -> dict[str, int]:
    keys = {"sft": "train.seed", "prefs": "preferences.seed", "rm": "train.seed", "ppo": "loop.seed",
            "eval": "sampling.seed"}
    out = {kind: _get(_config(dirs.get(kind)), key) for kind, key in keys.items() if kind in dirs}
    return {k: v for k, v in out.items() if v is not None}


ESTIMATOR_NAMES = {"gae": "PPO", "grpo": "GRPO", "dr_grpo": "Dr. GRPO", "rloo": "RLOO", "reinforce_pp": "REINFORCE++"}


def training_signal(dirs: dict[str, Path]) -> dict:
    """What the trained policy optimised, for the report's wording: the method (the RL stage's estimator, or DPO)
    and its reward sources (RM, remote service, reward function)."""
    if "ppo" in dirs:
        cfg = _config(dirs["ppo"])
        reward = cfg.get("reward") or {}
        return {"method": ESTIMATOR_NAMES.get(_get(cfg, "algorithm.estimator") or "gae", "PPO"),
                "reward_model": bool(reward.get("model")), "reward_url": bool(reward.get("url")),
                "reward_function": reward.get("function")}
    if "dpo" in dirs:
        return {"method": "DPO", "reward_model": False, "reward_url": False, "reward_function": None}
    return {"method": None, "reward_model": False, "reward_url": False, "reward_function": None}


def gather(out: Path) -> ReportData:
    dirs = stage_dirs(out)
    manifests = {kind: read_manifest(path) or {} for kind, path in dirs.items()}
    all_manifests = {p.name: read_manifest(p) for p in sorted(out.iterdir()) if (p / "manifest.json").is_file()}
    ev = json.loads((dirs["eval"] / "eval.json").read_text()) if "eval" in dirs else {}
    policy, baseline = ev.get("policy", "ppo"), ev.get("baseline") or "sft"
    stage_walls = {name: m.get("wall_s") for name, m in all_manifests.items() if m and m.get("wall_s") is not None}
    seed_values = seeds(dirs)
    kl_target = _get(_config(dirs.get("ppo")), "algorithm.kl_target")
    acc = ev.get("oracle_accuracy") or {}
    kl = ev.get(f"kl_{policy}_vs_{baseline}")
    summary = {
        "oracle_accuracy": acc,
        "oracle_accuracy_stderr": ev.get("oracle_accuracy_stderr"),
        "win_rate_ppo_vs_sft": ev.get(f"win_rate_{policy}_vs_{baseline}"),
        "rm_accuracy_clean": ev.get("rm_accuracy_clean"),
        "rm_pairs_clean": ev.get("rm_pairs_clean"),
        "kl_ppo_vs_sft": kl,
        "kl_ppo_vs_sft_stderr": ev.get(f"kl_{policy}_vs_{baseline}_stderr"),
        "kl_target": kl_target,
        "rm_score_mean": ev.get("rm_score_mean"),
        "judge_win_rate_ppo_vs_sft": ev.get(f"judge_win_rate_{policy}_vs_{baseline}"),
        "oracle_accuracy_by_family": ev.get("oracle_accuracy_by_family"),
        "eval_prompts": ev.get("prompts"),
        "samples_per_prompt": ev.get("samples_per_prompt"),
        "decoding": ev.get("decoding"),
        "preference_pairs": (manifests.get("prefs", {}).get("metrics") or {}).get("records"),
        "rm_eval_accuracy_noisy": (manifests.get("rm", {}).get("metrics") or {}).get("eval_accuracy"),
        "ppo_reward_first_last": [(manifests.get("ppo", {}).get("metrics") or {}).get(k)
                                  for k in ("reward_first", "reward_last")],
        "wall_s": round(sum(stage_walls.values()), 1) if stage_walls else None,
        "stage_wall_s": stage_walls,
        "seed": next(iter(set(seed_values.values()))) if len(set(seed_values.values())) == 1 else None,
        "seeds": seed_values,
        "names": {"policy": policy, "baseline": baseline},
        "training": training_signal(dirs),
        "gain_target": TARGET_ACCURACY_GAIN_DPO if "dpo" in dirs and "ppo" not in dirs else TARGET_ACCURACY_GAIN,
        "dpo_eval_reward_accuracy": (manifests.get("dpo", {}).get("metrics") or {}).get("eval_reward_accuracy"),
    }
    summary["targets"] = targets(summary)
    curves = {kind: read_metrics(dirs[kind]) for kind in ("sft", "rm", "ppo", "dpo") if kind in dirs}
    return ReportData(summary, curves, ev)


def targets(s: dict) -> dict[str, dict]:
    """Each target of the issue: the measured value, the bar, and whether it is met (None when not measured)."""
    acc = s["oracle_accuracy"]
    names = s["names"]
    gain = acc[names["policy"]] - acc[names["baseline"]] if names["policy"] in acc and names["baseline"] in acc else None

    def check(value, bar, ok):
        return {"value": value, "target": bar, "met": None if value is None or bar is None else ok(value, bar)}

    return {
        "accuracy_gain": check(gain, s.get("gain_target", TARGET_ACCURACY_GAIN), lambda v, b: v >= b),
        "rm_accuracy_clean": check(s["rm_accuracy_clean"], TARGET_RM_ACCURACY, lambda v, b: v >= b),
        "kl_under_target": check(s["kl_ppo_vs_sft"], s["kl_target"], lambda v, b: v < b),
        "wall_s": check(s["wall_s"], TARGET_WALL_S, lambda v, b: v <= b),
    }
