"""The PPO side of remote rewards: both protocols against a real local HTTP server, retries, errors.
Programmatic reward functions and their loader. (Run inside the loopback-only namespace, like every server test.)"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rlhf.errors import UserError
from rlhf.reward.remote import RemoteReward, RemoteRewardError, detect_protocol
from rlhf.reward.functions import count_occurrences, load_reward_function


class Scorer(BaseHTTPRequestHandler):
    """/score: len(response); /get_reward: len(query). Fails with 503 ``fail_first`` times, then answers."""

    fail_first = 0
    seen: list = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((self.path, body))
        if type(self).fail_first > 0:
            type(self).fail_first -= 1
            return self.reply(503, {"error": "warming up"})
        if self.path == "/score":
            return self.reply(200, {"scores": [len(p["response"]) for p in body["pairs"]]})
        if self.path == "/get_reward":
            return self.reply(200, {"rewards": [len(q) for q in body["query"]]})
        if self.path == "/short":
            return self.reply(200, {"scores": [1.0]})
        return self.reply(404, {"error": "no such route"})

    def reply(self, code: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def server():
    Scorer.fail_first, Scorer.seen = 0, []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Scorer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_score_protocol(server) -> None:
    client = RemoteReward(f"{server}/score")
    assert client.score(["hi", "yo"], ["abc", ""]) == [3.0, 0.0]
    assert Scorer.seen[-1] == ("/score", {"pairs": [{"prompt": "hi", "response": "abc"}, {"prompt": "yo", "response": ""}]})
    assert client.score([], []) == []


def test_get_reward_protocol_sends_whole_sequences(server) -> None:
    """OpenRLHF's body: ``query`` = each whole sequence as given (the caller decodes what the policy saw, see
    rlhf.ppo.roles.sequence_texts and its service-side test), ``prompts`` = the templated prompts."""
    client = RemoteReward(f"{server}/get_reward")
    queries, prompts = ["<s>USER: ab ASSISTANT: cd</s>", "<s>USER: c ASSISTANT: defg"], ["<s>USER: ab ASSISTANT:",
                                                                                          "<s>USER: c ASSISTANT:"]
    assert client.get_reward(queries, prompts) == [float(len(q)) for q in queries]
    assert Scorer.seen[-1] == ("/get_reward", {"query": queries, "prompts": prompts})
    with pytest.raises(ValueError, match="send \\(prompt, response\\) pairs with score"):
        RemoteReward(f"{server}/score").get_reward(queries, prompts)
    with pytest.raises(ValueError, match="send whole sequences with get_reward"):
        client.score(["ab"], ["cd"])


def test_retries_then_succeeds_and_gives_up(server) -> None:
    Scorer.fail_first = 2
    client = RemoteReward(f"{server}/score", retries=2, backoff_s=0.01)
    assert client.score(["p"], ["xy"]) == [2.0]
    assert len(Scorer.seen) == 3
    Scorer.fail_first = 5
    with pytest.raises(RemoteRewardError, match="3 attempts.*503"):
        client.score(["p"], ["xy"])


def test_client_errors_are_not_retried(server) -> None:
    client = RemoteReward(f"{server}/nowhere", protocol="score", retries=3, backoff_s=0.01)
    with pytest.raises(RemoteRewardError, match="HTTP 404"):
        client.score(["p"], ["r"])
    assert len(Scorer.seen) == 1
    with pytest.raises(RemoteRewardError, match="expected 'scores' with 2"):
        RemoteReward(f"{server}/short", protocol="score").score(["a", "b"], ["c", "d"])


def test_unreachable_service() -> None:
    client = RemoteReward("http://127.0.0.1:9/score", retries=1, backoff_s=0.01, timeout_s=2)
    with pytest.raises(RemoteRewardError, match="2 attempts"):
        client.score(["p"], ["r"])


def test_detect_protocol() -> None:
    assert detect_protocol("http://h:1/score") == "score"
    assert detect_protocol("http://h:1/v1/get_reward/") == "get_reward"
    assert detect_protocol("http://h:1/rm", "get_reward") == "get_reward"
    with pytest.raises(ValueError, match="protocol"):
        detect_protocol("http://h:1/rm")


def test_count_occurrences_and_loader() -> None:
    assert count_occurrences(["p", "q"], ["eee e", "xyz"], target="e") == [4.0, 0.0]
    assert count_occurrences(["p"], ["eeee"], target="ee") == [2.0]
    assert count_occurrences(["p"], ["eeee"], per_response_cap=3) == [3.0]
    fn = load_reward_function("rlhf.reward.functions:count_occurrences")
    assert fn is count_occurrences
    with pytest.raises(UserError, match="cannot import"):
        load_reward_function("no_such_module_xyz:f")
    with pytest.raises(UserError, match="no callable 'nope'"):
        load_reward_function("rlhf.reward.functions:nope")


def test_loopback_service_bypasses_a_proxy_from_the_environment(server, monkeypatch) -> None:
    """A cluster or CI machine often sets HTTP_PROXY for the internet; a loopback reward service must not go through
    it. The 'proxy' here is a closed loopback port, so a request sent to it fails at once."""
    from rlhf.net import use_proxy_env
    from rlhf.serve.launch import free_port

    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, f"http://127.0.0.1:{free_port()}")
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    assert RemoteReward(f"{server}/score", retries=0).score(["p"], ["abc"]) == [3.0]
    assert not use_proxy_env("http://localhost:8000/score") and not use_proxy_env("http://[::1]:8000/score")
    assert use_proxy_env("http://rm.internal:8000/score") and use_proxy_env("http://10.0.0.5/score")
