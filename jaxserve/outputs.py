"""What a finished (or streaming) request returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class TokenLogprob:
    """The logprob of one token plus the model's top alternatives at that position."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]  # (token_id, logprob), most likely first


@dataclass
class RequestOutput:
    request_id: int
    prompt: str | None
    prompt_token_ids: list[int]
    index: int = 0  # the sequence's index among the request's n
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: FinishReason | None = None
    logprobs: list[TokenLogprob] | None = None
    num_cached_tokens: int = 0  # prompt tokens whose K/V came from the prefix cache
    # One entry per prompt position; position 0 has no context and holds None.
    prompt_logprobs: list[TokenLogprob | None] | None = None
    # Set when the engine failed this request alone (finish_reason "abort"): what went wrong.
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
