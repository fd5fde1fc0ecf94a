"""The RLHF pipeline's report: DIR/report.json, DIR/report.md and PNG plots, from a pipeline's output directory.

``write_report(DIR)`` (also ``rlhf report DIR``, and the runner at the end of a pipeline with an eval stage)
reads each stage's manifest and metrics.jsonl and the eval stage's eval.json; it trains and samples nothing.
"""

from __future__ import annotations

from pathlib import Path

from rlhf.manifest import write_json_atomic


def write_report(pipeline_dir: str | Path) -> dict:
    """Write report.json, report.md and plots/*.png into ``pipeline_dir``; returns report.json's content."""
    from rlhf.report.gather import gather
    from rlhf.report.markdown import render_markdown
    from rlhf.report.plots import write_plots

    out = Path(pipeline_dir)
    data = gather(out)
    plots = write_plots(data, out / "plots")
    report = {**data.summary, "plots": {k: str(p.relative_to(out)) for k, p in plots.items()}}
    write_json_atomic(out / "report.json", report)
    tmp = out / ".report.md.tmp"
    tmp.write_text(render_markdown(report, data), encoding="utf-8")
    tmp.replace(out / "report.md")
    return report
