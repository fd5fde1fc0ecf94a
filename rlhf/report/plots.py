"""The report's plots (matplotlib, Agg backend: no display needed): one PNG per panel, and all four together.

Panels: SFT loss, RM accuracy, PPO reward and KL per iteration, oracle accuracy per policy (overall and per
task family). Each draws into a given Axes so the same code makes the single plots and the overview.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from rlhf.report.gather import ReportData

COLORS = {"baseline": "#8c8c8c", "policy": "#1f77b4"}


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _empty(ax, title: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes, color="gray")


def sft_loss(ax, data: ReportData) -> None:
    rows = data.curves.get("sft")
    if not rows:
        return _empty(ax, "SFT loss")
    ax.plot(*_series(rows, "loss"), label="train", color="#1f77b4")
    steps, values = _series(rows, "eval_loss")
    if steps:
        ax.plot(steps, values, "o-", label="held-out demos", color="#ff7f0e")
    ax.set(title="SFT loss (demonstrations)", xlabel="optimizer step", ylabel="cross-entropy (nats/token)")
    ax.legend()


def rm_accuracy(ax, data: ReportData) -> None:
    rows = data.curves.get("rm")
    if not rows:
        return _empty(ax, "RM accuracy")
    ax.plot(*_series(rows, "accuracy"), label="train pairs (20% noisy labels)", color="#1f77b4")
    steps, values = _series(rows, "eval_accuracy")
    if steps:
        ax.plot(steps, values, "o-", label="held-out pairs (noisy labels)", color="#ff7f0e")
    clean = data.summary.get("rm_accuracy_clean")
    if clean is not None:
        ax.axhline(clean, color="#2ca02c", ls="--", label=f"eval prompts, clean labels: {clean:.2f}")
    ax.set(title="Reward model pair accuracy", xlabel="optimizer step", ylabel="accuracy", ylim=(0.3, 1.02))
    ax.legend(loc="lower right", fontsize=8)


def ppo_reward_kl(ax, data: ReportData) -> None:
    rows = [r for r in data.curves.get("ppo") or [] if "reward_mean" in r]
    if not rows:
        return _empty(ax, "PPO")
    ax.plot(*_series(rows, "reward_mean"), color="#1f77b4", label="RM reward (mean)")
    ax.set(title="PPO: reward and KL per iteration", xlabel="iteration", ylabel="RM reward")
    kl_ax = ax.twinx()
    kl_ax.plot(*_series(rows, "kl"), color="#d62728", label="KL(policy || SFT), nats")
    target = data.summary.get("kl_target")
    if target:
        kl_ax.axhline(target, color="#d62728", ls=":", label=f"KL target {target:g}")
    kl_ax.set_ylabel("KL (nats per response)")
    lines = ax.get_legend_handles_labels()
    kl_lines = kl_ax.get_legend_handles_labels()
    ax.legend(lines[0] + kl_lines[0], lines[1] + kl_lines[1], loc="upper left", fontsize=8)


def accuracy_bars(ax, data: ReportData) -> None:
    s = data.summary
    acc, names = s.get("oracle_accuracy") or {}, s["names"]
    if not acc:
        return _empty(ax, "Oracle accuracy")
    fams = s.get("oracle_accuracy_by_family") or {}
    groups = ["all"] + sorted(next(iter(fams.values()), {}))
    width = 0.4
    for j, role in enumerate(("baseline", "policy")):
        name = names[role]
        if name not in acc:
            continue
        values = [acc[name]] + [fams.get(name, {}).get(g, 0.0) for g in groups[1:]]
        errs = [(s.get("oracle_accuracy_stderr") or {}).get(name, 0.0)] + [0.0] * (len(groups) - 1)
        xs = [i + (j - 0.5) * width for i in range(len(groups))]
        ax.bar(xs, values, width, yerr=errs, color=COLORS[role], label=f"{name.upper()} ({acc[name]:.2f})")
    ax.set_xticks(range(len(groups)), groups, rotation=30)
    ax.set(title=f"Oracle accuracy on held-out prompts ({s.get('decoding') or ''})".replace(" ()", ""),
           ylabel="share correct and well-formed", ylim=(0, 1.05))
    ax.title.set_fontsize(9)
    ax.legend(loc="upper left", fontsize=8)


PANELS: dict[str, Callable] = {"sft_loss": sft_loss, "rm_accuracy": rm_accuracy, "ppo_reward_kl": ppo_reward_kl,
                               "accuracy": accuracy_bars}


def write_plots(data: ReportData, out_dir: Path) -> dict[str, Path]:
    """One PNG per panel plus overview.png (2 x 2); returns name -> path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, draw in PANELS.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        draw(ax, data)
        fig.tight_layout()
        paths[name] = out_dir / f"{name}.png"
        fig.savefig(paths[name], dpi=100)
        plt.close(fig)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for ax, draw in zip(axes.flat, PANELS.values()):
        draw(ax, data)
    fig.suptitle(_headline(data.summary))
    fig.tight_layout()
    paths["overview"] = out_dir / "overview.png"
    fig.savefig(paths["overview"], dpi=100)
    plt.close(fig)
    return paths


def _headline(s: dict) -> str:
    acc, names = s.get("oracle_accuracy") or {}, s["names"]
    parts = []
    if names["baseline"] in acc and names["policy"] in acc:
        parts.append(f"oracle accuracy {names['baseline'].upper()} {acc[names['baseline']]:.2f} -> "
                     f"{names['policy'].upper()} {acc[names['policy']]:.2f}")
    for label, key in (("win rate", "win_rate_ppo_vs_sft"), ("RM clean acc.", "rm_accuracy_clean"),
                       ("KL", "kl_ppo_vs_sft")):
        if s.get(key) is not None:
            parts.append(f"{label} {s[key]:.2f}")
    if s.get("wall_s") is not None:
        parts.append(f"{s['wall_s'] / 60:.1f} min")
    return "RLHF on the task world: " + ", ".join(parts)
