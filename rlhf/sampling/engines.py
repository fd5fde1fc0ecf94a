"""The two decoding engines behind :func:`rlhf.sampling.generate`; both pick tokens with :func:`choose`.

- :class:`EagerEngine`: HF ``generate`` with its dynamic KV cache, one Python-launched kernel per op (the only
  engine until issue 14; still the CPU default, where compiling costs more than it saves).
- :class:`StaticEngine`: our own decode loop over transformers' ``StaticCache``. The prompt is prefilled eagerly;
  every later token is one call of a single-token decode step compiled with ``torch.compile(mode=
  "reduce-overhead")`` (inductor kernels, replayed as a CUDA graph on GPU). Shapes are fixed per batch bucket:
  rows padded to a power of two, the prompt width to a power of two (>= 32), the cache to width + max_new_tokens,
  so a rollout of any prompt lengths reuses a few compiled graphs.

Why the compiled step is not rebuilt when only the weights change: the step is compiled once per engine, and the
engine is kept per model object (:func:`engine_for`); dynamo guards on the parameters' metadata (shape, dtype,
device, stride), not on their values or addresses, so an optimizer step (in place) or a ZeRO-3 gather (new
storage, same shapes) passes every guard; so does a new cache of a shape seen before (guards check its tensors'
shapes, not its identity). Only the last shape's cache is kept (reset between calls), so the cache memory is one
batch's. ``tests/test_sampling.py`` counts dynamo frame compiles across weight updates. On GPU a ZeRO-3 gather into new storage makes cudagraph trees re-record the graph (one warm-up
step), which is not a recompile.
"""

from __future__ import annotations

import torch

from rlhf.sampling.config import SamplingParams


def choose(logits: torch.Tensor, params: SamplingParams) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits [B, V] -> (token [B], log pi(token) [B], entropy of pi [B]) under ``logits / temperature`` (greedy:
    plain logits).

    Sampling keeps the smallest set of tokens whose probability reaches ``top_p`` (HF's ``TopPLogitsWarper``), but
    the returned log-prob and entropy are of the full tempered distribution, the ones PPO's trainer recomputes.
    """
    logits = logits.float()
    if params.greedy:
        logp = torch.log_softmax(logits, dim=-1)
        token = logits.argmax(dim=-1)
    else:
        scaled = logits / params.temperature
        logp = torch.log_softmax(scaled, dim=-1)
        token = torch.multinomial(top_p_filter(scaled, params.top_p).softmax(dim=-1), 1)[:, 0]
    return token, logp.gather(-1, token[:, None])[:, 0], entropy_of(logp)


def entropy_of(logp: torch.Tensor) -> torch.Tensor:
    """[..., V] log-probabilities -> [...] entropy -sum p log p (0 * log 0 = 0 for masked-out tokens)."""
    return -(logp.exp() * logp.clamp(min=torch.finfo(logp.dtype).min)).sum(dim=-1)


def top_p_filter(scaled: torch.Tensor, top_p: float) -> torch.Tensor:
    """[B, V] tempered logits with tokens outside the top-p nucleus set to -inf (at least one token kept)."""
    if top_p >= 1.0:
        return scaled
    sorted_logits, sorted_index = torch.sort(scaled, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - top_p)
    remove[..., -1:] = False
    return scaled.masked_fill(remove.scatter(1, sorted_index, remove), float("-inf"))


class _ChooseProcessor:
    """A logits processor for HF ``generate`` that applies :func:`choose`'s temperature and top-p and records the
    chosen token's log-prob and the distribution's entropy: at step t it keeps log-softmax [B, V]; at step t+1 (or
    after the loop) it reads the token picked from it. Memory stays [B, V] plus [B, R], unlike ``output_logits``."""

    def __init__(self, params: SamplingParams) -> None:
        self.params, self.pending, self.logprobs, self.entropy = params, None, [], []

    def settle(self, chosen: torch.Tensor) -> None:
        if self.pending is not None:
            self.logprobs.append(self.pending.gather(-1, chosen[:, None])[:, 0])
            self.entropy.append(entropy_of(self.pending))
            self.pending = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.settle(input_ids[:, -1])
        scores = scores.float()
        if self.params.greedy:
            self.pending = torch.log_softmax(scores, dim=-1)
            return scores
        scaled = scores / self.params.temperature
        self.pending = torch.log_softmax(scaled, dim=-1)
        return top_p_filter(scaled, self.params.top_p)


class EagerEngine:
    name = "eager"

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def shape(self, rows: int, width: int, max_rows: int) -> tuple[int, int]:
        return rows, width

    def run(self, ids: torch.Tensor, mask: torch.Tensor, params: SamplingParams, eos_id: int,
            pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Left-padded prompts [B, P] -> (new tokens [B, R], their log-probs [B, R], entropy [B, R]);
        R <= max_new_tokens."""
        from transformers import LogitsProcessorList

        chooser = _ChooseProcessor(params)
        # temperature/top_p/top_k are neutral here (they override the model's generation_config): the processor
        # does the tempering and nucleus, so both engines draw from the same distribution.
        sampling = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0) if not params.greedy else dict(
            do_sample=False)
        seqs = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=params.max_new_tokens,
                                   eos_token_id=eos_id, pad_token_id=pad_id, use_cache=True,
                                   logits_processor=LogitsProcessorList([chooser]), **sampling)
        new = seqs[:, ids.shape[1]:]
        chooser.settle(new[:, -1])
        return new, torch.stack(chooser.logprobs, dim=1), torch.stack(chooser.entropy, dim=1)


