"""The shipped tiny Alpaca, Vicuna and Koala pipelines run offline on CPU and leave an SFT model plain transformers loads.

Slow: a collect stage, then a short SFT as one in-process rank (`resources.in_process`; the shipped pipelines use one
Ray Train worker, the same train loop, which tests/test_sft.py runs under Ray).
Run: unshare -n bash -c 'ip link set lo up; HF_HUB_OFFLINE=1 python -m pytest -q tests/test_pipeline_shipped.py'
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf.manifest import read_manifest
from rlhf.pipeline.runner import run_pipeline
from rlhf.pipeline.shipped import find_pipeline
from rlhf.pipeline.spec import load_pipeline

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ["alpaca", "vicuna", "koala"])
def test_tiny_pipeline_leaves_a_loadable_sft_model(name, tmp_path):
    pipeline = load_pipeline(find_pipeline(name), ["sft.resources.in_process=true"])
    assert [s.stage for s in pipeline.spec.stages] == ["collect", "sft"]
    outcomes = run_pipeline(pipeline, tmp_path / name)
    assert [o.status for o in outcomes] == ["ran", "ran"]
    collected = read_manifest(tmp_path / name / pipeline.spec.stages[0].name)
    assert collected["status"] == "complete" and collected["metrics"]["records"] > 0
    sft = read_manifest(tmp_path / name / "sft")
    assert sft["status"] == "complete"
    # The SFT stage read the collect stage's output through ${<collect>.data}.
    collect_dir = tmp_path / name / pipeline.spec.stages[0].name
    assert sft["config"]["data"]["path"] == str((collect_dir / collected["outputs"]["data"]["path"]).resolve())

    model_dir = tmp_path / name / "sft" / "model"
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer("Hello", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size) and torch.isfinite(logits).all()
