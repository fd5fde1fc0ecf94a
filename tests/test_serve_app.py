"""The scoring service's FastAPI app in-process (no Ray): scores equal offline RewardScorer, every bad request is a
clear 4xx, bearer auth, body limits, plus the launcher's and CLI's input checks."""

from __future__ import annotations

import argparse
import asyncio
import json

import httpx
import pytest

from rlhf.errors import UserError
from rlhf.paths import CONFIGS_DIR
from rlhf.models.reward import RewardScorer
from rlhf.serve.app import build_app
from rlhf.serve.auth import presented_token, read_token, token_digest, token_matches
from rlhf.serve.config import LimitsSection
from rlhf.net import is_loopback
from rlhf.models.reward import check_reward_model
from rlhf.serve.launch import deployment_options
from rlhf.serve.random_rm import write_random_reward_model
from rlhf.serve.scoring import RewardBackend

TOKEN = "test-token-123"
MEAN, STD = 0.25, 2.0
MAX_LENGTH = 64
LIMITS = LimitsSection(max_items=8, max_body_bytes=4096)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PAIRS = [("What is 2+2?", "4"), ("Name a colour.", "Blue, like the sky."), ("Say hi", ""), ("Why?", "Because.")]


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    return str(write_random_reward_model(tmp_path_factory.mktemp("rm") / "rm", max_length=MAX_LENGTH, mean=MEAN, std=STD))


@pytest.fixture(scope="module")
def scorer(rm_dir):
    return RewardScorer(rm_dir)


@pytest.fixture(scope="module")
def backend(rm_dir):
    return RewardBackend(rm_dir, device="cpu")


def call(backend, method: str, path: str, token: str | None = TOKEN, normalize_get_reward: bool = False, **kwargs):
    """One request through the whole ASGI stack (middlewares included)."""
    backend.normalize_get_reward = normalize_get_reward
    app = build_app(backend, LIMITS, token_digest(TOKEN))
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    headers.update(kwargs.pop("headers", {}))

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rm") as client:
            return await client.request(method, path, headers=headers, **kwargs)

    return asyncio.run(go())