def cache_kwarg(model: torch.nn.Module) -> str:
    """The forward keyword that takes a KV cache: ``cache`` in transformers >= 5.2x, ``past_key_values`` before (the
    GPU image has 5.17). An unknown keyword would be swallowed by ``**kwargs`` and decode without context, so ask."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _pow2(n: int, floor: int = 1) -> int:
    return max(floor, 1 << (max(n, 1) - 1).bit_length())


class StaticEngine:
    name = "static"

    def __init__(self, model: torch.nn.Module, compile: bool = True, backend: str = "inductor") -> None:
        self.model = model
        self.cache_kwarg = cache_kwarg(model)
        self.caches: dict[tuple[int, int], object] = {}
        self.step = self._decode
        if compile:
            import torch._dynamo

            # One graph per (rows, cache length) bucket; the default limit (8) would fall back to eager early.
            if getattr(torch._dynamo.config, "recompile_limit", 64) < 64:
                torch._dynamo.config.recompile_limit = 64
            mode = "reduce-overhead" if backend == "inductor" else None
            self.step = torch.compile(self._decode, backend=backend, mode=mode, dynamic=False)

    def shape(self, rows: int, width: int, max_rows: int) -> tuple[int, int]:
        """Rows to the next power of two (or ``max_rows`` when that is smaller), width to a power of two >= 32."""
        bucket = _pow2(rows)
        return (max_rows if rows <= max_rows < bucket else bucket), _pow2(width, floor=32)

    def _decode(self, token: torch.Tensor, position: torch.Tensor, mask: torch.Tensor, cache) -> torch.Tensor:
        """token [B, 1], position [B, 1], mask [B, L] -> next-token logits [B, V] (fp32); writes one cache slot."""
        out = self.model(input_ids=token, position_ids=position, attention_mask=mask, use_cache=True,
                         **{self.cache_kwarg: cache})
        return out.logits[:, -1, :].float()

    def _cache(self, rows: int, length: int):
        from transformers import StaticCache

        key = (rows, length)
        if key not in self.caches:
            self.caches.clear()  # free the last shape's cache before allocating this one
            self.caches[key] = StaticCache(config=self.model.config, max_cache_len=length)
        cache = self.caches[key]
        for layer in cache.layers:  # reset the fill level only: unwritten slots are masked out
            layer.cumulative_length.zero_()
        return cache

    def run(self, ids: torch.Tensor, mask: torch.Tensor, params: SamplingParams, eos_id: int,
            pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Left-padded prompts [B, P] -> (new tokens [B, R], their log-probs [B, R], entropy [B, R]);
        R <= max_new_tokens.

        Cache slots 0..P-1 hold the padded prompt, slot P+t the t-th new token; a row's position ids count only
        its real tokens, as HF ``generate`` does for left padding. Rows stop at EOS (pad after); the loop ends
        early once every row has stopped (checked every 8 steps: each check syncs with the device).
        """
        rows, width = ids.shape
        new_tokens = params.max_new_tokens
        cache = self._cache(rows, width + new_tokens)
        full_mask = torch.zeros((rows, width + new_tokens), dtype=mask.dtype, device=mask.device)
        full_mask[:, :width] = mask
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=full_mask, position_ids=positions,
                         use_cache=True, logits_to_keep=1, **{self.cache_kwarg: cache})
        logits = out.logits[:, -1, :]
        next_position = mask.sum(dim=1, keepdim=True)  # [B, 1]
        tokens = torch.full((rows, new_tokens), pad_id, dtype=torch.long, device=ids.device)
        logprobs = torch.zeros((rows, new_tokens), dtype=torch.float32, device=ids.device)
        entropy = torch.zeros_like(logprobs)
        done = torch.zeros(rows, dtype=torch.bool, device=ids.device)
        steps = new_tokens
        for t in range(new_tokens):
            token, logp, ent = choose(logits, params)
            token = token.masked_fill(done, pad_id)
            tokens[:, t], logprobs[:, t], entropy[:, t] = token, logp, ent
            done |= token == eos_id
            if t == new_tokens - 1 or (t % 8 == 7 and bool(done.all())):
                steps = t + 1
                break
            full_mask[:, width + t] = 1
            if hasattr(torch.compiler, "cudagraph_mark_step_begin"):
                torch.compiler.cudagraph_mark_step_begin()
            logits = self.step(token[:, None], next_position + t, full_mask, cache)
        return tokens[:, :steps], logprobs[:, :steps], entropy[:, :steps]


def engine_for(model: torch.nn.Module, name: str, compile: bool = True, backend: str = "inductor"):
    """The engine for ``model``, kept as long as the model lives so its compiled step and caches are reused.

    Stored in the module's ``__dict__`` (not as a submodule: invisible to ``state_dict`` and ``parameters``), so the
    engine, which refers back to the model, is freed with it.
    """
    engines = model.__dict__.setdefault("_rlhf_sampling_engines", {})
    key = (name, compile, backend)
    if key not in engines:
        engines[key] = StaticEngine(model, compile, backend) if name == "static" else EagerEngine(model)
    return engines[key]
