"""What a finished (or streaming) request returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class TokenLogprob:
    """The logprob of one token plus the model's top alternatives at that position."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]  # (token_id, logprob), most likely first


@dataclass(frozen=True)
class TokenUncertainty:
    """How spread the model's distribution was where a token was drawn (nats)."""

    entropy: float  # of the model's (raw) distribution
    processed_entropy: float  # of the distribution drawn from (after the sampler chain)
    margin: float  # logprob of the most likely token minus the second's (raw)


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
    # Research hooks (`SamplingParams.return_hidden_states`, `logit_lens`, `return_uncertainty`):
    # {layer: [P, E] f32, "final": [P, E]} at `hidden_positions` (set once the request ends);
    # per generated token {layer: ((token_id, logprob), ...)}; per generated token.
    hidden_states: dict[int | str, np.ndarray] | None = None
    hidden_positions: list[int] | None = None
    logit_lens: list[dict[int, tuple[tuple[int, float], ...]]] | None = None
    uncertainty: list[TokenUncertainty] | None = None
    # Beam search: the summed logprob of the tokens, and the score beams are ranked by
    # (cumulative_logprob / len(token_ids) ** length_penalty).
    cumulative_logprob: float | None = None
    beam_score: float | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
