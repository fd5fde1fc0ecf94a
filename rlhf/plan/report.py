"""The plan as a table (``rlhf plan``): per stage, per role, GiB per GPU by component, then each GPU set's peak."""

from __future__ import annotations

from rlhf.plan.estimate import StagePlan, gib

COLUMNS = ("weights", "gradients", "optimizer_states", "activations", "gathered_weights", "kv_cache")
HEADERS = ("stage", "role", "GPUs", "params", "weights", "grads", "optim", "activ", "gathered", "KV", "peak/GPU",
           "host")


def count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def hardware_line(plan: StagePlan) -> str:
    hw = plan.hardware
    host = f"{gib(hw.host_mem)} GiB host per node" if hw.host_mem is not None else "host memory not checked"
    return f"{hw.nodes} node(s) x {hw.gpus_per_node} GPUs x {gib(hw.gpu_mem)} GiB; {host}"


def rows(plan: StagePlan) -> list[tuple[str, ...]]:
    out = []
    for i, r in enumerate(plan.roles):
        params = count(r.params) if r.params else "-"
        if r.trainable and r.trainable < r.params:
            params += f" ({count(r.trainable)} trained)"
        out.append((plan.name if i == 0 else "", r.role, str(r.workers), params,
                    *(gib(getattr(r, c)) for c in COLUMNS), gib(r.peak), gib(r.host)))
    return out


def verdict_lines(plan: StagePlan) -> list[str]:
    lines = []
    for g in plan.groups:
        lines.append(f"    {g.gpus} GPU(s) holding {'+'.join(g.roles)}: peak {gib(g.peak)} GiB ({g.phase})")
    if plan.verdict == "does not fit":
        lines.append(f"    -> DOES NOT FIT: {'; '.join(plan.problems)}")
    else:
        lines.append(f"    -> {plan.verdict.upper()}: peak {gib(plan.gpu_peak)} of {gib(plan.hardware.gpu_mem)} GiB per "
                     f"GPU, {plan.headroom:.0%} headroom; {plan.gpus_needed} GPUs; host {gib(plan.host_peak)} GiB")
    for s in plan.suggestions:
        lines.append(f"    would fit with: {s}")
    if plan.verdict != "fits" and not plan.suggestions:
        lines.append("    no single memory key makes it fit: more GPUs (--gpus/--nodes) or a smaller model")
    lines.extend(f"    note: {n}" for n in plan.notes)
    return lines


def render(plans: list[StagePlan], title: str, skipped: list[str] | None = None) -> str:
    """A fixed-width table: one row per role (GiB per GPU, host GiB per node), verdict lines under each stage."""
    if not plans:
        return f"{title}: no GPU training stage to plan" + (f" (not planned: {', '.join(skipped)})" if skipped else "")
    table = [HEADERS] + [row for p in plans for row in rows(p)]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADERS))]
    out = [f"{title} on {hardware_line(plans[0])} (GiB per GPU; host GiB per node)"]

    def fmt(row):
        return "  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    out.append(fmt(HEADERS))
    for p in plans:
        for row in rows(p):
            out.append(fmt(row))
        out.extend(verdict_lines(p))
    if skipped:
        out.append(f"not planned (no GPU training): {', '.join(skipped)}")
    return "\n".join(out)
