"""Every frozen model loads through ``load_for_inference``: in the stage's precision (auto = bf16 on GPU, fp32 on
CPU) on the stage's device, in eval mode without gradients. Real loads of the tiny LLaMA on the CPU."""

from __future__ import annotations

import pytest
import torch

from rlhf.models.loading import inference_device, inference_dtype, load_for_inference, resolve_model_path


@pytest.fixture(scope="module")
def tiny() -> str:
    return resolve_model_path("embedded:tiny-llama")


def param_dtypes(model: torch.nn.Module) -> set[torch.dtype]:
    return {p.dtype for p in model.parameters()}


def test_dtype_per_precision_and_device() -> None:
    assert inference_dtype("auto", "cpu") == torch.float32
    assert inference_dtype("auto", "cuda") == torch.bfloat16
    assert inference_dtype("bf16", "cpu") == torch.bfloat16
    assert inference_dtype("fp16", "cuda") == torch.float16
    assert inference_dtype("fp32", "cuda") == torch.float32
    assert inference_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_load_for_inference_in_bf16_on_cpu(tiny) -> None:
    model = load_for_inference(tiny, "causal_lm", "bf16", "cpu")
    assert param_dtypes(model) == {torch.bfloat16} and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    rm = load_for_inference(tiny, "reward", "bf16", "cpu", pad_token_id=0)
    assert param_dtypes(rm) == {torch.bfloat16} and rm.config.pad_token_id == 0
    assert param_dtypes(load_for_inference(tiny, "causal_lm", "auto", "cpu")) == {torch.float32}


def test_every_inference_site_takes_the_precision(tiny) -> None:
    """Eval policies and RM, collect teachers, the RM judge and the PPO reference/reward roles."""
    from rlhf.collect.teachers import _GenerationWorker
    from rlhf.eval.policy import Policy
    from rlhf.models.reward import RewardScorer

    assert param_dtypes(Policy(tiny, precision="bf16").model) == {torch.bfloat16}
    scorer = RewardScorer(tiny, precision="bf16")
    assert param_dtypes(scorer.model) == {torch.bfloat16} and scorer.device == inference_device("auto")
    assert len(scorer.score_texts(["hello"])) == 1  # bf16 forward runs on the CPU
    assert param_dtypes(_GenerationWorker(tiny, 1, "bf16").model) == {torch.bfloat16}
    assert param_dtypes(RewardScorer(tiny).model) == {torch.bfloat16 if torch.cuda.is_available() else torch.float32}


def test_ppo_frozen_roles_follow_deepspeed_precision(tiny, monkeypatch) -> None:
    from rlhf.ppo.config import AlgorithmSection, RewardSection, RolloutSection
    from rlhf.ppo.roles import ReferenceWorker, RewardWorker, RoleSpec
    from rlhf.sections import DeepSpeedSection

    spec = RoleSpec(model_path=tiny, tokenizer_path=tiny, deepspeed=DeepSpeedSection(precision="bf16"),
                    algo=AlgorithmSection(), rollout=RolloutSection(), threads=1, reward=RewardSection(model=tiny))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a role worker sets both for its process; restored after the test
    threads = torch.get_num_threads()
    for cls in (ReferenceWorker, RewardWorker):
        worker = cls(spec, 0, 1)
        worker.dev = torch.device("cpu")
        worker.setup()  # zero_stage 2: no process group needed for a frozen role
        model = worker.model if cls is ReferenceWorker else dict(worker.sources)["model"].scorer.model
        assert param_dtypes(model) == {torch.bfloat16}, cls.__name__
    torch.set_num_threads(threads)