def messages(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


def test_pairs_equal_offline_scores(backend, scorer):
    r = call(backend, "POST", "/score", json={"pairs": [{"prompt": p, "response": a} for p, a in PAIRS]})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = scorer.score_pairs([messages(p) for p, _ in PAIRS], [a for _, a in PAIRS])
    assert body["scores"] == pytest.approx(expected, abs=1e-4)
    assert body["truncated"] == [] and body["normalized"] is False and body["max_length"] == MAX_LENGTH
    assert body["model"] == "rm"


def test_message_prompts_equal_string_prompts(backend):
    as_string = call(backend, "POST", "/score", json={"pairs": [{"prompt": "Hi", "response": "Hello"}]}).json()
    as_messages = call(backend, "POST", "/score", json={"pairs": [
        {"prompt": [{"role": "user", "content": "Hi"}], "response": "Hello"}]}).json()
    assert as_messages["scores"] == pytest.approx(as_string["scores"], abs=1e-6)


def test_normalize_uses_checkpoint_mean_and_std(backend):
    raw = call(backend, "POST", "/score", json={"texts": ["a b c", "d"]}).json()["scores"]
    norm = call(backend, "POST", "/score", json={"texts": ["a b c", "d"], "normalize": True}).json()
    assert norm["normalized"] is True
    assert norm["scores"] == pytest.approx([(s - MEAN) / STD for s in raw], abs=1e-6)


def test_texts_and_get_reward_equal_offline_score_texts(backend, scorer):
    texts = ["USER: hi\nASSISTANT: hello</s>", "plain text without eos"]
    expected = scorer.score_texts(texts)
    score = call(backend, "POST", "/score", json={"texts": texts}).json()
    reward = call(backend, "POST", "/get_reward", json={"query": texts, "prompts": ["hi", "x"], "labels": [None, 1]}).json()
    assert score["scores"] == pytest.approx(expected, abs=1e-4)
    assert reward["rewards"] == pytest.approx(expected, abs=1e-4) and reward["scores"] == reward["rewards"]
    normalized = call(backend, "POST", "/get_reward", normalize_get_reward=True, json={"query": texts}).json()
    assert normalized["rewards"] == pytest.approx([(s - MEAN) / STD for s in expected], abs=1e-5)


def test_long_items_are_truncated_and_reported(backend, scorer):
    long_text = "word " * 200  # far over 64 tokens
    r = call(backend, "POST", "/score", json={"texts": ["short", long_text]}).json()
    assert r["truncated"] == [1]
    assert r["scores"][1] == pytest.approx(scorer.score_texts([long_text])[0], abs=1e-4)
    pairs = [{"prompt": "q " * 100, "response": "a"}, {"prompt": "q", "response": "a"}]
    r = call(backend, "POST", "/score", json={"pairs": pairs}).json()
    assert r["truncated"] == [0]
    assert r["scores"] == pytest.approx(scorer.score_pairs([messages("q " * 100), messages("q")], ["a", "a"]), abs=1e-4)


BAD_REQUESTS = [
    # (description, request kwargs, status, words the message must contain)
    ("invalid json", dict(content=b'{"texts": [}'), 400, "not valid JSON"),
    ("non-utf8", dict(content=b'{"texts": ["\xff\xfe"]}'), 400, "not valid UTF-8"),
    ("empty body", dict(content=b""), 400, "empty body"),
    ("top-level list", dict(json=["a"]), 422, "request body"),
    ("wrong item type", dict(json={"texts": ["a", 3]}), 422, "texts[1]"),
    ("wrong pair field type", dict(json={"pairs": [{"prompt": 1, "response": "a"}]}), 422, "pairs[0].prompt"),
    ("missing response", dict(json={"pairs": [{"prompt": "a"}]}), 422, "response"),
    ("empty list", dict(json={"texts": []}), 422, "empty"),
    ("both lists", dict(json={"texts": ["a"], "pairs": [{"prompt": "a", "response": "b"}]}), 422, "exactly one"),
    ("neither list", dict(json={"normalize": True}), 422, "exactly one"),
    ("unknown key", dict(json={"texts": ["a"], "txt": 1}), 422, "txt"),
    ("normalize not bool", dict(json={"texts": ["a"], "normalize": "yes"}), 422, "normalize"),
    ("too many items", dict(json={"texts": ["a"] * 9}), 422, "limit is 8"),
    ("prompt ending with assistant", dict(json={"pairs": [{"prompt": [{"role": "assistant", "content": "x"}],
                                                          "response": "y"}]}), 422, "user turn"),
    ("bad role", dict(json={"pairs": [{"prompt": [{"role": "robot", "content": "x"}], "response": "y"}]}), 422, "role"),
    ("oversize body", dict(content=b'{"texts": ["' + b"x" * 5000 + b'"]}'), 413, "limit of 4096"),
    ("wrong content type", dict(content=b'{"texts": ["a"]}', headers={"content-type": "text/plain"}), 415, "application/json"),
    ("deeply nested", dict(content=b"[" * 100000 + b"]" * 100000), 413, "limit"),
]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests_get_a_clear_4xx(backend, case):
    _, kwargs, status, words = case
    r = call(backend, "POST", "/score", **kwargs)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]


def test_deeply_nested_json_within_the_size_limit_is_a_400(backend):
    app = build_app(backend, LimitsSection(max_items=8, max_body_bytes=1 << 20))

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rm") as client:
            return await client.post("/score", content=b"[" * 200000 + b"]" * 200000)

    r = asyncio.run(go())
    assert r.status_code in (400, 422) and "error" in r.json()


def test_streamed_body_over_the_limit_is_cut_off(backend):
    chunks_sent = []

    async def body():
        for _ in range(100):
            chunks_sent.append(1)
            yield b"x" * 1000

    r = call(backend, "POST", "/score", content=body())
    assert r.status_code == 413 and "limit of 4096" in r.json()["error"]


def test_get_reward_validation(backend):
    assert call(backend, "POST", "/get_reward", json={"query": []}).status_code == 422
    r = call(backend, "POST", "/get_reward", json={"query": ["a", "b"], "prompts": ["a"]})
    assert r.status_code == 422 and "'prompts' has 1 items but 'query' has 2" in r.json()["error"]
    assert call(backend, "POST", "/get_reward", json={"queries": ["a"]}).status_code == 422


