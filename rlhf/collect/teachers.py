"""Teachers for self-instruct, and the Ray actor pool that samples from a local causal LM.

A teacher turns text prompts into text completions (``None`` for a prompt it could not answer):

- ``hf``: any local causal-LM dir (or ``embedded:<name>``), sampled with :func:`rlhf.sampling.generate`
  in a pool of Ray actors (:class:`GenerationPool`, shared with preference sampling);
- ``openai``: any OpenAI-compatible ``base_url`` and model through :class:`rlhf.collect.openai_client.ChatClient`
  (concurrency, timeouts, retries with backoff, a request budget); the prompt is sent as one user message, as
  the chat-model ports of Alpaca's ``generate_instruction.py`` do;
- ``simulated``: :class:`rlhf.collect.simulated_teacher.SimulatedTeacher`, offline and deterministic, for tiny
  runs and tests.
"""

from __future__ import annotations

from typing import Literal, Protocol

from pydantic import Field, model_validator

from rlhf.config import Section
from rlhf.models.loading import INFERENCE_PRECISION_HELP, InferencePrecision
from rlhf.sampling.config import GenerationSection, SamplingParams


class ActorsSection(Section):
    num_actors: int = Field(1, ge=1, description="Ray actors sampling in parallel, each holding one model copy")
    cpus_per_actor: float = Field(1, gt=0, description="CPUs Ray reserves per actor (also its torch threads)")
    use_gpu: bool | Literal["auto"] = Field("auto", description="one GPU per actor; auto = if the cluster has GPUs")
    precision: InferencePrecision = Field("auto", description=INFERENCE_PRECISION_HELP)
    batch_size: int = Field(16, ge=1, description="sequences per generate() call inside an actor")
    generation: GenerationSection = Field(default_factory=GenerationSection,
                                          description="sampling engine and token budget (rlhf.sampling)")
    address: str | None = Field(None, description="Ray address to join; default: RAY_ADDRESS or a local instance")


class ApiSection(Section):
    """An OpenAI-compatible chat-completions endpoint (see :class:`rlhf.collect.openai_client.ChatClient`)."""

    model: str | None = Field(None, description="openai: the model name (teacher hf: a model dir or embedded:<name>)")
    base_url: str | None = Field(None, description="openai: the API base, e.g. https://api.openai.com/v1")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai: environment variable holding the API key")
    concurrency: int = Field(8, ge=1, description="openai: requests in flight at once")
    timeout_s: float = Field(60.0, gt=0, description="openai: seconds before a request is abandoned and retried")
    max_retries: int = Field(5, ge=0, description="openai: retries per prompt on 429, 5xx, timeouts")
    backoff_s: float = Field(1.0, ge=0, description="openai: first backoff; doubles on each retry")
    request_budget: int | None = Field(None, ge=1, description="openai: cap on HTTP requests, retries included")

    def chat_client(self):
        from rlhf.collect.openai_client import ChatClient

        return ChatClient(
            self.base_url, self.model, api_key_env=self.api_key_env, concurrency=self.concurrency,
            timeout_s=self.timeout_s, max_retries=self.max_retries, backoff_s=self.backoff_s,
            request_budget=self.request_budget,
        )


class TeacherSection(ApiSection):
    kind: Literal["simulated", "hf", "openai"] = Field(
        "simulated", description="simulated (offline task writer), hf (local model dir, Ray actors), openai (API)"
    )
    tokenizer: str | None = Field(None, description="hf: tokenizer path (default: the model's own)")
    temperature: float = Field(1.0, ge=0, description="sampling temperature (Alpaca: 1.0)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass (Alpaca: 1.0)")
    max_tokens: int = Field(512, ge=1, description="tokens per completion (Alpaca: 3072 for 20 tasks)")
    seed: int = Field(0, description="simulated/hf: sampling seed")
    actors: ActorsSection = Field(default_factory=ActorsSection, description="hf: the Ray actor pool")

    @model_validator(mode="after")
    def _needs_for_kind(self):
        if self.kind == "hf" and not self.model:
            raise ValueError("teacher kind 'hf' needs 'model' (a local model dir or embedded:<name>)")
        if self.kind == "openai" and not (self.model and self.base_url):
            raise ValueError("teacher kind 'openai' needs 'model' and 'base_url'")
        return self


class Teacher(Protocol):
    def complete(self, prompts: list[str]) -> list[str | None]:
        """One completion per prompt, in order; None where the prompt got no answer."""

    def stats(self) -> dict:
        """Counters for the manifest."""

    def close(self) -> None: ...


