"""ChatClient against the real local chat server (a tiny random LLaMA), with injected faults.

Run inside a loopback-only network namespace:
    unshare -n bash -c 'ip link set lo up; python -m pytest tests/test_openai_client.py'
"""

from __future__ import annotations

import socket
import time

import pytest

from rlhf.errors import UserError
from tests.helpers import needs_loopback


pytestmark = needs_loopback()

def _build_tiny_model(model_dir) -> None:
    """A random 2-layer LLaMA (hidden 32) with the project's embedded tokenizer and its chat template."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf.models.tokenizer import EMBEDDED_TOKENIZER, load_tokenizer

    tokenizer = load_tokenizer(EMBEDDED_TOKENIZER)
    tokenizer.save_pretrained(model_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(model_dir)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from rlhf.collect.chat_server import start_server

    model_dir = tmp_path_factory.mktemp("tiny_llama")
    _build_tiny_model(model_dir)
    url, stop = start_server(model_dir)
    yield url
    stop()


def _client(url: str, **kwargs):
    from rlhf.collect.openai_client import ChatClient

    options = {"concurrency": 2, "timeout_s": 10.0, "max_retries": 3, "backoff_s": 0.01} | kwargs
    return ChatClient(url, "tiny", api_key_env="RLHF_TEST_NO_SUCH_KEY", **options)


HELLO = [{"role": "user", "content": "Hello there"}]


def test_plain_completions_in_order(server):
    client = _client(server)
    answers = client.complete_many([HELLO, HELLO, HELLO], temperature=1.0, max_tokens=5)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    assert client.stats.as_dict() == {
        "requests": 3, "retries": 0, "failures": 0, "completed": 3, "budget_exhausted": False
    }


def test_n_answers_are_flat_per_prompt(server):
    client = _client(server)
    answers = client.complete_many([HELLO, HELLO], temperature=1.0, max_tokens=3, n=2)
    assert len(answers) == 4 and all(isinstance(a, str) for a in answers)
    assert client.stats.requests == 2


def test_429_and_500_are_retried_then_succeed(server):
    from rlhf.collect.chat_server import inject_faults

    inject_faults(server, [429, 500])
    client = _client(server, concurrency=1)
    answers = client.complete_many([HELLO], max_tokens=3)
    assert isinstance(answers[0], str)
    assert (client.stats.requests, client.stats.retries, client.stats.failures) == (3, 2, 0)


def test_retries_exhausted_gives_none(server):
    from rlhf.collect.chat_server import inject_faults

    inject_faults(server, [500, 500, 500])
    client = _client(server, concurrency=1, max_retries=2)
    assert client.complete_many([HELLO], max_tokens=3) == [None]
    assert (client.stats.requests, client.stats.retries, client.stats.failures) == (3, 2, 1)


def test_timeout_is_retried(server):
    from rlhf.collect.chat_server import inject_faults

    inject_faults(server, ["timeout"], hang_s=1.5)
    client = _client(server, concurrency=1, timeout_s=0.5)
    started = time.monotonic()
    answers = client.complete_many([HELLO], max_tokens=3)
    assert isinstance(answers[0], str)
    assert (client.stats.requests, client.stats.retries) == (2, 1)
    assert time.monotonic() - started < 1.5  # gave up on the hung request instead of waiting for it


def test_request_budget_stops_sending(server):
    client = _client(server, concurrency=1, request_budget=2)
    answers = client.complete_many([HELLO] * 4, max_tokens=2)
    assert [a is None for a in answers] == [False, False, True, True]
    assert client.stats.requests == 2 and client.stats.budget_exhausted


def test_unreachable_base_url_is_a_user_error():
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    client = _client(url, max_retries=1)
    with pytest.raises(UserError) as err:
        client.complete_many([HELLO, HELLO])
    assert url in str(err.value) and "\n" not in str(err.value)
    assert client.stats.requests <= 4


def test_server_speaks_the_openai_shape(server):
    import httpx

    body = {"model": "tiny", "messages": HELLO, "max_tokens": 4, "n": 3, "temperature": 1.0}
    reply = httpx.post(f"{server}/chat/completions", json=body, timeout=30).json()
    assert reply["object"] == "chat.completion" and reply["model"] == "tiny"
    assert [c["index"] for c in reply["choices"]] == [0, 1, 2]
    assert all(c["message"]["role"] == "assistant" and c["finish_reason"] in ("stop", "length") for c in reply["choices"])
    usage = reply["usage"]
    assert 0 < usage["completion_tokens"] <= 3 * 4
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_a_rejected_request_is_not_retried(server):
    client = _client(server, concurrency=1)
    assert client.complete_many([[{"role": "robot", "content": "beep"}]], max_tokens=2) == [None]
    assert (client.stats.requests, client.stats.retries, client.stats.failures) == (1, 0, 1)
