"""Settings of the reward-model scoring service (``rlhf serve``): one typed model, filled from YAML, flags and overrides."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rlhf.config import Section

LOOPBACK = "127.0.0.1"


class AutoscalingSection(Section):
    min_replicas: int = Field(1, ge=0, description="fewest replicas kept running")
    max_replicas: int = Field(2, ge=1, description="most replicas started under load")
    target_ongoing_requests: float = Field(32.0, gt=0, description="requests per replica the autoscaler aims for")

    @model_validator(mode="after")
    def _ordered(self):
        if self.max_replicas < self.min_replicas:
            raise ValueError("max_replicas must be >= min_replicas")
        return self


class LimitsSection(Section):
    max_items: int = Field(256, ge=1, description="most texts or pairs in one request")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="largest request body; bigger ones get 413")


class ServeConfig(Section):
    model_dir: str = Field(..., description="HF sequence-classification dir with one label (the rm stage's output)")
    host: str = Field(LOOPBACK, description="address to bind; anything but loopback exposes the service")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port")
    replicas: int = Field(1, ge=1, description="model replicas (ignored when autoscaling is set)")
    autoscaling: AutoscalingSection | None = Field(None, description="replica autoscaling; null = fixed replicas")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = one GPU per replica when Ray has GPUs")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto = bf16 on GPU, fp32 on CPU")
    cpus_per_replica: float = Field(1.0, gt=0, description="Ray CPUs reserved by each replica (= its torch threads)")
    max_batch_size: int = Field(32, ge=1, description="texts scored in one forward pass (Serve dynamic batching)")
    batch_wait_ms: float = Field(5.0, ge=0, description="how long a batch waits to fill before it runs")
    max_ongoing_requests: int = Field(256, ge=1, description="requests in flight per replica; high so batches can fill")
    normalize_get_reward: bool = Field(False, description="/get_reward returns (score - mean) / std from the checkpoint")
    token_env: str | None = Field(None, description="env var holding a bearer token every request must present")
    limits: LimitsSection = Field(default_factory=LimitsSection, description="request limits")
    app_name: str = Field("rlhf-rm", description="Ray Serve application name")
    address: str | None = Field(None, description="Ray cluster to join; default RAY_ADDRESS or a local instance")
