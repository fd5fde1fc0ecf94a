"""report.md: the headline numbers against the issue's targets, per-family accuracy, the plots, the settings."""

from __future__ import annotations

from rlhf.report.gather import ReportData


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _mark(met) -> str:
    return {True: "met", False: "NOT met", None: "not measured"}[met]


ORACLE_FUNCTION = "rlhf.world.oracle:oracle_reward"


def what_was_optimised(training: dict) -> str:
    """One sentence on the trained policy's objective, so the oracle columns are read right: against an RM the
    oracle is an independent check; when the oracle itself was the reward, it is the training objective."""
    method = training.get("method")
    if method is None:
        return ""
    if method == "DPO":
        return ("DPO trained on the preference pairs directly (simulated-annotator labels with noise; no RM, no "
                "sampling during training), never on the oracle.")
    sources = [name for name, on in (("the RM's score", training.get("reward_model")),
                                     ("a remote reward service", training.get("reward_url"))) if on]
    fn = training.get("reward_function")
    if fn == ORACLE_FUNCTION:
        return (f"{method} optimised the oracle itself as a verifiable reward"
                + (f" (with {', '.join(sources)})" if sources else "")
                + ": oracle accuracy on the held-out prompts is its training objective measured on unseen prompts.")
    if fn:
        sources.append(f"the reward function `{fn}`")
    reward = ", ".join(sources) or "its reward"
    rm = (" The reward model (RM) was trained on simulated-annotator pairs with label noise."
          if training.get("reward_model") else "")
    return f"{rm.strip()} {method} optimised {reward}, never the oracle's score.".strip()


def render_markdown(report: dict, data: ReportData) -> str:
    s, names = report, report["names"]
    acc, err = s.get("oracle_accuracy") or {}, s.get("oracle_accuracy_stderr") or {}
    base, pol = names["baseline"], names["policy"]
    t = s["targets"]
    # Column labels: the trained policy by its method (GRPO, RLOO, DPO ...; eval names it "ppo" for any RL stage).
    P, B = (s.get("training") or {}).get("method") or pol.upper(), base.upper()
    lines = [
        "# RLHF report: the embedded task world",
        "",
        "Made by `rlhf report` from this pipeline directory (`rlhf run` writes it at the end). Oracle = the task "
        "world's exact checker (`rlhf/world/oracle.py`): a response scores 1 when it is exactly the correct, "
        "well-formed answer. " + what_was_optimised(s.get("training") or {}),
        "",
        f"Held-out prompts: {_fmt(s.get('eval_prompts'))}, {_fmt(s.get('samples_per_prompt'))} samples each "
        f"per policy ({s.get('decoding') or '-'}). Seed: {_fmt(s.get('seed'))} "
        f"(per stage: {', '.join(f'{k} {v}' for k, v in (s.get('seeds') or {}).items()) or '-'}).",
        "",
        "| measure | value | target | |",
        "|---|---|---|---|",
        f"| oracle accuracy, {B} | {_fmt(acc.get(base))} ± {_fmt(err.get(base))} | | |",
        f"| oracle accuracy, {P} | {_fmt(acc.get(pol))} ± {_fmt(err.get(pol))} | | |",
        f"| gain ({P} − {B}) | {_fmt(t['accuracy_gain']['value'])} | ≥ "
        f"{_fmt(t['accuracy_gain']['target'], 2)} | {_mark(t['accuracy_gain']['met'])} |",
        f"| win rate {P} vs {B} (oracle, ties ½) | {_fmt(s.get('win_rate_ppo_vs_sft'))} | | |",
        f"| RM accuracy, held-out pairs, clean labels ({_fmt(s.get('rm_pairs_clean'))} pairs) | "
        f"{_fmt(s.get('rm_accuracy_clean'))} | ≥ {_fmt(t['rm_accuracy_clean']['target'], 2)} | "
        f"{_mark(t['rm_accuracy_clean']['met'])} |",
        f"| KL({P} ‖ {B}), nats per response | {_fmt(s.get('kl_ppo_vs_sft'))} ± "
        f"{_fmt(s.get('kl_ppo_vs_sft_stderr'))} | "
        + (f"< {_fmt(t['kl_under_target']['target'])} ({P}'s kl_target) | {_mark(t['kl_under_target']['met'])} |"
           if t["kl_under_target"]["target"] is not None else f"- ({P} has no KL target) | |"),
        f"| wall time, all stages (s) | {_fmt(s.get('wall_s'), 0)} | ≤ {_fmt(t['wall_s']['target'])} | "
        f"{_mark(t['wall_s']['met'])} |",
    ]
    if s.get("judge_win_rate_ppo_vs_sft") is not None:
        lines.append(f"| win rate, LLM judge (both orders) | {_fmt(s['judge_win_rate_ppo_vs_sft'])} | | |")
    lines += ["", "Other numbers: "
              f"RM mean score {', '.join(f'{k.upper()} {v:.3f}' for k, v in (s.get('rm_score_mean') or {}).items()) or '-'}; "
              f"preference pairs collected {_fmt(s.get('preference_pairs'))}; RM accuracy on its own held-out "
              f"pairs (noisy labels) {_fmt(s.get('rm_eval_accuracy_noisy'))}; training reward first → last 10% of "
              f"iterations {' → '.join(_fmt(v) for v in s.get('ppo_reward_first_last') or [])}"
              + (f"; DPO implicit-reward accuracy on its held-out pairs (noisy labels) "
                 f"{_fmt(s.get('dpo_eval_reward_accuracy'))}" if s.get("dpo_eval_reward_accuracy") is not None else "")
              + ".", ""]
    fams = s.get("oracle_accuracy_by_family") or {}
    if fams.get(base) and fams.get(pol):
        lines += ["## Oracle accuracy per task family", "", f"| family | {B} | {P} | change |",
                  "|---|---|---|---|"]
        for fam in fams[base]:
            b, p = fams[base][fam], fams[pol].get(fam, 0.0)
            lines.append(f"| {fam} | {b:.3f} | {p:.3f} | {p - b:+.3f} |")
        lines.append("")
    lines += ["## Plots", ""]
    lines += [f"![{name}]({path})" for name, path in (s.get("plots") or {}).items() if name == "overview"]
    lines += ["", "Single panels: " + ", ".join(f"[{n}]({p})" for n, p in (s.get("plots") or {}).items()
                                                if n != "overview"), ""]
    walls = s.get("stage_wall_s") or {}
    if walls:
        lines += ["## Stage wall times", "", "| stage | s |", "|---|---|"]
        lines += [f"| {name} | {w:.0f} |" for name, w in walls.items()]
        lines.append("")
    return "\n".join(lines)
