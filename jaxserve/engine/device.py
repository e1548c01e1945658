"""What the engine needs from the device side, and what it gets back (host only).

`jaxserve.runtime.runner.ModelRunner` implements `Runner`; the engine sees nothing else of it,
so it never imports jax. Results are plain numpy arrays, padding rows already sliced off.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from jaxserve.config import ModelConfig
from jaxserve.engine.rows import DecodeRow, EmbedRow, PrefillRow


@dataclass(frozen=True)
class PromptLogprobs:
    """Scores of each row's `prompt_targets` (rows without targets hold junk)."""

    chosen: np.ndarray  # [B, T] f32, logprob of target j of row i
    top_ids: np.ndarray  # [B, T, K] int32
    top_logprobs: np.ndarray  # [B, T, K] f32


@dataclass(frozen=True)
class ProbeResult:
    """What the probe kept for each row (N: tokens drawn per row; 1 in a prefill step)."""

    captured: np.ndarray  # [B, T, C, E] f32 per prefill token; [B, N, C, E] per decode token
    lens_ids: np.ndarray  # [B, N, C, K] int32
    lens_logprobs: np.ndarray  # [B, N, C, K] f32
    final: np.ndarray | None = None  # [B, N, E] f32 in decode (prefill: `PrefillResult.hidden`)


@dataclass(frozen=True)
class PrefillResult:
    """The token drawn after each row's chunk, and prompt logprobs when a row asked."""

    token_ids: np.ndarray  # [B] int32
    logprobs: np.ndarray  # [B] f32, logprob of the drawn token
    top_ids: np.ndarray  # [B, K] int32
    top_logprobs: np.ndarray  # [B, K] f32
    mirostat_mu: np.ndarray  # [B] f32, Mirostat state after the draw
    nonfinite: np.ndarray | None = None  # [B] bool, NaN or +inf in the row's logits
    uncertainty: np.ndarray | None = None  # [B, 3] f32 (`jaxserve.sampling.uncertainty`)
    prompt: PromptLogprobs | None = None
    probe: ProbeResult | None = None  # when a row captures
    hidden: np.ndarray | None = None  # [B, T, E] final hidden states, when a row captures


@dataclass(frozen=True)
class DecodeResult:
    """Up to N tokens per row of one k-step decode call."""

    token_ids: np.ndarray  # [B, N] int32; entries past num_generated are junk
    logprobs: np.ndarray  # [B, N] f32
    top_ids: np.ndarray  # [B, N, K] int32
    top_logprobs: np.ndarray  # [B, N, K] f32
    num_generated: np.ndarray  # [B] int32
    mirostat_mu: np.ndarray  # [B] f32
    nonfinite: np.ndarray | None = None  # [B] bool, the row stopped at NaN or +inf logits
    uncertainty: np.ndarray | None = None  # [B, N, 3] f32
    probe: ProbeResult | None = None  # when a row captures


@dataclass(frozen=True)
class VerifyResult:
    """The draw after each position of each row of a speculative check (T: positions)."""

    token_ids: np.ndarray  # [B, T] int32
    logprobs: np.ndarray  # [B, T] f32
    top_ids: np.ndarray  # [B, T, K] int32
    top_logprobs: np.ndarray  # [B, T, K] f32
    mirostat_mu: np.ndarray  # [B, T] f32
    nonfinite: np.ndarray  # [B, T] bool
    uncertainty: np.ndarray  # [B, T, 3] f32


class Runner(Protocol):
    """One model over one paged KV cache, run in compiled buckets."""

    config: ModelConfig
    num_pages: int  # KV pages in the pool (page 0 is the null page)
    grammar_states: int  # capacity of the on-device constraint tables (0: host masks only)
    capture_slots: int  # layers a row may capture at once (0: no capture)
    steering_slots: int  # steering vectors the device table holds (0: no steering)
    lora_slots: int  # LoRA adapters the device table holds (0: none)
    lora_rank: int  # the table's rank (smaller adapters are zero-padded)
    num_real_tokens: int  # tokens computed for requests
    num_padded_tokens: int  # token slots computed, padding included
    compiled_at_warmup: int | None

    def prefill(self, rows: Sequence[PrefillRow]) -> PrefillResult: ...

    def decode(self, rows: Sequence[DecodeRow], *, num_steps: int) -> DecodeResult: ...

    def embed(self, rows: Sequence[EmbedRow], *, max_rows: int, chunk: int) -> np.ndarray: ...

    def verify(self, rows: Sequence[PrefillRow], *, num_tokens: int) -> VerifyResult: ...

    def load_grammar_tables(
        self, byte_next: np.ndarray, masks: np.ndarray, complete: np.ndarray
    ) -> None: ...

    def load_steering(self, table: np.ndarray) -> None: ...

    def copy_pages(self, pairs: Sequence[tuple[int, int]]) -> None: ...

    def load_lora(self, slot: int, pairs: Mapping) -> None: ...

    def close(self) -> None: ...

    def warmup(
        self,
        *,
        max_rows: int,
        max_prefill_rows: int,
        max_chunk: int,
        max_batched_tokens: int,
        num_steps: int,
    ) -> int: ...

    def warmup_shapes(
        self, *, max_rows: int, max_prefill_rows: int, max_chunk: int, max_batched_tokens: int
    ) -> list[tuple[str, int, int, int]]: ...

    def warm(self, shape: tuple[str, int, int, int], *, num_steps: int) -> None: ...

    def warmed_up(self) -> None: ...

    def num_compiled(self) -> int: ...
