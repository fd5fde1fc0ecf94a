"""The request-body gate in front of the FastAPI app: size, encoding and JSON syntax, each refused with a clear 4xx.

It runs as plain ASGI before routing, so an oversize body is cut off after ``max_body_bytes`` (never buffered
whole), bytes that are not UTF-8 or not JSON never reach a handler, and the message names what is wrong. Bodies
that pass are replayed to the app unchanged; FastAPI's own validation then checks the shape.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

Send = Callable[[dict], Awaitable[None]]


async def send_json(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """A complete JSON response straight from ASGI, for middlewares that refuse a request."""
    payload = json.dumps(body).encode()
    base = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": base + (headers or [])})
    await send({"type": "http.response.body", "body": payload})


class BodyRejected(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def check_content_type(scope: dict) -> None:
    """JSON or nothing (curl without -H still works); anything else is 415."""
    content_type = _header(scope, b"content-type")
    if content_type is None:
        return
    media = content_type.split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise BodyRejected(415, f"Content-Type {media!r} is not supported; send application/json")


def check_json(body: bytes) -> None:
    """UTF-8 (RFC 8259 section 8.1) and well-formed JSON, or a BodyRejected naming the byte or position."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BodyRejected(400, f"body is not valid UTF-8 (byte {err.start}: {body[err.start:err.start + 1]!r})") from None
    try:
        json.loads(text)
    except json.JSONDecodeError as err:
        raise BodyRejected(400, f"body is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    except RecursionError:
        raise BodyRejected(400, "body is not valid JSON: nested too deeply") from None


async def read_body(receive: Callable[[], Awaitable[dict]], limit: int, declared: str | None) -> bytes:
    """The whole body, refusing (413) as soon as the declared or received size passes ``limit`` bytes."""
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BodyRejected(400, f"Content-Length {declared!r} is not a number") from None
        if size > limit:
            raise BodyRejected(413, f"body of {size} bytes is over the limit of {limit} bytes")
    chunks, total = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BodyRejected(400, "client disconnected before the body was complete")
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise BodyRejected(413, f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class BodyGateMiddleware:
    """Reads POST/PUT/PATCH bodies up to ``max_body_bytes``, checks UTF-8 and JSON, then replays them to the app."""

    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        try:
            check_content_type(scope)
            body = await read_body(receive, self.max_body_bytes, _header(scope, b"content-length"))
            if not body:
                raise BodyRejected(400, "empty body; send a JSON object")
            check_json(body)
        except BodyRejected as err:
            await send_json(send, err.status, {"error": err.message})
            return
        if _header(scope, b"content-type") is None:  # FastAPI parses JSON only when told it is JSON
            scope = {**scope, "headers": [*scope.get("headers", []), (b"content-type", b"application/json")]}
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect like a real receive

        await self.app(scope, replay, send)