@pytest.mark.parametrize("token,status", [(None, 401), ("wrong", 401), (TOKEN + "x", 401), ("", 401), (TOKEN, 200)])
def test_bearer_token(backend, token, status):
    assert call(backend, "GET", "/health", token=token).status_code == status
    assert call(backend, "POST", "/score", token=token, json={"texts": ["a"]}).status_code == status


def test_auth_comes_before_the_body_gate(backend):
    r = call(backend, "POST", "/score", token=None, content=b"\xff" * 10000)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")


def test_other_auth_schemes_are_refused():
    assert presented_token([(b"authorization", b"Basic abc")]) is None
    assert presented_token([(b"Authorization", b"bearer  tok ")]) == "tok"
    assert not token_matches(None, token_digest(""))
    assert token_matches("tok", token_digest("tok"))


def test_health_and_openapi(backend):
    assert call(backend, "GET", "/health").json() == {"status": "ok", "model": "rm", "max_length": MAX_LENGTH}
    paths = call(backend, "GET", "/openapi.json").json()["paths"]
    assert {"/score", "/get_reward", "/health"} <= set(paths)


def test_read_token(monkeypatch):
    monkeypatch.setenv("RM_TOKEN_TEST", "  abc ")
    assert read_token("RM_TOKEN_TEST") == "abc"
    monkeypatch.setenv("RM_TOKEN_TEST", " ")
    with pytest.raises(UserError, match="RM_TOKEN_TEST"):
        read_token("RM_TOKEN_TEST")


def test_model_dir_must_have_one_label(tmp_path, rm_dir):
    assert check_reward_model(rm_dir) == rm_dir
    with pytest.raises(UserError, match="no config.json"):
        check_reward_model(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"id2label": {"0": "a", "1": "b"}}))
    with pytest.raises(UserError, match="num_labels=2"):
        check_reward_model(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "num_labels": 1}))
    with pytest.raises(UserError, match="not a reward model: config.json describes a LlamaForCausalLM"):
        check_reward_model(str(tmp_path))


def test_loopback_and_deployment_options():
    from rlhf.serve.config import ServeConfig

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    assert ServeConfig(model_dir="x").host == "127.0.0.1"
    fixed = deployment_options(ServeConfig(model_dir="x", replicas=3, cpus_per_replica=2), use_gpu=False)
    assert fixed["num_replicas"] == 3 and fixed["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 0}
    auto = deployment_options(ServeConfig(model_dir="x", autoscaling={"min_replicas": 1, "max_replicas": 4}), use_gpu=True)
    assert "num_replicas" not in auto and auto["autoscaling_config"]["max_replicas"] == 4
    assert auto["ray_actor_options"]["num_gpus"] == 1 and auto["max_ongoing_requests"] == 256


def test_cli_flags_override_yaml(tmp_path):
    from rlhf.commands.serve import config_from_args

    cfg_file = tmp_path / "s.yaml"
    cfg_file.write_text("port: 9000\nmax_batch_size: 8\nlimits:\n  max_items: 4\n")
    args = argparse.Namespace(model_dir="/m: odd", config=str(cfg_file), host=None, port=9100, replicas=None,
                              max_batch_size=None, batch_wait_ms=None, max_ongoing_requests=None, device=None,
                              token_env="TOK", overrides=["limits.max_body_bytes=2048"])
    cfg = config_from_args(args)
    assert (cfg.model_dir, cfg.port, cfg.max_batch_size, cfg.token_env) == ("/m: odd", 9100, 8, "TOK")
    assert (cfg.limits.max_items, cfg.limits.max_body_bytes, cfg.host) == (4, 2048, "127.0.0.1")
    args.overrides = ["limits.max_itemz=3"]
    with pytest.raises(UserError, match="max_itemz"):
        config_from_args(args)


@pytest.mark.parametrize("path", sorted((CONFIGS_DIR / "serve").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_serve_configs_validate(path):
    from rlhf.config import load_config
    from rlhf.serve.config import ServeConfig

    cfg = load_config(ServeConfig, path, ["model_dir=runs/rm"])
    assert cfg.host == "127.0.0.1"


def test_cli_refuses_bad_input_before_starting_anything(tmp_path, monkeypatch, capsys):
    from rlhf.cli import main

    monkeypatch.delenv("RM_TOKEN_UNSET", raising=False)
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--token-env", "RM_TOKEN_UNSET"]) == 2
    assert "RM_TOKEN_UNSET" in capsys.readouterr().err
