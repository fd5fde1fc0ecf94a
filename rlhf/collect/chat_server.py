"""A small OpenAI-compatible chat-completions server over a local Hugging Face causal LM.

Serves ``POST /v1/chat/completions`` (messages, temperature, max_tokens, n, top_p) and ``GET /v1/models`` in the
shape of the OpenAI API, so that :class:`rlhf.collect.openai_client.ChatClient` (or any OpenAI client) can use a
local model as the teacher or the policy under evaluation. The prompt is built with the tokenizer's chat template.
Requests are generated one at a time (a lock around the model): this is for tests and small local runs, not
throughput.

Test hook, for tests only: ``POST /admin/faults`` with ``{"fail_next": [429, 500, "timeout"], "hang_s": 2.0}``
makes the next chat requests, one fault each in order, answer with that HTTP status (an OpenAI-style error body)
or, for "timeout", wait ``hang_s`` seconds before answering so a client with a shorter timeout gives up.
:func:`inject_faults` calls it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Literal

import httpx
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from rlhf.errors import UserError
from rlhf.sampling import SamplingParams, sample
from rlhf.models.loading import load_for_inference
from rlhf.models.tokenizer import load_tokenizer


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    model: str = ""
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(default=128, ge=1)
    n: int = Field(default=1, ge=1, le=16)


class FaultPlan(BaseModel):
    fail_next: list[int | Literal["timeout"]]
    hang_s: float = Field(default=2.0, ge=0.0)


def _error(status: int, message: str) -> JSONResponse:
    kind = "rate_limit_error" if status == 429 else "server_error"
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "code": status}})


class LocalChatModel:
    """A causal LM and its tokenizer, answering chat requests with :func:`rlhf.sampling.sample`."""

    def __init__(self, model_dir: str | Path) -> None:
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise UserError(f"{model_dir}: not a model directory (no config.json)")
        self.name = model_dir.name
        self.tokenizer = load_tokenizer(str(model_dir))
        if not self.tokenizer.chat_template:
            raise UserError(f"{model_dir}: the tokenizer has no chat_template")
        self.model = load_for_inference(str(model_dir), "causal_lm", "auto", "auto")
        # One generate() at a time: requests arrive on several threads but the model is not meant to be shared.
        self._lock = threading.Lock()

    def complete(self, request: ChatRequest) -> dict:
        """An OpenAI ``chat.completion`` object for the request."""
        messages = [m.model_dump() for m in request.messages]
        prompt_ids = list(self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"])
        params = SamplingParams(
            temperature=request.temperature, top_p=request.top_p, max_new_tokens=request.max_tokens,
            do_sample=request.temperature > 0,
        )
        eos_id = self.tokenizer.eos_token_id
        with self._lock:
            responses = sample(self.model, [prompt_ids] * request.n, params, eos_id, self.tokenizer.pad_token_id)
        choices = []
        for index, response in enumerate(responses):
            ended = bool(response) and response[-1] == eos_id
            text = self.tokenizer.decode(response[:-1] if ended else response, skip_special_tokens=True)
            choices.append({
                "index": index,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop" if ended else "length",
            })
        prompt_tokens, completion_tokens = len(prompt_ids), sum(len(r) for r in responses)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model or self.name,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


def create_app(chat_model: LocalChatModel) -> FastAPI:
    app = FastAPI(title="rlhf local chat server")
    faults: deque[int | str] = deque()
    hang = {"seconds": 2.0}

    @app.get("/v1/models")
    def list_models() -> dict:
        return {"object": "list", "data": [{"id": chat_model.name, "object": "model", "owned_by": "local"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatRequest):
        fault = faults.popleft() if faults else None
        if fault == "timeout":
            await asyncio.sleep(hang["seconds"])
        elif fault is not None:
            return _error(int(fault), f"injected fault {fault}")
        return await run_in_threadpool(chat_model.complete, request)

    @app.post("/admin/faults")
    def set_faults(plan: FaultPlan) -> dict:
        faults.clear()
        faults.extend(plan.fail_next)
        hang["seconds"] = plan.hang_s
        return {"pending": list(faults)}

    return app


def start_server(model_dir: str | Path, host: str = "127.0.0.1", port: int = 0):
    """Serve ``model_dir`` from a background thread; returns ``(base_url, stop_fn)``.

    ``base_url`` is ``http://host:port/v1``, what an OpenAI client takes; ``port=0`` picks a free port.
    ``stop_fn()`` shuts the server down and waits for the thread.
    """
    app = create_app(LocalChatModel(model_dir))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise UserError(f"chat server: cannot bind {host}:{port} ({err.strerror})") from err
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="chat-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError(f"chat server on {host}:{bound_port} did not start")
        time.sleep(0.02)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()

    return f"http://{host}:{bound_port}/v1", stop


def inject_faults(base_url: str, fail_next: list[int | str], hang_s: float = 2.0) -> None:
    """Queue faults on a server started by :func:`start_server` (test hook, see the module docstring)."""
    admin_url = base_url.removesuffix("/").removesuffix("/v1") + "/admin/faults"
    httpx.post(admin_url, json={"fail_next": fail_next, "hang_s": hang_s}, timeout=10).raise_for_status()
