"""HTTP client for a remote reward service, speaking either protocol PPO can use.

- ours (``rlhf serve``'s scorer):  POST /score       {"pairs": [{"prompt", "response"}]} -> {"scores": [...]}
- OpenRLHF's remote RM:            POST /get_reward  {"query": [sequence], "prompts": [templated prompt]}
                                                      -> {"rewards": [...]}
  OpenRLHF (openrlhf/utils/agent.py, SingleTurnAgentExecutor) sends as ``query`` the whole sequence the policy
  saw, ``tokenizer.decode(prompt_ids + response_ids, skip_special_tokens=False)``: the templated prompt, bos and
  eos included; its serve_rm.py tokenizes that with ``add_special_tokens=False``. ``prompts`` are the (templated)
  prompts alone.

Requests are retried with exponential backoff on connection errors, timeouts and 5xx answers; a 4xx answer or a
malformed body is not retried (a retry cannot fix it) and raises RemoteRewardError naming the URL.
"""

from __future__ import annotations

import time
from typing import Literal
from urllib.parse import urlparse

import httpx

from rlhf.net import use_proxy_env

Protocol = Literal["score", "get_reward"]


class RemoteRewardError(RuntimeError):
    """The reward service could not be reached or gave an answer we cannot use."""


def detect_protocol(url: str, protocol: str = "auto") -> Protocol:
    """``protocol`` unless "auto": then the URL's last path segment (``/score`` or ``/get_reward``) decides."""
    if protocol in ("score", "get_reward"):
        return protocol  # type: ignore[return-value]
    last = urlparse(url).path.rstrip("/").rsplit("/", 1)[-1]
    if last in ("score", "get_reward"):
        return last  # type: ignore[return-value]
    raise ValueError(f"reward.url {url}: cannot tell the protocol; end the URL in /score or /get_reward, "
                     "or set reward.protocol")


class RemoteReward:
    """A remote reward service: :meth:`score` (our /score) or :meth:`get_reward` (OpenRLHF's), one float per item."""

    def __init__(self, url: str, protocol: str = "auto", timeout_s: float = 60.0, retries: int = 3,
                 backoff_s: float = 0.5, headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.protocol = detect_protocol(url, protocol)
        self.retries = retries
        self.backoff_s = backoff_s
        self.client = httpx.Client(timeout=timeout_s, headers=headers or {}, trust_env=use_proxy_env(url))

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        """Our /score protocol: (user prompt, response) text pairs; the service templates them as its RM was trained."""
        if self.protocol != "score":
            raise ValueError(f"{self.url} speaks {self.protocol}; send whole sequences with get_reward()")
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        return self._post({"pairs": [{"prompt": p, "response": r} for p, r in zip(prompts, responses)]}, len(prompts))

    def get_reward(self, queries: list[str], prompts: list[str]) -> list[float]:
        """OpenRLHF's /get_reward protocol: ``queries`` are whole sequences as the policy saw them (decoded with
        their special tokens), ``prompts`` the templated prompts alone."""
        if self.protocol != "get_reward":
            raise ValueError(f"{self.url} speaks {self.protocol}; send (prompt, response) pairs with score()")
        if len(prompts) != len(queries):
            raise ValueError(f"{len(prompts)} prompts but {len(queries)} queries")
        return self._post({"query": list(queries), "prompts": list(prompts)}, len(queries))

    def parse(self, body: object, n: int) -> list[float]:
        key = "scores" if self.protocol == "score" else "rewards"
        values = body.get(key) if isinstance(body, dict) else None
        if not isinstance(values, list) or len(values) != n:
            got = len(values) if isinstance(values, list) else type(values).__name__
            raise RemoteRewardError(f"{self.url}: expected '{key}' with {n} numbers, got {got}")
        try:
            return [float(v) for v in values]
        except (TypeError, ValueError):
            raise RemoteRewardError(f"{self.url}: '{key}' holds a non-number") from None

    def _post(self, body: dict, n: int) -> list[float]:
        if not n:
            return []
        last_error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                answer = self.client.post(self.url, json=body)
            except httpx.HTTPError as err:  # connection refused, timeout, ...
                last_error = f"{type(err).__name__}: {err}"
                continue
            if answer.status_code >= 500:
                last_error = f"HTTP {answer.status_code}: {answer.text[:200]}"
                continue
            if answer.status_code >= 400:
                raise RemoteRewardError(f"{self.url}: HTTP {answer.status_code}: {answer.text[:200]}")
            try:
                payload = answer.json()
            except ValueError:
                raise RemoteRewardError(f"{self.url}: the answer is not JSON: {answer.text[:200]!r}") from None
            return self.parse(payload, n)
        raise RemoteRewardError(f"{self.url}: no answer after {self.retries + 1} attempts ({last_error})")

    def close(self) -> None:
        self.client.close()
