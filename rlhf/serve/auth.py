"""Bearer-token auth for the scoring service: an ASGI middleware that answers 401 before any body is read.

Replicas hold only the SHA-256 digest of the token (the plaintext never enters Ray's deployment state), and
compare digests with ``hmac.compare_digest`` so the time taken does not depend on where a guess goes wrong.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Awaitable, Callable

from rlhf.errors import UserError
from rlhf.serve.body import send_json

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


def read_token(env_var: str) -> str:
    """The token in ``env_var``; a UserError when it is unset or blank, so a typo never serves unprotected."""
    token = os.environ.get(env_var, "").strip()
    if not token:
        raise UserError(f"--token-env {env_var}: the environment variable is unset or empty")
    return token


def token_digest(token: str) -> str:
    """Hex SHA-256 of the token: what a replica keeps and compares against."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def presented_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None when absent or another scheme."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


def token_matches(token: str | None, expected_digest: str) -> bool:
    given = token_digest(token or "").encode()
    # Compare even when no token came, so a missing header costs the same time as a wrong one.
    return hmac.compare_digest(given, expected_digest.encode()) and token is not None


class BearerAuthMiddleware:
    """Every HTTP request must carry ``Authorization: Bearer <token>``; otherwise 401 with ``WWW-Authenticate``."""

    def __init__(self, app: ASGIApp, token_sha256: str):
        self.app = app
        self.token_sha256 = token_sha256

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] == "http" and not token_matches(presented_token(scope.get("headers", [])), self.token_sha256):
            await send_json(send, 401, {"error": "missing or wrong bearer token (send Authorization: Bearer <token>)"},
                            [(b"www-authenticate", b'Bearer realm="rlhf-rm"')])
            return
        await self.app(scope, receive, send)
