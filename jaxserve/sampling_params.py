"""Per-request sampling settings (host side), validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_LOGPROBS = 20  # matches the device's static top-k width


@dataclass(frozen=True)
class SamplingParams:
    """How to continue one prompt.

    max_tokens: tokens to generate (0 = only score the prompt, e.g. with `prompt_logprobs`).
    temperature: 0 is greedy; otherwise logits are divided by it before the draw.
    seed: per-request seed; the same seed and prompt give the same tokens whatever the batch.
    stop: strings that end generation (not included in the text).
    stop_token_ids: extra token ids that end generation (included in token_ids, not in text).
    ignore_eos: keep going past end-of-generation tokens.
    logprobs: number of top alternatives to return with each generated token's logprob.
    prompt_logprobs: number of top alternatives to return at each prompt position after the first,
        beside the logprob of the actual prompt token.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default=())
    stop_token_ids: tuple[int, ...] = field(default=())
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop or ()))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids or ()))
        if not isinstance(self.max_tokens, int) or self.max_tokens < 0:
            raise ValueError(f"max_tokens must be a non-negative integer, got {self.max_tokens!r}")
        if not self.temperature >= 0.0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if self.seed is not None and not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {self.seed!r}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_LOGPROBS:
                raise ValueError(f"{name} must be between 0 and {MAX_LOGPROBS}, got {value!r}")
