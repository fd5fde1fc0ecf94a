"""W&B (offline mode) and MLflow (file store) trackers of a stage: named run, config, every metrics row, artifacts.

The stage here is a real StageRun of an SFT config whose metrics come from the real MetricsLogger (no training: the
trackers only read what metrics.jsonl gains). Skipped only when the extra is not installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf.config import load_config
from rlhf.manifest import StageRun
from rlhf.metrics import MetricsLogger


def run_stage(out: Path, *overrides: str, fail_after: int | None = None) -> None:
    from stages import sft

    cfg = load_config(sft.Config, "configs/sft/tiny.yaml", list(overrides))
    with StageRun("sft", out, cfg) as stage:
        resume = max((json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()), default=0) \
            if (out / "metrics.jsonl").is_file() else 0
        logger = MetricsLogger(out, resume_step=resume, tensorboard=False)
        for step in range(resume + 1, 5):
            logger.log(step, {"loss": 1.0 / step})
            if step == 4:
                logger.log(step, {"eval_loss": 0.5})
            if fail_after == step:
                logger.close()
                raise RuntimeError("worker died")
        logger.close()
        stage.complete({"steps": 4}, outputs={"metrics": out / "metrics.jsonl"})


def test_mlflow_file_store_gets_run_config_metrics_and_artifacts(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = f"file://{tmp_path / 'mlruns'}"
    out = tmp_path / "sft"
    with pytest.raises(RuntimeError, match="worker died"):  # a crash, then the rerun resumes the same run
        run_stage(out, f"logging.mlflow.tracking_uri={uri}", fail_after=2)
    run_stage(out, f"logging.mlflow.tracking_uri={uri}")
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("rlhf").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_name == "sft-sft" and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    assert runs[0].data.params["optim.lr"] and runs[0].data.params["logging.mlflow.tracking_uri"] == uri
    loss = [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")]
    assert loss == [(s, pytest.approx(1.0 / s, abs=1e-6)) for s in range(1, 5)]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "eval_loss")] == [(4, 0.5)]
    assert {a.path for a in client.list_artifacts(run_id)} == {"config.yaml", "manifest.json"}
    manifest = json.loads(Path(client.download_artifacts(run_id, "manifest.json", str(tmp_path))).read_text())
    assert manifest["status"] == "complete"


def wandb_records(path: Path):
    """The protobuf records of an offline .wandb file: a 7-byte header (":W&B", magic, version), then LevelDB's log
    format, 32 KiB blocks of chunks (crc32 4, length 2 LE, type 1: full/first/middle/last). No reader ships with
    wandb 0.31 (its core is in Go), so this one is here."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            yield pending


def test_wandb_offline_run_gets_config_metrics_and_artifacts(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from wandb.proto import wandb_internal_pb2

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "sft"
    run_stage(out, "logging.wandb.project=rlhf-test", "logging.wandb.name=my-sft")
    import wandb

    wandb.teardown()  # W&B's core service writes the offline file on its own time; this waits for it
    [run_file] = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    history, artifacts, names, config = [], [], [], {}
    for data in wandb_records(run_file):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
        elif kind == "artifact":
            artifacts.append(record.artifact.name)
        elif kind == "run":
            names.append(record.run.display_name)
            config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
    assert names[0] == "my-sft" and config["optim"]["lr"] > 0 and config["logging"]["wandb"]["project"] == "rlhf-test"
    steps = [(h["_step"], h.get("loss"), h.get("eval_loss")) for h in history]
    assert steps == [(1, 1.0, None), (2, 0.5, None), (3, pytest.approx(1 / 3, abs=1e-6), None), (4, 0.25, 0.5)]
    assert artifacts == ["sft-sft"]


def test_deepspeed_import_skips_mlflow_and_leaves_it_importable():
    """Every worker imports DeepSpeed through ``import_deepspeed``, which keeps DeepSpeed's autotuner from importing
    MLflow (~1 s per process); MLflow must still import afterwards for the tracker."""
    import subprocess
    import sys

    pytest.importorskip("mlflow")
    code = ("import sys\n"
            "from rlhf.engine.build import import_deepspeed\n"
            "ds = import_deepspeed()\n"
            "assert ds is sys.modules['deepspeed'] and ds.initialize\n"
            "assert 'mlflow' not in sys.modules, 'mlflow was imported or left hidden'\n"
            "import mlflow\n"
            "assert mlflow.start_run\n"
            "assert import_deepspeed() is ds\n"
            "print('OK')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
