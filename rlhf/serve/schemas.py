"""Request and response bodies of the scoring service; strict types, so a number is never read as a text."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, model_validator


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: StrictStr


class Pair(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: StrictStr | list[Message] = Field(
        ..., description="a user turn (scored as [{'role': 'user', 'content': prompt}]) or messages ending in one"
    )
    response: StrictStr = Field(..., description="the assistant's answer to score")

    def messages(self) -> list[dict[str, str]]:
        if isinstance(self.prompt, str):
            return [{"role": "user", "content": self.prompt}]
        return [m.model_dump() for m in self.prompt]


class ScoreRequest(BaseModel):
    """Exactly one of ``pairs`` (rendered with the RM's template) or ``texts`` (already rendered)."""

    model_config = ConfigDict(extra="forbid")

    pairs: list[Pair] | None = Field(None, description="prompt/response pairs, templated like the rm stage")
    texts: list[StrictStr] | None = Field(None, description="full texts, tokenized as they are")
    normalize: StrictBool = Field(False, description="return (score - mean) / std with the checkpoint's statistics")

    @model_validator(mode="after")
    def _one_non_empty_list(self):
        given = [name for name in ("pairs", "texts") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("send exactly one of 'pairs' or 'texts'")
        if not getattr(self, given[0]):
            raise ValueError(f"'{given[0]}' is empty; send at least one item")
        return self


class ScoreResponse(BaseModel):
    scores: list[float] = Field(..., description="one score per item, in request order")
    model: str = Field(..., description="the reward model's name")
    normalized: bool = Field(..., description="whether the checkpoint's mean/std were applied")
    max_length: int = Field(..., description="tokens the model reads; longer items are cut")
    truncated: list[int] = Field(..., description="indices of items cut to max_length tokens")


class GetRewardRequest(BaseModel):
    """OpenRLHF's remote reward-model protocol (openrlhf/cli/serve_rm.py): ``query`` holds full templated texts."""

    model_config = ConfigDict(extra="allow")  # OpenRLHF clients may add keys of their own

    query: list[StrictStr] = Field(
        ..., description="whole sequences as the policy saw them: templated prompt + response, decoded with special "
                         "tokens kept (bos/eos in the text count as themselves; missing ones are added)")
    prompts: list[StrictStr] | None = Field(None, description="the prompts alone (accepted, not needed to score)")
    labels: list | None = Field(None, description="reference labels (accepted, unused by a learned RM)")

    @model_validator(mode="after")
    def _non_empty(self):
        if not self.query:
            raise ValueError("'query' is empty; send at least one text")
        for name in ("prompts", "labels"):
            value = getattr(self, name)
            if value is not None and len(value) != len(self.query):
                raise ValueError(f"'{name}' has {len(value)} items but 'query' has {len(self.query)}")
        return self


class GetRewardResponse(BaseModel):
    rewards: list[float] = Field(..., description="one reward per query")
    scores: list[float] = Field(..., description="the same values (newer OpenRLHF clients read 'scores')")
    truncated: list[int] = Field(..., description="indices of queries cut to the model's max length")


class HealthResponse(BaseModel):
    status: str
    model: str
    max_length: int
