"""Memory formulas, in bytes: model states under ZeRO, activations of a LLaMA layer, KV cache, inference working set.

Model states (weights, gradients, optimizer states) follow DeepSpeed's own estimators, which tests compare against:
``deepspeed.runtime.zero.stage_1_and_2.estimate_zero2_model_states_mem_needs`` and
``deepspeed.runtime.zero.stage3.estimate_zero3_model_states_mem_needs``. With 16-bit training (bf16/fp16) each trained
parameter costs 2 bytes of 16-bit weight plus 18 bytes of state: a 16-bit gradient (2), an fp32 gradient (4), the
fp32 master weight (4) and Adam's two moments (8). ZeRO-1/2 partition the 18 over the data-parallel ranks (DeepSpeed's
estimator for stage_1_and_2), ZeRO-3 partitions the 16-bit weights too and adds a gather buffer of 4 bytes x the
largest module. With offload the states live on the host (``host_states``). In fp32 (CPU runs) there is no master
copy: 4 (weight) + 4 (gradient) + 8 (Adam).

Activations: Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models" (arXiv
2205.05198, sec. 4.1) count a GPT layer's stored activations as s*b*h*(34 + 5*a*s/h) bytes with 16-bit activations.
``layer_activation_bytes_per_token`` redoes that count for LLaMA (see its docstring): RMSNorm instead of LayerNorm,
SwiGLU MLP of width i, grouped-query K/V, no dropout, and fused SDPA/flash attention, which keeps no s x s matrix (the
5as/h term disappears; ``flash=False`` adds back the eager path's fp32 softmax and its 16-bit copy, 6*a*s bytes per
token). KV cache: 2 (K and V) x layers x kv_heads x head_dim x tokens x bytes per element.

These are estimates of the peak: allocator fragmentation, NCCL buffers and the CUDA context (about 1 GiB per process)
are covered by ``RESERVED_BYTES`` and the headroom the check asks for, not modelled one by one.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhf.plan.model_size import ModelShape

GiB = 1 << 30
# CUDA context, cuBLAS/NCCL workspaces and allocator slack per process, not modelled term by term.
RESERVED_BYTES = 1 * GiB
# DeepSpeed's estimators pad host-side estimates by this factor (pinned buffers, copies); we use the same default.
HOST_BUFFER_FACTOR = 1.5
# Bytes per logit kept for a loss or log-probs: the 16-bit logits (2), their fp32 upcast (4) and the fp32
# log-softmax output autograd keeps (4) (transformers' ForCausalLMLoss, our logprobs_from_logits).
LOGIT_BYTES = 10


def is_16bit(precision: str) -> bool:
    return precision in ("bf16", "fp16")


@dataclass
class ModelStates:
    """Per-GPU and per-host bytes of one trained (or frozen) model's states."""

    weights: int
    gradients: int
    optimizer_states: int
    host: int  # per host: offloaded states and the full fp32 copy each rank loads before DeepSpeed partitions it

    @property
    def gpu(self) -> int:
        return self.weights + self.gradients + self.optimizer_states


