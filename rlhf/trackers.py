"""Experiment trackers beside metrics.jsonl and TensorBoard: Weights & Biases and MLflow (extras ``[wandb]``,
``[mlflow]``), configured by a training stage's ``logging`` section.

They run on the driver, in :class:`rlhf.manifest.StageRun`: a run is opened when the stage starts (named
``<stage>-<out dir>`` unless ``name`` says otherwise, the resolved config as its parameters), a thread forwards
the rows metrics.jsonl gains (whoever writes it: rank 0 of the Ray Train workers, or PPO's controller), and when
the stage ends the resolved config and the manifest are logged as artifacts and the run is closed. The run ids are
kept in OUT/trackers.json, so a stage resumed after a crash continues the same tracker runs from the step it
resumes at. Offline use: ``WANDB_MODE=offline``; an MLflow ``sqlite:`` URI, or a ``file:`` one (MLflow 3 wants
MLFLOW_ALLOW_FILE_STORE=true for that).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from rlhf.config import Section
from rlhf.errors import UserError
from rlhf.metrics import read_metrics

STATE = "trackers.json"


class WandbSection(Section):
    project: str = Field("rlhf", description="W&B project")
    entity: str | None = Field(None, description="W&B entity (user or team); default: your W&B default")
    name: str | None = Field(None, description="run name; default <stage>-<output dir name>")
    mode: Literal["online", "offline"] | None = Field(None, description="default: WANDB_MODE, else online")
    tags: list[str] = Field(default_factory=list, description="run tags")


class MLflowSection(Section):
    tracking_uri: str | None = Field(None, description="e.g. http://host:5000 or sqlite:///mlflow.db; default: "
                                                        "MLFLOW_TRACKING_URI, else MLflow's default")
    experiment: str = Field("rlhf", description="MLflow experiment name")
    name: str | None = Field(None, description="run name; default <stage>-<output dir name>")


class LoggingSection(Section):
    wandb: WandbSection | None = Field(None, description="log to Weights & Biases (`logging.wandb={}`: defaults)")
    mlflow: MLflowSection | None = Field(None, description="log to MLflow (`logging.mlflow={}`: defaults)")


def _numbers(row: dict) -> dict[str, float]:
    return {k: v for k, v in row.items() if k not in ("step", "time") and isinstance(v, (int, float))
            and not isinstance(v, bool)}


class _Wandb:
    def __init__(self, section: WandbSection, name: str, run_id: str | None, config: dict, out: Path):
        try:
            import wandb
        except ImportError:
            raise UserError("logging.wandb needs the wandb package: pip install 'rlhf[wandb]'") from None
        self.run = wandb.init(project=section.project, entity=section.entity, name=section.name or name,
                              id=run_id, resume="allow", config=config, tags=section.tags or None,
                              mode=section.mode, dir=str(out), reinit="create_new")
        self.id = self.run.id

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def artifacts(self, name: str, files: list[Path]) -> None:
        import wandb

        artifact = wandb.Artifact(name, type="rlhf-stage")
        for f in files:
            artifact.add_file(str(f))
        self.run.log_artifact(artifact)

    def close(self, ok: bool) -> None:
        self.run.finish(exit_code=0 if ok else 1)


class _MLflow:
    def __init__(self, section: MLflowSection, name: str, run_id: str | None, config: dict, out: Path):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise UserError("logging.mlflow needs the mlflow package: pip install 'rlhf[mlflow]'") from None
        # A client, not mlflow's module-level active run: one per stage, and safe from the forwarding thread.
        self.client = MlflowClient(tracking_uri=section.tracking_uri)
        if run_id is None:
            exp = self.client.get_experiment_by_name(section.experiment)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(section.experiment)
            run = self.client.create_run(exp_id, run_name=section.name or name)
            run_id = run.info.run_id
            for key, value in _flatten(config).items():
                self.client.log_param(run_id, key, str(value)[:6000])
        self.id = run_id

    def log(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.client.log_metric(self.id, key, float(value), step=step)

    def artifacts(self, name: str, files: list[Path]) -> None:
        for f in files:
            self.client.log_artifact(self.id, str(f))

    def close(self, ok: bool) -> None:
        self.client.set_terminated(self.id, status="FINISHED" if ok else "FAILED")


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class Trackers:
    """The stage's tracker runs (none when its config has no ``logging`` section or it names no tracker)."""

    def __init__(self, stage: str, out: Path, config: dict, section: LoggingSection | None):
        self.out, self.stage = out, stage
        self.backends: dict[str, Any] = {}
        if section is None or (section.wandb is None and section.mlflow is None):
            return
        state = json.loads((out / STATE).read_text()) if (out / STATE).is_file() else {}
        name = f"{stage}-{out.resolve().name}"
        if section.wandb is not None:
            self.backends["wandb"] = _Wandb(section.wandb, name, state.get("wandb"), config, out)
        if section.mlflow is not None:
            self.backends["mlflow"] = _MLflow(section.mlflow, name, state.get("mlflow"), config, out)
        (out / STATE).write_text(json.dumps({k: b.id for k, b in self.backends.items()}) + "\n")
        rows = read_metrics(out)  # a resumed stage: what was forwarded before is already there
        self.sent = max((int(r.get("step", 0)) for r in rows), default=0)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def forward(self) -> None:
        """Send the metrics.jsonl rows past the last step sent (rows of one step are merged: train + eval)."""
        with self._lock:
            by_step: dict[int, dict[str, float]] = {}
            for row in read_metrics(self.out):
                step = int(row.get("step", 0))
                if step > self.sent:
                    by_step.setdefault(step, {}).update(_numbers(row))
            for step in sorted(by_step)[:-1]:  # the newest step may still gain a row (its eval)
                for backend in self.backends.values():
                    backend.log(step, by_step[step])
                self.sent = step

    def _follow(self) -> None:
        while not self._stop.wait(5.0):
            self.forward()

    def close(self, ok: bool, files: list[Path]) -> None:
        """Last rows, the config and manifest as artifacts, then end the runs."""
        if not self.backends:
            return
        self._stop.set()
        self._thread.join(timeout=30)
        with self._lock:
            last: dict[int, dict[str, float]] = {}
            for row in read_metrics(self.out):
                if int(row.get("step", 0)) > self.sent:
                    last.setdefault(int(row["step"]), {}).update(_numbers(row))
            for step in sorted(last):
                for backend in self.backends.values():
                    backend.log(step, last[step])
        for backend in self.backends.values():
            backend.artifacts(f"{self.stage}-{self.out.resolve().name}", [f for f in files if f.is_file()])
            backend.close(ok)
