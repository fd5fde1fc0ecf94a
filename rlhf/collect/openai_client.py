"""A concurrent chat-completions client for teacher models: OpenAI or any OpenAI-compatible server.

Built on the official ``openai`` package (sync client, one thread per concurrent request). The SDK's own retries
are off so that every HTTP attempt is counted here and checked against the request budget. Retry policy, as
Alpaca's ``openai_utils`` and the OpenAI rate-limit guide: 429, 5xx, timeouts and connection errors are retried
with exponential backoff; other 4xx are not (the request itself is wrong).
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import openai

from rlhf.errors import UserError
from rlhf.net import use_proxy_env

# Local OpenAI-compatible servers ignore the key, but the SDK refuses to start without one.
PLACEHOLDER_API_KEY = "EMPTY"
# Status codes that mean the configuration is wrong (key, model name, url), not that the server is busy.
_CONFIG_ERROR_STATUSES = {401: "rejected the API key", 403: "refused access", 404: "has no such model or endpoint"}


@dataclass
class ClientStats:
    """Counts over the client's life. ``requests`` counts HTTP attempts, retries included."""

    requests: int = 0
    retries: int = 0
    failures: int = 0
    completed: int = 0
    budget_exhausted: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


class _Unreachable(Exception):
    """Every attempt for one prompt failed to connect."""


class ChatClient:
    """Sends many chat requests at once, with retries, backoff and a cap on the number of HTTP requests.

    ``api_key_env`` names the environment variable holding the key (unset: a placeholder, fine for local
    servers). ``request_budget`` caps HTTP attempts over the client's life (None: no cap); once reached, prompts
    not yet answered get None and ``stats.budget_exhausted`` is set. Backoff before retry k (1-based) is
    ``backoff_s * 2**(k-1)`` seconds.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout_s: float = 60.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        request_budget: int | None = None,
    ) -> None:
        if concurrency < 1 or max_retries < 0 or timeout_s <= 0 or backoff_s < 0:
            raise UserError("ChatClient: concurrency >= 1, max_retries >= 0, timeout_s > 0 and backoff_s >= 0")
        self.base_url = base_url
        self.model = model
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.request_budget = request_budget
        self.stats = ClientStats()
        self._lock = threading.Lock()
        # Set when one prompt found the server unreachable, so the others stop retrying.
        self._give_up = threading.Event()
        self._client = openai.OpenAI(
            base_url=base_url,
            api_key=os.environ.get(api_key_env) or PLACEHOLDER_API_KEY,
            timeout=timeout_s,
            max_retries=0,
            http_client=openai.DefaultHttpxClient(trust_env=use_proxy_env(base_url)),
        )

    def _take_request(self) -> bool:
        """Count one HTTP attempt; False (and nothing counted) once the budget is spent."""
        with self._lock:
            if self.request_budget is not None and self.stats.requests >= self.request_budget:
                self.stats.budget_exhausted = True
                return False
            self.stats.requests += 1
            return True

    def _count(self, field: str) -> None:
        with self._lock:
            setattr(self.stats, field, getattr(self.stats, field) + 1)

    def _complete_one(self, messages: list[dict], temperature: float, max_tokens: int, n: int) -> list[str | None]:
        """The ``n`` answers to one prompt, or ``[None] * n`` when it failed or the budget ran out."""
        connection_errors = 0
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._count("retries")
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            if self._give_up.is_set() or not self._take_request():
                return [None] * n
            try:
                response = self._client.chat.completions.create(
                    model=self.model, messages=messages, temperature=temperature, max_tokens=max_tokens, n=n
                )
            except openai.APITimeoutError:  # a subclass of APIConnectionError: check it first
                continue
            except openai.APIConnectionError:
                connection_errors += 1
                continue
            except openai.APIStatusError as err:
                if err.status_code in _CONFIG_ERROR_STATUSES:
                    raise UserError(
                        f"{self.base_url} {_CONFIG_ERROR_STATUSES[err.status_code]} "
                        f"(HTTP {err.status_code}, model '{self.model}', key from ${self.api_key_env})"
                    ) from err
                if err.status_code == 429 or err.status_code >= 500:
                    continue
                break  # another 4xx: the request is wrong, retrying will not help
            self._count("completed")
            answers = [choice.message.content for choice in sorted(response.choices, key=lambda c: c.index)]
            return (answers + [None] * n)[:n]
        if connection_errors == self.max_retries + 1:
            self._give_up.set()
            raise _Unreachable()
        self._count("failures")
        return [None] * n

    def complete_many(
        self, prompts: list[list[dict]], temperature: float = 0.7, max_tokens: int = 512, n: int = 1
    ) -> list[str | None]:
        """Answers to each message list, in order; None for a prompt that failed after retries or was not sent.

        With ``n > 1`` the result is flat: the answers to prompt i are at ``[i*n, (i+1)*n)``.
        Raises UserError (one line naming the url) when a prompt could not connect on any attempt.
        """
        self._give_up.clear()
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = [pool.submit(self._complete_one, m, temperature, max_tokens, n) for m in prompts]
            try:
                per_prompt = [future.result() for future in futures]
            except _Unreachable:
                raise UserError(
                    f"cannot reach {self.base_url} (no connection after {self.max_retries + 1} attempts)"
                ) from None
        return [answer for answers in per_prompt for answer in answers]

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
