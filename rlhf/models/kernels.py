"""Optional fused training kernels for LLaMA models (``model.kernels``).

``liger``: Liger-Kernel's Triton kernels (Hsu et al. 2024, "Liger Kernel: Efficient Triton Kernels for LLM
Training"): fused RMSNorm, RoPE, SwiGLU and, for causal LMs, a fused linear + cross-entropy that never
materialises the [B, T, vocab] logits. It installs as a pure-Python wheel (``pip install 'rlhf[gpu]'``) and needs
CUDA: Triton has no CPU backend, so a CPU run with ``kernels: liger`` is refused on the worker that builds the model.
"""

from __future__ import annotations

import torch

from rlhf.errors import UserError


def apply_kernels(model: torch.nn.Module, kernels: str, causal_lm: bool = True) -> torch.nn.Module:
    """Patch ``model`` (a loaded LLaMA) in place with the chosen kernels; ``hf`` leaves transformers' own."""
    if kernels == "hf":
        return model
    if kernels != "liger":
        raise UserError(f"model.kernels: unknown kernel set {kernels!r} (hf or liger)")
    if not torch.cuda.is_available():
        raise UserError("model.kernels=liger needs CUDA (Triton kernels); use model.kernels=hf on CPU")
    try:
        from liger_kernel.transformers import apply_liger_kernel_to_llama
    except ImportError:
        raise UserError("model.kernels=liger needs the liger-kernel package: pip install 'rlhf[gpu]'") from None
    if getattr(model.config, "model_type", None) != "llama":
        raise UserError(f"model.kernels=liger supports LLaMA models, got model_type={model.config.model_type!r}")
    # The fused linear cross-entropy replaces LlamaForCausalLM.forward's loss; a reward model has no LM head.
    apply_liger_kernel_to_llama(model=model, fused_linear_cross_entropy=causal_lm)
    return model
