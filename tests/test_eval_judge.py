"""The eval stage's pairwise LLM judge against the local OpenAI-compatible chat server (an untrained model:
its replies carry no verdict, so every prompt is a tie and the win rate is 0.5)."""

from __future__ import annotations


import pytest

from rlhf.collect.chat_server import start_server
from rlhf.eval.judge import LLMJudgeSection, judge_pairwise
from tests.helpers import needs_loopback


pytestmark = needs_loopback()

PROMPTS = [[{"role": "user", "content": "Write the largest digit.\n\n3 9 0"}],
           [{"role": "user", "content": "Count the letters in the list.\n\nq m c"}],
           [{"role": "user", "content": "Write the smallest digit.\n\n4 1"}]]


@pytest.fixture(scope="module")
def server():
    from rlhf.models.loading import resolve_model_path

    url, stop = start_server(resolve_model_path("embedded:tiny-llama"))
    yield url
    stop()


def test_judge_asks_both_orders_and_counts_no_verdict_as_a_tie(server):
    section = LLMJudgeSection(base_url=server, model="tiny", api_key_env="RLHF_TEST_NO_SUCH_KEY", concurrency=2,
                              timeout_s=20, max_retries=1, backoff_s=0.01, max_tokens=8, max_prompts=2)
    client = section.chat_client()
    try:
        result = judge_pairwise(client, section, PROMPTS, ["9", "3", "1"], ["The answer is: 9", "4", "1."])
        requests = client.stats.as_dict()["completed"]
    finally:
        client.close()
    assert requests == 4  # max_prompts=2, both orders each
    assert (result.wins, result.losses, result.ties) == (0, 0, 2)
    assert result.reasons == {"unparseable": 2} and result.win_rate == 0.5
