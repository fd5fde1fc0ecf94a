"""The openai teacher and judge against a real local OpenAI-compatible server (the embedded tiny LLaMA), with a
429, a 500 and a timeout injected, and an unreachable base_url.

Run inside a loopback-only network namespace:
    unshare -n bash -c 'ip link set lo up; python -m pytest tests/test_collect_stage_server.py'
"""

from __future__ import annotations

import socket

import pytest

import rlhf.paths
from rlhf.collect.chat_server import inject_faults, start_server
from rlhf.collect.judges import JudgeSection, OpenAIJudge
from rlhf.config import load_config
from rlhf.errors import UserError
from rlhf.manifest import read_manifest
from stages import collect
from tests.helpers import needs_loopback

TINY_SELF_INSTRUCT = rlhf.paths.CONFIGS_DIR / "collect" / "tiny-self-instruct.yaml"


pytestmark = needs_loopback()


@pytest.fixture(scope="module")
def server():
    from rlhf.models.loading import resolve_model_path

    url, stop = start_server(resolve_model_path("embedded:tiny-llama"))
    yield url
    stop()


def free_port_url() -> str:
    with socket.socket() as s:  # free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def openai_self_instruct(url: str, out, extra: list[str] = ()) -> dict:
    overrides = [
        "self_instruct.teacher.kind=openai", f"self_instruct.teacher.base_url={url}",
        "self_instruct.teacher.model=tiny", "self_instruct.teacher.api_key_env=RLHF_TEST_NO_SUCH_KEY",
        "self_instruct.teacher.concurrency=1", "self_instruct.teacher.timeout_s=5",
        "self_instruct.teacher.max_retries=5", "self_instruct.teacher.backoff_s=0.01",
        "self_instruct.teacher.max_tokens=12", "self_instruct.max_rounds=2", "self_instruct.prompts_per_round=2",
        *extra,
    ]
    return collect.run(load_config(collect.Config, TINY_SELF_INSTRUCT, overrides), out)


def test_openai_teacher_retries_429_500_and_a_timeout_and_counts_unparseable_replies(server, tmp_path):
    inject_faults(server, [429, 500, "timeout"], hang_s=8)
    manifest = openai_self_instruct(server, tmp_path)
    metrics = manifest["metrics"]
    assert manifest["status"] == "complete"
    teacher = metrics["teacher"]
    # 4 prompts (2 rounds x 2); the first took at least 4 attempts: 429, 500, timeout, then an answer (a loaded
    # machine may time out once more: the retries absorb it).
    assert teacher["retries"] >= 3 and teacher["requests"] == 4 + teacher["retries"]
    assert (teacher["failures"], teacher["completed"]) == (0, 4)
    # A random tiny model writes no numbered tasks: every reply is a counted drop, and the target is not reached.
    assert metrics["drops"] == {"unparseable_reply": 4}
    assert metrics["records"] == 0 and not metrics["target_reached"]
    assert (tmp_path / "data.json").read_text().strip() == "[]"


def test_openai_teacher_request_budget_stops_the_loop(server, tmp_path):
    manifest = openai_self_instruct(server, tmp_path, ["self_instruct.teacher.request_budget=3",
                                                      "self_instruct.max_rounds=5"])
    teacher, drops = manifest["metrics"]["teacher"], manifest["metrics"]["drops"]
    assert teacher["requests"] == 3 and teacher["budget_exhausted"]
    assert manifest["metrics"]["rounds"] == 2  # round 2 ran out of budget; round 3 was never started
    assert drops == {"unparseable_reply": 3, "no_reply": 1}


def test_unreachable_base_url_fails_with_one_line_naming_it(tmp_path):
    url = free_port_url()
    with pytest.raises(UserError) as err:
        openai_self_instruct(url, tmp_path, ["self_instruct.teacher.max_retries=1"])
    assert url in str(err.value) and "\n" not in str(err.value)
    assert read_manifest(tmp_path)["status"] == "failed"
    assert not (tmp_path / "data.json").exists()


def judge_section(url: str, **kwargs) -> JudgeSection:
    options = dict(kind="openai", base_url=url, model="tiny", api_key_env="RLHF_TEST_NO_SUCH_KEY",
                   concurrency=1, timeout_s=5, max_retries=5, backoff_s=0.01, max_tokens=8)
    return JudgeSection(**(options | kwargs))


PROMPTS = [[{"role": "user", "content": "Name a color."}], [{"role": "user", "content": "Add 2 and 3."}]]
RESPONSES = [["Blue.", "Dog."], ["5", "5", "6"]]


def test_openai_judge_asks_both_orders_through_faults(server):
    inject_faults(server, [500, 429, "timeout"], hang_s=8)
    judge = OpenAIJudge(judge_section(server))
    pairs = judge.judge([{}, {}], PROMPTS, RESPONSES)
    # Two prompts, each asked in both orders: 4 requests plus the retries. The random model gives no [[A]]/[[B]].
    stats = judge.stats()
    assert stats["retries"] >= 3 and stats["requests"] == 4 + stats["retries"]
    assert (stats["failures"], stats["completed"]) == (0, 4)
    assert pairs == [None, None] and dict(judge.drops) == {"judge_unparseable": 2}


def test_openai_judge_budget_and_unreachable_server(server):
    judge = OpenAIJudge(judge_section(server, request_budget=2))
    assert judge.judge([{}, {}], PROMPTS, RESPONSES) == [None, None]
    assert dict(judge.drops) == {"judge_unparseable": 1, "no_reply": 1}
    with pytest.raises(UserError, match="cannot reach http://127.0.0.1"):
        OpenAIJudge(judge_section(free_port_url(), max_retries=1)).judge([{}], PROMPTS[:1], RESPONSES[:1])
