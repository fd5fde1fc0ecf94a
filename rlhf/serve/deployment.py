"""The Ray Serve deployment: one replica = one reward model, scoring items in dynamic batches (``@serve.batch``).

Each request's items enter the batch queue one by one, so items from many concurrent requests share a forward
pass of up to ``max_batch_size`` texts (Ray Serve dynamic batching, docs.ray.io "Dynamic Request Batching").
The forward pass runs on a worker thread, so the event loop keeps accepting requests while the model works and
the next batch fills meanwhile. ``max_ongoing_requests`` must be well above the batch size, or the proxy would
never let enough requests in to fill a batch.
"""

from __future__ import annotations

import asyncio
from typing import Any

import torch
from ray import serve
from ray.serve import metrics

from rlhf.serve.app import Encoded, build_app
from rlhf.serve.config import ServeConfig
from rlhf.serve.scoring import RewardBackend

BATCH_SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256]


@serve.deployment(name="RewardModel")
@serve.ingress()
class RewardModelServer:
    """A replica: app.py's FastAPI ingress over a RewardBackend, with items scored through the batch queue."""

    def __init__(self, settings: dict[str, Any], token_sha256: str | None):
        self.cfg = ServeConfig.model_validate(settings)
        self.token_sha256 = token_sha256
        torch.set_num_threads(max(1, int(self.cfg.cpus_per_replica)))
        self.backend = RewardBackend(self.cfg.model_dir, device=self.cfg.device, dtype=self.cfg.dtype,
                                     normalize_get_reward=self.cfg.normalize_get_reward,
                                     score_batch_size=self.cfg.max_batch_size)
        self._batched.set_max_batch_size(self.cfg.max_batch_size)
        self._batched.set_batch_wait_timeout_s(self.cfg.batch_wait_ms / 1000.0)
        self.items_scored = metrics.Counter("rlhf_rm_items_scored", description="texts scored by the reward model")
        self.batch_sizes = metrics.Histogram("rlhf_rm_batch_size", description="texts per forward pass",
                                             boundaries=BATCH_SIZE_BUCKETS)

    def __serve_build_asgi_app__(self):
        return build_app(self.backend, self.cfg.limits, self.token_sha256, score_fn=self.score)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _batched(self, items: list[Encoded]) -> list[float]:
        self.batch_sizes.observe(len(items))
        scores = await asyncio.to_thread(self.backend.score_now, items)
        self.items_scored.inc(len(items))
        return scores

    async def score(self, items: list[Encoded]) -> list[float]:
        return list(await asyncio.gather(*(self._batched(item) for item in items)))

    def check_health(self) -> None:
        """Ray Serve's periodic probe: score one fixed text; a replica that cannot is restarted."""
        self.backend.self_check()