def trained_states(params: int, trainable: int, largest_layer: int, precision: str, zero_stage: int,
                   offload_optimizer: bool, offload_params: bool, gpus_per_node: int, nodes: int) -> ModelStates:
    """A DeepSpeed-trained model's states per GPU, data-parallel over ``gpus_per_node * nodes`` ranks.

    ``trainable`` < ``params`` with LoRA: only the adapters carry gradients and optimizer states; the frozen base
    keeps its 16-bit (or fp32) weights. Host memory: each rank loads the whole model in fp32 before
    ``deepspeed.initialize`` (no ``zero.Init``), which is DeepSpeed's ``zero_init=False`` case.
    """
    world = gpus_per_node * nodes
    w16 = 2 if is_16bit(precision) else 4
    # Gradient bytes (16-bit + fp32 copy) and optimizer bytes (fp32 master + Adam moments) per trained parameter.
    grad_b, optim_b = (2 + 4, 4 + 8) if is_16bit(precision) else (4, 8)
    load = params * 4 * gpus_per_node * HOST_BUFFER_FACTOR  # fp32 model per rank on the host, at load time
    if zero_stage == 3:
        gather = 4 * largest_layer  # DeepSpeed: the largest module, gathered (and prefetched) in 16-bit
        weights = w16 * params // world + gather
        if offload_params:
            host = params * max(4 * gpus_per_node, 18 / nodes) * HOST_BUFFER_FACTOR
            return ModelStates(gather, 0, 0, int(host))
        if offload_optimizer:
            host = trainable * max(4 * gpus_per_node, 16 / nodes) * HOST_BUFFER_FACTOR
            return ModelStates(weights, 0, 0, int(max(host, load)))
        # ZeRO-3 frees each 16-bit gradient once it is reduce-scattered: only the fp32 partition stays (DeepSpeed: 18).
        grad3 = 4 if is_16bit(precision) else grad_b
        return ModelStates(weights, grad3 * trainable // world, optim_b * trainable // world, int(load))
    weights = w16 * params
    if zero_stage == 0:
        return ModelStates(weights, grad_b * trainable, optim_b * trainable, int(load))
    if offload_optimizer:
        host = trainable * max(4 * world, 16) * HOST_BUFFER_FACTOR
        return ModelStates(weights, 0, 0, int(max(host, load)))
    return ModelStates(weights, grad_b * trainable // world, optim_b * trainable // world, int(load))


def frozen_states(params: int, largest_layer: int, precision: str, zero_stage: int, gpus_per_node: int,
                  nodes: int) -> ModelStates:
    """A frozen model (reference, reward): 16-bit weights, ZeRO-3 sharded over its workers when zero_stage is 3."""
    w = 2 if is_16bit(precision) else 4
    load = params * 4 * gpus_per_node * HOST_BUFFER_FACTOR
    if zero_stage == 3:
        return ModelStates(w * params // (gpus_per_node * nodes) + 4 * largest_layer, 0, 0, int(load))
    return ModelStates(w * params, 0, 0, int(load))


def layer_activation_bytes_per_token(shape: ModelShape, flash: bool = True, seq: int = 0, kernels: str = "hf") -> int:
    """Bytes one LLaMA decoder layer keeps for backward, per token, with 16-bit activations.

    Korthikanti et al.'s count redone for LLaMA's layer (h hidden, i MLP width, kv = kv_heads * head_dim):
      input RMSNorm: its fp32 upcast (4h) and the normalised 16-bit tensor the weight multiplies (2h)    6h
      q/k/v projections' input                                                                          2h
      Q (after RoPE) and K, V, saved by the attention kernel                                         2h + 4kv
      attention output (saved by flash/SDPA; also o_proj's input)                                       2h
      post-attention RMSNorm + MLP input                                                              6h + 2h
      SwiGLU: gate and up outputs, SiLU(gate), and their product (down_proj's input)                    8i
    = 20h + 4kv + 8i. Eager attention (``flash=False``) also keeps the fp32 softmax and its 16-bit copy: 6 * a * s.
    With Liger's kernels (``kernels="liger"``) an RMSNorm keeps only its 16-bit input (2h, plus a per-row rstd) and
    the fused SwiGLU keeps gate and up and recomputes SiLU in backward (Hsu et al. 2024): 12h + 4kv + 6i.
    """
    h, i = shape.hidden_size, shape.intermediate_size
    if kernels == "liger":
        per_token = 12 * h + 4 * shape.kv_size + 6 * i
    else:
        per_token = 20 * h + 4 * shape.kv_size + 8 * i
    if not flash:
        per_token += 6 * shape.num_attention_heads * seq
    return per_token


def training_activation_bytes(shape: ModelShape, micro_batch: int, seq: int, gradient_checkpointing: bool,
                              logit_tokens: int, flash: bool = True, kernels: str = "hf") -> int:
    """Stored activations of one micro batch [micro_batch, seq] through the whole model, at the end of forward.

    Without checkpointing every layer keeps ``layer_activation_bytes_per_token``; with it (transformers checkpoints
    each decoder layer) a layer keeps only its 16-bit input (2h) and one layer's set is rebuilt during its backward.
    Plus the final norm and LM-head input (8h per token) and the logits of the ``logit_tokens`` positions that
    enter the loss (``LOGIT_BYTES`` per logit; 0 for a value head; the caller passes 0 where Liger's fused linear
    cross-entropy computes the loss chunk by chunk without keeping them).
    """
    layer = layer_activation_bytes_per_token(shape, flash, seq, kernels)
    L, h = shape.num_hidden_layers, shape.hidden_size
    per_token = (L * 2 * h + layer) if gradient_checkpointing else L * layer
    return micro_batch * (seq * (per_token + 8 * h) + logit_tokens * shape.vocab_size * LOGIT_BYTES)


def inference_activation_bytes(shape: ModelShape, batch: int, seq: int, logit_tokens: int) -> int:
    """Peak transient bytes of a no-grad forward of [batch, seq]: one layer's working set plus the kept logits.

    Only one layer's tensors are alive at a time: the residual stream, its fp32 RMSNorm upcast and the normalised
    copy (2h + 4h + 4h as written by transformers' LlamaRMSNorm), and the MLP's gate, up and SiLU(gate) (6i).
    """
    h, i = shape.hidden_size, shape.intermediate_size
    return batch * (seq * (10 * h + 6 * i) + logit_tokens * shape.vocab_size * LOGIT_BYTES)


def kv_cache_bytes(shape: ModelShape, batch: int, tokens: int, bytes_per_element: int = 2) -> int:
    """2 (K and V) x layers x kv_heads x head_dim x (batch x tokens) x bytes (a full cache at the last step)."""
    return 2 * shape.num_hidden_layers * shape.num_key_value_heads * shape.head_dim * batch * tokens * bytes_per_element


def generation_bytes(shape: ModelShape, batch: int, prompt_len: int, new_tokens: int) -> tuple[int, int]:
    """(KV cache, transient) of sampling ``batch`` prompts with transformers' ``generate``.

    The transient is the larger of the prefill's working set (one layer over all prompt tokens, no grad) and a
    decoding step's logits (last position only: 16-bit, fp32 upcast, probabilities: 10 bytes per logit).
    """
    kv = kv_cache_bytes(shape, batch, prompt_len + new_tokens)
    prefill = inference_activation_bytes(shape, batch, prompt_len, 1)
    return kv, prefill
