"""study.json / study.md / study.png: per method, oracle accuracy over seeds, its gain over SFT with a 95% interval,
win rate, KL to SFT, per-family change (drops over 0.05 flagged), wall time; and the reward-KL frontier plot.

Intervals: with two or more seeds, a t interval over the seeds' paired gains (method - SFT of the same seed), which
carries seed-to-seed variation (SFT, pairs, RM and RL all change with the seed). With one seed there is nothing to
spread over; the interval is then the eval's sampling error only (1.96 x the two accuracies' per-prompt standard
errors combined) and is labelled so.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

FAMILY_DROP = 0.05  # a family whose mean accuracy falls by more than this under a method is flagged
# Two-sided 95% Student t quantiles by degrees of freedom (scipy.stats.t.ppf(0.975, df)).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def gain_interval(gains: list[float], one_seed_stderr: float | None = None) -> tuple[float, float, str]:
    """(low, high, how) of a 95% interval for the mean gain."""
    mu = statistics.fmean(gains)
    if len(gains) > 1:
        half = T95.get(len(gains) - 1, 1.96) * statistics.stdev(gains) / math.sqrt(len(gains))
        return mu - half, mu + half, f"t interval over {len(gains)} seeds"
    half = 1.96 * (one_seed_stderr or 0.0)
    return mu - half, mu + half, "one seed: eval sampling error only"


def read_seed(root: Path, method) -> dict:
    """One method's numbers for one seed, from its eval.json and manifests."""
    eval_dir = root / method.name if method.pipeline is None else root / method.name / "eval"
    ev = json.loads((eval_dir / "eval.json").read_text())
    pol, base = ev["policy"], ev["baseline"]
    acc, err = ev["oracle_accuracy"], ev["oracle_accuracy_stderr"]
    fam = ev["oracle_accuracy_by_family"]
    walls = {}
    if method.pipeline is None:
        walls["eval"] = json.loads((eval_dir / "manifest.json").read_text()).get("wall_s")
    else:
        for stage in sorted(p for p in (root / method.name).iterdir() if (p / "manifest.json").is_file()):
            m = json.loads((stage / "manifest.json").read_text())
            walls[stage.name] = m.get("wall_s")
    own = {k: v for k, v in walls.items() if k not in method.shared and v is not None}
    trained = {}
    if method.trained:  # which actor the eval saw (the last, or actor_best chosen on a validation split), and when
        policy = json.loads((eval_dir / "manifest.json").read_text())["config"]["policy"]
        metrics = json.loads((root / method.name / method.trained / "manifest.json").read_text())["metrics"]
        trained = {"evaluated": Path(policy).name, "best_iteration": metrics.get("best_iteration")}
    return {
        **trained,
        "accuracy": acc[pol], "sft_accuracy": acc[base], "gain": acc[pol] - acc[base],
        "gain_stderr": math.sqrt(err[pol] ** 2 + err[base] ** 2),
        "win_rate": ev.get(f"win_rate_{pol}_vs_{base}"), "kl": ev.get(f"kl_{pol}_vs_{base}"),
        "kl_method": ev.get("kl_method", "sampled log-ratio"), "rm_accuracy_clean": ev.get("rm_accuracy_clean"),
        "family_change": {f: fam[pol][f] - fam[base][f] for f in fam[base]},
        "wall_s": sum(own.values()), "stage_wall_s": walls,
    }


def summarize(per_seed: dict[int, dict]) -> dict:
    """Across seeds: mean/sd of accuracy, gain (with its 95% interval), win rate, KL, wall time; family changes."""
    seeds = sorted(per_seed)
    col = lambda key: [per_seed[s][key] for s in seeds if per_seed[s][key] is not None]  # noqa: E731
    acc_m, acc_sd = mean_sd(col("accuracy"))
    gain_m, gain_sd = mean_sd(col("gain"))
    low, high, how = gain_interval(col("gain"), per_seed[seeds[0]]["gain_stderr"] if len(seeds) == 1 else None)
    families = sorted(per_seed[seeds[0]]["family_change"])
    fam = {f: statistics.fmean(per_seed[s]["family_change"][f] for s in seeds) for f in families}
    out = {"seeds": seeds, "accuracy_mean": acc_m, "accuracy_sd": acc_sd, "gain_mean": gain_m, "gain_sd": gain_sd,
           "gain_ci95": [low, high], "gain_ci95_method": how, "family_change_mean": fam,
           "families_flagged": sorted(f for f, d in fam.items() if d < -FAMILY_DROP),
           "wall_s_mean": statistics.fmean(col("wall_s")), "kl_method": per_seed[seeds[0]]["kl_method"]}
    for key in ("win_rate", "kl", "sft_accuracy", "rm_accuracy_clean"):
        values = col(key)
        out[f"{key}_mean"], out[f"{key}_sd"] = mean_sd(values) if values else (None, None)
    return out


