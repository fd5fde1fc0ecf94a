"""The FastAPI ingress of the scoring service: routes, limits and the one-line 4xx for every kind of bad request.

Layers, outermost first: bearer auth (401 before the body is read), the body gate (413/415/400 for size,
content type, UTF-8 and JSON syntax, see body.py), FastAPI's schema validation (422, rewritten to one line), and
the routes, which check item counts, encode on a worker thread and await the backend's batched scorer.
Anything unexpected inside a route becomes a 500 for that request only; the replica keeps serving.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Awaitable, Callable, Protocol

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rlhf.errors import UserError
from rlhf.serve.auth import BearerAuthMiddleware
from rlhf.serve.body import BodyGateMiddleware
from rlhf.serve.config import LimitsSection
from rlhf.serve.schemas import (
    GetRewardRequest,
    GetRewardResponse,
    HealthResponse,
    ScoreRequest,
    ScoreResponse,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Encoded:
    """One item ready for the model: token ids (length <= max_length) and whether they were cut to fit."""

    ids: list[int]
    truncated: bool


class ScoringBackend(Protocol):
    """What the routes need from a replica: encoders (run on a thread) and a batched async scorer."""

    model_name: str
    max_length: int
    normalize_get_reward: bool

    def encode_texts(self, texts: list[str]) -> list[Encoded]: ...

    def encode_pairs(self, prompts: list[list[dict[str, str]]], responses: list[str]) -> list[Encoded]: ...

    def normalize(self, scores: list[float]) -> list[float]: ...

    def score(self, items: list[Encoded]) -> Awaitable[list[float]]: ...


UNION_TAGS = {"str", "int", "float", "bool", "list", "dict"}  # loc parts pydantic adds for union members


def describe_validation_error(err: RequestValidationError) -> str:
    """FastAPI's list of pydantic errors as one line naming the field: ``pairs[2].prompt: Input should be ...``.

    The deepest error wins: for ``prompt: str | list[Message]`` a bad role is more telling than "not a string".
    """
    first = max(err.errors(), key=lambda e: len(e.get("loc", ())))
    where = ""
    for part in first.get("loc", ())[1:]:  # drop the leading "body"
        if isinstance(part, int):
            where += f"[{part}]"
        elif part not in UNION_TAGS and "[" not in part:
            where += f".{part}" if where else str(part)
    message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    return f"{where}: {message}" if where else f"request body: {message}"


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def check_count(n: int, limit: int, name: str) -> None:
    if n > limit:
        raise HTTPException(422, f"'{name}' has {n} items; the limit is {limit} per request")


async def encode(fn: Callable[..., list[Encoded]], *args) -> list[Encoded]:
    """Run an encoder off the event loop; a UserError (e.g. a template refusing a turn) becomes a 422."""
    try:
        return await run_in_threadpool(fn, *args)
    except UserError as err:
        raise HTTPException(422, str(err)) from None


def normalized(backend: ScoringBackend, scores: list[float]) -> list[float]:
    try:
        return backend.normalize(scores)
    except UserError as err:  # an RM saved without mean/std
        raise HTTPException(422, str(err)) from None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        return _error(422, describe_validation_error(err))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, err: StarletteHTTPException) -> JSONResponse:
        return _error(err.status_code, str(err.detail), getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return _error(500, f"internal error: {type(err).__name__}")


ScoreFn = Callable[[list[Encoded]], Awaitable[list[float]]]


def build_app(backend: ScoringBackend, limits: LimitsSection, token_sha256: str | None = None,
              score_fn: ScoreFn | None = None) -> FastAPI:
    """The ASGI app a replica serves.

    ``token_sha256``: require ``Authorization: Bearer`` with that token. ``score_fn``: how items reach the
    model (a Serve batch queue in a replica); default ``backend.score``, one forward pass per request.
    """
    score_items = score_fn or backend.score
    app = FastAPI(
        title="rlhf reward model",
        description="Scores prompt/response pairs or texts with a reward model (the rm stage's output).",
        version="1",
    )
    install_error_handlers(app)

    @app.get("/health", response_model=HealthResponse)
    async def health() -> HealthResponse:
        return HealthResponse(status="ok", model=backend.model_name, max_length=backend.max_length)

    @app.post("/score", response_model=ScoreResponse)
    async def score(request: ScoreRequest) -> ScoreResponse:
        """Score texts, or prompt/response pairs through the same template as the rm stage."""
        if request.pairs is not None:
            check_count(len(request.pairs), limits.max_items, "pairs")
            items = await encode(backend.encode_pairs, [p.messages() for p in request.pairs],
                                 [p.response for p in request.pairs])
        else:
            check_count(len(request.texts), limits.max_items, "texts")
            items = await encode(backend.encode_texts, request.texts)
        scores = await score_items(items)
        if request.normalize:
            scores = normalized(backend, scores)
        return ScoreResponse(scores=scores, model=backend.model_name, normalized=request.normalize,
                             max_length=backend.max_length, truncated=[i for i, e in enumerate(items) if e.truncated])

    @app.post("/get_reward", response_model=GetRewardResponse)
    async def get_reward(request: GetRewardRequest) -> GetRewardResponse:
        """OpenRLHF's remote reward model: ``query`` texts in, ``rewards`` (and ``scores``) out."""
        check_count(len(request.query), limits.max_items, "query")
        items = await encode(backend.encode_texts, request.query)
        scores = await score_items(items)
        if backend.normalize_get_reward:
            scores = normalized(backend, scores)
        return GetRewardResponse(rewards=scores, scores=scores, truncated=[i for i, e in enumerate(items) if e.truncated])

    app.add_middleware(BodyGateMiddleware, max_body_bytes=limits.max_body_bytes)
    if token_sha256 is not None:
        app.add_middleware(BearerAuthMiddleware, token_sha256=token_sha256)  # added last = runs first
    return app
