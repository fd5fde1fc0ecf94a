"""Config sections shared by the training stages (SFT, RM, PPO). Each field is documented here, once."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, model_validator

from rlhf.config import Section


class ModelSection(Section):
    path: str = Field("embedded:tiny-llama", description="HF model id, local HF dir, or embedded:<name> (built offline)")
    tokenizer: str | None = Field(None, description="tokenizer path or id; default: the model's own")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward to save memory")
    kernels: Literal["hf", "liger"] = Field(
        "hf", description="hf = transformers' own layers; liger = Liger-Kernel's fused Triton kernels (CUDA only, "
                          "pip install 'rlhf[gpu]')"
    )


class DeepSpeedSection(Section):
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="ZeRO stage: 0 plain DDP, 1 optimizer, 2 +gradients, 3 +parameters")
    offload_optimizer: bool = Field(False, description="keep optimizer state on CPU (ZeRO-Offload; needs zero_stage>=1)")
    offload_params: bool = Field(False, description="keep parameters on CPU (ZeRO-Infinity; needs zero_stage=3)")
    precision: Literal["auto", "fp32", "bf16", "fp16", "amp_bf16"] = Field(
        "auto", description="auto = bf16 on GPU, fp32 on CPU; amp_bf16 = fp32 weights and optimizer, matmuls in bf16 "
                            "under torch.autocast (about 2x fp32 on CPUs with AVX512-BF16 or AMX)"
    )
    micro_batch_size: int = Field(4, ge=1, description="sequences per worker per forward pass")
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    gradient_clipping: float = Field(1.0, ge=0, description="max global grad norm (0 = off)")

    @model_validator(mode="after")
    def _offload_needs_zero(self):
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage >= 1")
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage = 3")
        return self


class OptimSection(Section):
    lr: float = Field(1e-4, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon")
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="LR decay after warmup")
    warmup_steps: int = Field(0, ge=0, description="linear warmup steps (optimizer steps)")
    warmup_ratio: float = Field(0.0, ge=0, le=1, description="warmup as a share of total steps (used if larger)")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="final LR as a share of the peak")


class TrainSection(Section):
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs when set")
    epochs: float = Field(1.0, gt=0, description="passes over the training data (when max_steps is unset)")
    seed: int = Field(0, description="seed for init, data order and sampling")
    log_every: int = Field(1, ge=1, description="write a metrics.jsonl row every N optimizer steps")
    eval_every: int = Field(0, ge=0, description="evaluate every N steps (0 = only at the end)")
    checkpoint_every: int = Field(0, ge=0, description="save HF dir + DeepSpeed state every N steps (0 = only at the end)")
    keep_checkpoints: int = Field(2, ge=1, description="how many step checkpoints to keep on disk")


class ResourcesSection(Section):
    num_workers: int = Field(1, ge=1, description="Ray Train workers (data-parallel ranks)")
    use_gpu: bool | Literal["auto"] = Field("auto", description="GPUs for the workers; auto = if the cluster has GPUs")
    gpus_per_worker: float = Field(1.0, gt=0, le=1, description="GPU share per worker with use_gpu; 0.5 puts 2 ranks on a GPU")
    backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="collectives on GPU: auto = nccl with whole GPUs, gloo with shared ones (NCCL refuses "
                            "two ranks on one GPU); always gloo on CPU"
    )
    cpus_per_worker: float = Field(1, gt=0, description="CPUs Ray reserves per worker")
    threads_per_worker: int | None = Field(None, ge=1, description="torch threads per worker (default: cpus_per_worker)")
    address: str | None = Field(None, description="Ray address to join; default: RAY_ADDRESS or a local instance")
    memory_check: bool = Field(True, description="on GPUs, refuse a plan `rlhf plan` says does not fit (false: go on anyway)")
    max_failures: int = Field(1, ge=0, description="times Ray Train restarts the workers after one dies or fails; "
                                                   "they resume from the newest checkpoint in OUT/checkpoints")
    in_process: bool = Field(
        False, description="run the one rank in this (driver) process, on its own devices, instead of a Ray Train "
                           "worker: the same code and a one-rank process group, without Ray's start-up (quick tries, "
                           "tests); needs num_workers=1, no address, and gets no restarts")

    @model_validator(mode="after")
    def _in_process_is_one_local_rank(self):
        if self.in_process and self.num_workers != 1:
            raise ValueError(f"resources.in_process runs one rank; num_workers={self.num_workers} needs Ray Train")
        if self.in_process and self.address:
            raise ValueError("resources.in_process runs in this process; it cannot join resources.address")
        return self


class SourceSection(Section):
    """Where records come from; every data section that names a source has these three keys."""

    path: str = Field(..., description="local file (json, jsonl, jsonl.gz, parquet), hf://datasets/<repo>/<file>, "
                                       "dataset folder or hub dataset name")
    config: str | None = Field(None, description="config (subset) of a hub dataset or dataset folder")
    split: str | None = Field(None, description="split of a hub dataset or dataset folder (default train)")


def _path_alone(value: object) -> object:
    return {"path": value} if isinstance(value, str) else value


# A source given as a bare path string or as {path, config, split}.
Source = Annotated[SourceSection, BeforeValidator(_path_alone)]


def read_source(source: SourceSection):
    """The rows of ``source`` (see :func:`rlhf.data.io.read_rows`)."""
    from rlhf.data.io import read_rows

    return read_rows(source.path, source.split, source.config)


class DataSection(SourceSection):
    format: Literal["auto", "alpaca", "sharegpt", "messages", "prompt_completion"] = Field(
        "auto", description="record format; auto detects by keys"
    )
    template: Literal["alpaca", "vicuna", "koala", "chat"] = Field("alpaca", description="prompt template")
    max_length: int = Field(512, gt=0, description="tokens per sequence; longer ones are truncated")
    packing: bool = Field(False, description="concatenate examples into max_length blocks")
    eval_path: str | None = Field(None, description="separate eval file; default: hold out eval_fraction of path")
    eval_fraction: float = Field(0.05, ge=0, lt=1, description="share of rows held out for eval when eval_path is unset")
    limit: int | None = Field(None, ge=1, description="use only the first N rows (quick tries)")
