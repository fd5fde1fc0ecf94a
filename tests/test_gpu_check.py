"""The GPU check's CPU side: its FLOP formula, parameter count, pipeline GPU overrides, and the whole
``benchmarks/gpu_check.sh --dry-run`` (what CI can run of it without a GPU or the device wheels)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from rlhf.paths import REPO_ROOT

SPEC = importlib.util.spec_from_file_location("gpu_bench", REPO_ROOT / "benchmarks" / "gpu_bench.py")
gpu_bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(gpu_bench)


def test_model_flops_per_token_is_palm_6n_plus_12lhqt():
    # N=1000, L=2, d_model=8, T=16: 6*1000 + 12*2*8*16 = 6000 + 3072; causal halves the attention part.
    assert gpu_bench.model_flops_per_token(1000, 2, 8, 16) == 9072
    assert gpu_bench.model_flops_per_token(1000, 2, 8, 16, causal=True) == 7536


def test_count_params_leaves_out_only_the_input_embedding():
    from rlhf.models.tiny import llama_config

    # tiny-llama: d=192, mlp 512, 4 layers, 6 heads = 6 kv heads of 32. Per layer: q,k,v,o 4*192^2 = 147456,
    # mlp 3*192*512 = 294912, two norms 384 -> 442752; 4 layers + final norm 192 = 1771200; lm_head 100*192.
    config = llama_config("tiny-llama", vocab_size=100, bos_id=1, eos_id=2, pad_id=3)
    total, matmul = gpu_bench.count_params(config)
    assert matmul == 1771200 + 100 * 192
    assert total == matmul + 100 * 192


def test_micro_batch_fits_the_card():
    assert gpu_bench.pick_micro_batch(79.2) == 4  # H100 80 GB
    assert gpu_bench.pick_micro_batch(139.8) == 8  # H200


def _names_by_type(pipeline) -> dict[str, str]:
    return {s.stage: s.name for s in pipeline.spec.stages}


def test_gpu_overrides_put_stages_on_the_gpu_and_ppo_only_where_its_bundles_fit():
    from rlhf.pipeline.shipped import find_pipeline
    from rlhf.pipeline.spec import load_pipeline, validate_stages

    pipeline = load_pipeline(find_pipeline("rlhf"))
    names = _names_by_type(pipeline)
    one, notes = gpu_bench.gpu_overrides(pipeline, gpus=1)
    for stage in ("sft", "rm"):
        assert f"{names[stage]}.resources.use_gpu=true" in one
        assert f"{names[stage]}.deepspeed.precision=bf16" in one
    # PPO's four bundles (actor, ref, critic, reward) share the one GPU, a quarter each.
    assert f"{names['ppo']}.resources.use_gpu=true" in one and f"{names['ppo']}.resources.gpus_per_bundle=0.25" in one
    assert len(notes) == 1
    assert f"{names['ppo']}.loop.iterations={gpu_bench.MAX_ITERATIONS}" in one
    assert f"{names['sft']}.train.max_steps={gpu_bench.MAX_STEPS}" in one  # rlhf.yaml's SFT runs 1500 steps
    four, notes = gpu_bench.gpu_overrides(pipeline, gpus=4)  # actor, ref, critic, reward: one bundle each
    assert f"{names['ppo']}.resources.use_gpu=true" in four and notes == []
    assert not any("gpus_per_bundle" in o for o in four)
    validate_stages(load_pipeline(find_pipeline("rlhf"), one))  # every override names a real key


def test_gpu_overrides_cap_workers_at_the_gpu_count(tmp_path):
    from rlhf.pipeline.spec import load_pipeline

    spec = tmp_path / "two.yaml"
    spec.write_text("name: two\nstages:\n  - name: s\n    stage: sft\n    base: configs/sft/tiny.yaml\n"
                    "    config: {resources: {num_workers: 2}}\n")
    overrides, _ = gpu_bench.gpu_overrides(load_pipeline(spec), gpus=1)
    assert overrides == ["s.deepspeed.precision=bf16", "s.resources.num_workers=1", "s.resources.use_gpu=true"]


@pytest.mark.slow
def test_dry_run_validates_and_exits_zero(tmp_path):
    env = {**os.environ, "GPU_CHECK_WORK": str(tmp_path), "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1"}
    env.pop("OUT", None)
    done = subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["matmul"]["n"] == 256 and report["matmul"]["copy_gb_per_s"] > 0
    for name in ("sft", "sft_hf"):  # both kernel choices' configs and plans are built; the dry run trains nothing
        assert report[name]["dry_run"] and report[name]["zero_stage"] == 2
        assert report[name]["plan"]["verdict"] == "fits"
    assert report["sampling"]
    assert report["ppo"]["dry_run"] and set(report["ppo"]["plan"]["roles"]) == {"actor", "critic", "ref", "reward"}
    assert report["multirank"]["dry_run"] and report["multirank"]["ppo_actor_workers"] == 2
    assert "sft.resources.use_gpu=true" in report["pipeline_overrides"]["overrides"]
    assert not (tmp_path / "pipeline").exists()  # a dry run trains nothing
    assert "gpu_check.json" in done.stdout or "report" in done.stdout


def test_report_rows_name_every_measure():
    report = {"environment": {"device": "NVIDIA H200"}, "matmul": {"bf16_matmul_tflops": 780.0, "copy_gb_per_s": 4300},
              "sampling": {"engines": {"static": {"tokens_per_s": 20000.0, "bound_share": 0.2}}},
              "sft": {"model": "llama-1b", "kernels": "liger", "tokens_per_s": 50000.0, "mfu": 0.5,
                      "gpu_mem_peak_gib": 40.0, "plan": {"states_and_activations_gib": 42.0}},
              "ppo": {"phases": {"iteration_s": 3.0, "generation_share": 0.4}, "measured_over_plan": {"actor": 0.9}},
              "multirank": {"ok": True, "backend": "gloo"}, "serve": {"speedup": 9.0, "p99_over_p50": 1.5},
              "pipeline": {"all_complete": True}}
    text = "\n".join(gpu_bench.report_rows(report, []))
    for expected in ("780", "4300", "20000 (0.200)", "0.500", "40.0 / 42.0", "3.00 (0.40)", "actor 0.90",
                     "True (gloo)", "9.0x (1.50)", "failed steps"):
        assert expected in text, expected
