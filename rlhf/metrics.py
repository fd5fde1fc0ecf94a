"""Per-step metrics: one JSON object per line in OUT/metrics.jsonl, mirrored to TensorBoard event files."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

METRICS = "metrics.jsonl"


def read_metrics(out: str | Path) -> list[dict]:
    p = Path(out) / METRICS
    if not p.is_file():
        return []
    rows = []
    for line in p.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
    return rows


class MetricsLogger:
    """Rank-0 logger. On resume, rows past the resumed step are dropped so the file reads as one clean run."""

    def __init__(self, out: str | Path, resume_step: int = 0, tensorboard: bool = True):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / METRICS
        kept = [r for r in read_metrics(self.out) if r.get("step", 0) <= resume_step] if resume_step else []
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self.file = open(path, "a", buffering=1)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.out / "tensorboard"), purge_step=resume_step or None)

    def log(self, step: int, values: dict[str, Any]) -> None:
        row = {"step": step, "time": round(time.time(), 3)}
        row.update({k: (round(v, 6) if isinstance(v, float) else v) for k, v in values.items()})
        self.file.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
