"""model.kernels: transformers' own layers by default; Liger's Triton kernels refused without CUDA (one line)."""

from __future__ import annotations

import pytest
import torch

from rlhf.errors import UserError
from rlhf.models.kernels import apply_kernels
from rlhf.models.loading import load_causal_lm, resolve_model_path


def test_hf_kernels_leave_the_model_alone():
    model = load_causal_lm(resolve_model_path("embedded:tiny-llama"))
    forward = model.forward
    assert apply_kernels(model, "hf") is model and model.forward == forward


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_liger_is_refused_on_cpu_with_one_line():
    model = load_causal_lm(resolve_model_path("embedded:tiny-llama"))
    with pytest.raises(UserError, match="needs CUDA") as err:
        apply_kernels(model, "liger")
    assert "\n" not in str(err.value)


def test_sft_config_takes_the_kernel_choice():
    from rlhf.config import load_config
    from stages import sft

    cfg = load_config(sft.Config, "configs/sft/tiny.yaml", ["model.kernels=liger"])
    assert cfg.model.kernels == "liger"
    with pytest.raises(Exception, match="kernels"):
        load_config(sft.Config, "configs/sft/tiny.yaml", ["model.kernels=triton"])
