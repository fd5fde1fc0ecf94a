"""The scoring service started for real (Ray Serve, in the loopback namespace): scores equal offline scoring through
both endpoints, token auth, a load test with malformed requests mixed in, Prometheus metrics, and PPO's client."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import httpx
import pytest

from rlhf.data.templates import render_text
from rlhf.reward.model import RewardScorer
from rlhf.serve.auth import token_digest
from rlhf.serve.config import ServeConfig
from rlhf.serve.launch import free_port, metrics_url, start_service, stop_service, wait_healthy
from rlhf.serve.random_rm import write_random_reward_model

pytestmark = pytest.mark.slow

TOKEN = "service-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_ITEMS, MAX_BODY = 64, 64 * 1024
WORDS = "the a reward model scores answers to questions about colours numbers cats and the sky".split()


@dataclass
class Service:
    url: str
    scorer: RewardScorer


def make_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(" ".join(rng.choices(WORDS, k=rng.randint(1, 12))) + "?", " ".join(rng.choices(WORDS, k=rng.randint(0, 30))))
            for _ in range(n)]


def messages(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    rm_dir = write_random_reward_model(tmp_path_factory.mktemp("serve") / "rm", max_length=128)
    cfg = ServeConfig(model_dir=str(rm_dir), port=free_port(), max_batch_size=16, batch_wait_ms=5,
                      limits={"max_items": MAX_ITEMS, "max_body_bytes": MAX_BODY})
    url = start_service(cfg, token_digest(TOKEN))
    try:
        wait_healthy(url, TOKEN, timeout_s=180)
        yield Service(url, RewardScorer(str(rm_dir)))
    finally:
        stop_service(cfg.app_name)


async def post_all(url: str, bodies: list[dict | bytes], concurrency: int, deadline_s: float,
                   headers: dict | None = None) -> list[httpx.Response]:
    """POST every body with ``concurrency`` clients; bounded in count (len(bodies)) and in time (deadline_s)."""
    results: list[httpx.Response | None] = [None] * len(bodies)
    queue = list(enumerate(bodies))[::-1]
    async with httpx.AsyncClient(base_url=url, headers=headers or AUTH, timeout=60.0, trust_env=False,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker():
            while queue:
                i, body = queue.pop()
                if isinstance(body, bytes):
                    results[i] = await client.post(body_path(body), content=body)
                else:
                    results[i] = await client.post(body.get("_path", "/score"), json={k: v for k, v in body.items()
                                                                                         if k != "_path"})

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), timeout=deadline_s)
    return results  # type: ignore[return-value]


def body_path(_: bytes) -> str:
    return "/score"


def test_scores_equal_offline_through_both_endpoints(service):
    pairs = make_pairs(32, seed=1)
    prompts, responses = [messages(p) for p, _ in pairs], [r for _, r in pairs]
    expected = service.scorer.score_pairs(prompts, responses)
    client = httpx.Client(base_url=service.url, headers=AUTH, timeout=60.0, trust_env=False)
    one_request = client.post("/score", json={"pairs": [{"prompt": p, "response": r} for p, r in pairs]}).json()
    assert one_request["scores"] == pytest.approx(expected, abs=1e-4)
    # 32 concurrent one-pair requests: batched together across requests by Serve, still the same numbers.
    singles = asyncio.run(post_all(service.url, [{"pairs": [{"prompt": p, "response": r}]} for p, r in pairs], 32, 120))
    assert [s.json()["scores"][0] for s in singles] == pytest.approx(expected, abs=1e-4)
    normalized = client.post("/score", json={"pairs": [{"prompt": p, "response": r} for p, r in pairs],
                                             "normalize": True}).json()
    assert normalized["scores"] == pytest.approx(service.scorer.score_pairs(prompts, responses, normalize=True), abs=1e-4)

    texts = [render_text(m + [{"role": "assistant", "content": r}], service.scorer.template) for m, r in zip(prompts, responses)]
    rewards = client.post("/get_reward", json={"query": texts, "prompts": [p for p, _ in pairs]}).json()
    assert rewards["rewards"] == pytest.approx(service.scorer.score_texts(texts), abs=1e-4)
    assert rewards["scores"] == rewards["rewards"]


def test_token_auth(service):
    client = httpx.Client(base_url=service.url, timeout=30.0, trust_env=False)
    body = {"texts": ["hello"]}
    assert client.post("/score", json=body).status_code == 401
    assert client.post("/score", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/health", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert client.post("/score", json=body, headers=AUTH).status_code == 200
    assert client.get("/health", headers=AUTH).json()["status"] == "ok"


MALFORMED: list[tuple[dict | bytes, int]] = [
    (b'{"pairs": [', 400),                                   # invalid JSON
    (b'{"texts": ["\xc3\x28"]}', 400),                       # not UTF-8
    ({"texts": []}, 422),                                    # empty list
    ({"texts": [1, 2]}, 422),                                # wrong types
    ({"pairs": [{"prompt": "a"}]}, 422),                     # missing field
    ({"texts": ["a"] * (MAX_ITEMS + 1)}, 422),               # too many items
    ({"texts": ["x" * (MAX_BODY + 10)]}, 413),               # oversize body
    ({"_path": "/get_reward", "query": "not a list"}, 422),  # wrong type on the other endpoint
    ({"_path": "/nope", "texts": ["a"]}, 404),               # unknown route
    ({"pairs": [{"prompt": [{"role": "assistant", "content": "a"}], "response": "b"}]}, 422),  # no user turn
]


def test_load_with_malformed_requests(service):
    rng = random.Random(7)
    pool = make_pairs(64, seed=2)
    expected = dict(zip(pool, service.scorer.score_pairs([messages(p) for p, _ in pool], [r for _, r in pool])))
    bodies, wanted = [], []
    for i in range(2000):
        if i % 10 == 9:  # 10% malformed, every kind many times
            body, status = MALFORMED[(i // 10) % len(MALFORMED)]
            bodies.append(body)
            wanted.append(status)
        else:
            chosen = rng.sample(pool, rng.randint(1, 4))
            bodies.append({"pairs": [{"prompt": p, "response": r} for p, r in chosen]})
            wanted.append([expected[c] for c in chosen])
    started = time.monotonic()
    answers = asyncio.run(post_all(service.url, bodies, concurrency=32, deadline_s=420))
    elapsed = time.monotonic() - started
    assert not [a.status_code for a in answers if a.status_code >= 500]
    for answer, want in zip(answers, wanted):
        if isinstance(want, int):
            assert answer.status_code == want, answer.text
            assert answer.json().get("error") or answer.json().get("detail")
        else:
            assert answer.status_code == 200, answer.text
            assert answer.json()["scores"] == pytest.approx(want, abs=1e-4)
    health = httpx.get(f"{service.url}/health", headers=AUTH, timeout=30.0, trust_env=False)
    assert health.status_code == 200
    print(f"load: 2000 requests in {elapsed:.1f} s ({2000 / elapsed:.0f} req/s)")


def test_prometheus_metrics(service):
    url = metrics_url()
    assert url is not None
    httpx.post(f"{service.url}/score", json={"texts": ["metrics"]}, headers=AUTH, timeout=30.0, trust_env=False)
    deadline, text = time.monotonic() + 60, ""
    while time.monotonic() < deadline:  # Ray exports on an interval
        text = httpx.get(url, timeout=10.0, trust_env=False).text
        if "rlhf_rm_items_scored" in text and "ray_serve_num_http_requests" in text:
            break
        time.sleep(2)
    assert "rlhf_rm_items_scored" in text and "ray_serve_num_http_requests" in text


def test_ppo_remote_reward_client(service):
    """PPO's RemoteReward (reward.url) against the service: the same scores as the RM offline, both protocols."""
    from rlhf.reward.remote import RemoteReward

    pairs = make_pairs(8, seed=3)
    prompts, responses = [p for p, _ in pairs], [r for _, r in pairs]
    client = RemoteReward(f"{service.url}/score", headers=AUTH)
    expected = service.scorer.score_pairs([messages(p) for p in prompts], responses)
    assert client.score(prompts, responses) == pytest.approx(expected, abs=1e-4)
    # OpenRLHF's protocol: whole sequences as the policy saw them (templated, special tokens kept), scored the same.
    from rlhf.data.templates import encode_prompt, encode_prompt_response

    tok, template = service.scorer.tokenizer, service.scorer.template
    queries = [tok.decode(encode_prompt_response(messages(p), r, template, tok, 10_000), skip_special_tokens=False)
               for p, r in pairs]
    templated = [tok.decode(encode_prompt(messages(p), template, tok), skip_special_tokens=False) for p in prompts]
    openrlhf = RemoteReward(f"{service.url}/get_reward", headers=AUTH)
    assert openrlhf.get_reward(queries, templated) == pytest.approx(expected, abs=1e-4)