class _GenerationWorker:
    """One Ray actor: a causal LM on its own device, sampling batches of token-id prompts."""

    def __init__(self, model_path: str, threads: int, precision: str = "auto") -> None:
        import os

        import torch

        from rlhf.models.loading import load_for_inference

        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)
        self.model = load_for_inference(model_path, "causal_lm", precision, "auto")

    def generate(self, prompts: list[list[int]], params: SamplingParams, eos_id: int, pad_id: int,
                 batch_size: int, seed: int, generation: GenerationSection) -> tuple[list[list[int]], int]:
        """(responses, prompts truncated to the model's context)."""
        from rlhf.sampling import generate

        out = generate(self.model, prompts, params, eos_id, pad_id, generation, max_rows=batch_size, seed=seed)
        return out.tokens, out.truncated


class GenerationPool:
    """``num_actors`` Ray actors holding ``model_path``; :meth:`generate` splits prompts across them.

    Shards are contiguous and seeded ``seed + shard``, so a run is reproducible for a fixed number of actors.
    """

    def __init__(self, model_path: str, eos_id: int, pad_id: int, actors: ActorsSection) -> None:
        import ray

        from rlhf.engine.launch import cluster_has_gpus, ensure_ray

        ensure_ray(actors.address)
        use_gpu = cluster_has_gpus() if actors.use_gpu == "auto" else bool(actors.use_gpu)
        remote = ray.remote(num_cpus=actors.cpus_per_actor, num_gpus=1 if use_gpu else 0)(_GenerationWorker)
        threads = max(1, int(actors.cpus_per_actor))
        self.workers = [remote.remote(model_path, threads, actors.precision) for _ in range(actors.num_actors)]
        self.eos_id, self.pad_id, self.batch_size, self.generation = eos_id, pad_id, actors.batch_size, actors.generation
        self.truncated = 0  # prompts cut to the model's context, over all calls

    def generate(self, prompts: list[list[int]], params: SamplingParams, seed: int) -> list[list[int]]:
        """Response token ids per prompt (cut after the first EOS, which is kept when produced)."""
        import ray

        if not prompts:
            return []
        per_shard = -(-len(prompts) // len(self.workers))
        shards = [prompts[i:i + per_shard] for i in range(0, len(prompts), per_shard)]
        futures = [
            worker.generate.remote(shard, params, self.eos_id, self.pad_id, self.batch_size, seed + index,
                                   self.generation)
            for index, (worker, shard) in enumerate(zip(self.workers, shards))
        ]
        results = ray.get(futures)
        self.truncated += sum(cut for _, cut in results)
        return [response for shard, _ in results for response in shard]

    def close(self) -> None:
        import ray

        for worker in self.workers:
            ray.kill(worker)
        self.workers = []


def decode(tokenizer, response: list[int]) -> str:
    """Response ids -> text without the closing EOS and other special tokens."""
    return tokenizer.decode(response, skip_special_tokens=True).strip()


class HFTeacher:
    """A local causal LM continuing raw text prompts (bos + prompt, as a base model sees it)."""

    def __init__(self, section: TeacherSection) -> None:
        from rlhf.models.loading import resolve_model_path
        from rlhf.models.tokenizer import load_tokenizer

        model_path = resolve_model_path(section.model, section.tokenizer)
        self.tokenizer = load_tokenizer(section.tokenizer or model_path)
        self.params = SamplingParams(section.temperature, section.top_p, section.max_tokens, section.temperature > 0)
        self.seed = section.seed
        self.calls = 0
        self.pool = GenerationPool(model_path, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id,
                                   section.actors)

    def complete(self, prompts: list[str]) -> list[str | None]:
        ids = [self.tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
        self.calls += 1
        responses = self.pool.generate(ids, self.params, seed=self.seed + 1000 * self.calls)
        return [decode(self.tokenizer, r) for r in responses]

    def stats(self) -> dict:
        return {"generate_calls": self.calls, "prompts_truncated": self.pool.truncated}

    def close(self) -> None:
        self.pool.close()


class OpenAITeacher:
    """A chat model behind an OpenAI-compatible API; each prompt is one user message."""

    def __init__(self, section: TeacherSection) -> None:
        self.section = section
        self.client = section.chat_client()

    def complete(self, prompts: list[str]) -> list[str | None]:
        messages = [[{"role": "user", "content": p}] for p in prompts]
        return self.client.complete_many(messages, self.section.temperature, self.section.max_tokens)

    @property
    def budget_exhausted(self) -> bool:
        return self.client.stats.budget_exhausted

    def stats(self) -> dict:
        return self.client.stats.as_dict()

    def close(self) -> None:
        self.client.close()


def build_teacher(section: TeacherSection) -> Teacher:
    if section.kind == "hf":
        return HFTeacher(section)
    if section.kind == "openai":
        return OpenAITeacher(section)
    from rlhf.collect.simulated_teacher import SimulatedTeacher

    return SimulatedTeacher(seed=section.seed)