def _f(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _pm(mean, sd, n_seeds: int, digits: int = 3) -> str:
    """mean ± sd, or the mean alone for one seed (a standard deviation of one value says nothing)."""
    return _f(mean, digits) + (f" ± {_f(sd, digits)}" if n_seeds > 1 else "")


def render(study: dict) -> str:
    rows = study["methods"]
    seeds = study["seeds"]
    sft = rows[next(iter(rows))]
    lines = [
        "# Study: every method from the same SFT model and preference pairs, on the embedded task world",
        "",
        f"Made by `rlhf study --seeds {','.join(map(str, seeds))}`. Per seed: one SFT model, one preference set and "
        "one RM, shared by every method (see `rlhf/study/__init__.py`). Oracle = the task world's exact checker; only "
        "the `GRPO (oracle reward)` row trained on it. Mean ± standard deviation over seeds (none with one seed); the "
        "gain's 95% interval "
        f"({rows[next(iter(rows))]['gain_ci95_method']}).",
        "",
        f"SFT oracle accuracy: {_pm(sft['sft_accuracy_mean'], sft['sft_accuracy_sd'], len(seeds))}. RM accuracy on "
        f"held-out pairs with clean labels: {_pm(sft['rm_accuracy_clean_mean'], sft['rm_accuracy_clean_sd'], len(seeds))}.",
        "",
        "| method | oracle accuracy | gain over SFT [95% interval] | win rate vs SFT | KL to SFT (nats) | "
        f"families down > {FAMILY_DROP} | wall time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        flagged = ", ".join(f"**{f} {r['family_change_mean'][f]:+.3f}**" for f in r["families_flagged"]) or "none"
        kl = _pm(r["kl_mean"], r["kl_sd"], len(seeds), 2) + (" (bound)" if r["kl_method"].startswith("best") else "")
        lines.append(f"| {r['label']} | {_pm(r['accuracy_mean'], r['accuracy_sd'], len(seeds))} | "
                     f"{r['gain_mean']:+.3f} [{r['gain_ci95'][0]:+.3f}, {r['gain_ci95'][1]:+.3f}] | "
                     f"{_f(r['win_rate_mean'])} | {kl} | {flagged} | {r['wall_s_mean']:.0f} |")
    lines += ["", "Wall time: the method's own stages (its training stage, and any stage it did not share, and its "
              "eval); the shared SFT, preference and RM stages are counted in the PPO row.", "",
              "## Change in oracle accuracy per task family (mean over seeds)", "",
              "| method | " + " | ".join(next(iter(rows.values()))["family_change_mean"]) + " |",
              "|---|" + "---|" * len(next(iter(rows.values()))["family_change_mean"])]
    for r in rows.values():
        lines.append(f"| {r['label']} | " + " | ".join(f"{v:+.3f}" for v in r["family_change_mean"].values()) + " |")
    lines += ["", "## Reward-KL frontier", "", "![frontier](study.png)", "", "## Per seed", "",
              "| method | seed | SFT | method | gain | KL | win rate | evaluated (best iteration) |",
              "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        for seed, s in r["per_seed"].items():
            best = f" ({s['best_iteration']})" if s.get("best_iteration") is not None else ""
            lines.append(f"| {r['label']} | {seed} | {_f(s['sft_accuracy'])} | {_f(s['accuracy'])} | "
                         f"{s['gain']:+.3f} | {_f(s['kl'], 2)} | {_f(s['win_rate'])} | {s.get('evaluated', '-')}{best} |")
    if study.get("upstream_differs"):
        lines += ["", "Shared stages whose rerun differed from the PPO run's (content hash): "
                  + ", ".join(study["upstream_differs"])]
    return "\n".join(lines) + "\n"


def plot(study: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    rows = study["methods"]
    first = next(iter(rows.values()))
    ax.errorbar([0.0], [first["sft_accuracy_mean"]], yerr=[first["sft_accuracy_sd"]], fmt="ks", label="SFT")
    for r in rows.values():
        ax.errorbar([r["kl_mean"] or 0.0], [r["accuracy_mean"]], xerr=[r["kl_sd"] or 0.0], yerr=[r["accuracy_sd"]],
                    fmt="o", capsize=3, label=r["label"])
    ax.set_xlabel("KL to SFT (nats per response; best-of-n: log n - (n-1)/n)")
    ax.set_ylabel("oracle accuracy, held-out prompts")
    ax.set_title(f"accuracy vs KL, mean ± sd over seeds {','.join(map(str, study['seeds']))}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def upstream_differs(out: Path, seeds: list[int], methods) -> list[str]:
    """Shared stages a method reran whose output hash differs from the PPO run's (should be none)."""
    keys = {"sft": "model", "prefs": "preferences", "rm": "model"}
    differs = []
    for seed in seeds:
        root = out / f"seed-{seed}"
        for m in methods:
            for stage in m.shared:
                mine, ref = root / m.name / stage / "manifest.json", root / "ppo" / stage / "manifest.json"
                if mine.is_file() and ref.is_file():
                    h = [json.loads(p.read_text())["outputs"][keys[stage]]["hash"] for p in (mine, ref)]
                    if h[0] != h[1]:
                        differs.append(f"seed {seed} {m.name}/{stage}")
    return differs


def write_study(out: Path, seeds: list[int], methods) -> dict:
    rows = {}
    for m in methods:
        per_seed = {s: read_seed(out / f"seed-{s}", m) for s in seeds}
        rows[m.name] = {"label": m.label, **summarize(per_seed), "per_seed": per_seed}
    study = {"seeds": seeds, "methods": rows, "upstream_differs": upstream_differs(out, seeds, methods)}
    (out / "study.json").write_text(json.dumps(study, indent=1) + "\n")
    (out / "study.md").write_text(render(study))
    plot(study, out / "study.png")
    return study
