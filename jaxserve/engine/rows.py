"""The work the engine hands the device side, one row per request, and the compiled buckets.

Host only: plain dataclasses of Python ints. The runner (`jaxserve.runtime.runner`) pads a list
of rows to the smallest bucket that holds it, so only these shapes are ever compiled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from jaxserve.sampling.rows import SamplingRow

# A one-row decode would take XLA's matrix-vector path, whose numerics differ from the batched
# one, so decode runs at least two rows (a request's tokens never depend on its batch).
DECODE_ROW_BUCKETS = (2, 4, 8, 16, 32, 64)
PREFILL_ROW_BUCKETS = (1, 2, 4)
# A speculative check has several tokens per row, so one row is a matrix product already.
VERIFY_ROW_BUCKETS = (1, *DECODE_ROW_BUCKETS)
TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512)


@dataclass(frozen=True)
class ProbeRow:
    """A row's hooks (`jaxserve.models.decoder.Probe`): the layers its capture slots keep,
    whether it wants their logit lens, its steering vector's slot and scale, and its LoRA
    adapter's slot and scale."""

    capture: Sequence[int] = ()
    lens: bool = False
    steer_slot: int = 0
    steer_scale: float = 0.0
    keep: bool = False  # the step's captured states and lens are fetched for this row
    lora_slot: int = 0
    lora_scale: float = 0.0


NO_PROBE = ProbeRow()


@dataclass(frozen=True)
class PrefillRow:
    """`token_ids` continue a sequence that already has `start` tokens cached in `pages`;
    `sampling` draws the token after them (greedy and featureless by default).

    `prompt_targets`, when not empty, asks for prompt logprobs: `prompt_targets[j]` is the token
    that follows `token_ids[j]` in the prompt, scored under the model's distribution there.
    """

    token_ids: Sequence[int]
    start: int
    pages: Sequence[int]
    sampling: SamplingRow = SamplingRow()
    prompt_targets: Sequence[int] = ()
    probe: ProbeRow = NO_PROBE
    grammar_state: int = -1  # a speculative check's constraint state on device (-1: none)


@dataclass(frozen=True)
class DecodeRow:
    token_id: int  # the last token, not yet cached, at position `start`
    start: int
    pages: Sequence[int]
    sampling: SamplingRow  # its stop_ids also end the row
    remaining: int  # tokens this row may still generate
    grammar_state: int = -1  # global id in the loaded constraint tables (-1: none on device)
    probe: ProbeRow = NO_PROBE


@dataclass(frozen=True)
class EmbedRow:
    """A whole input to embed; its K/V go to `pages`, which the caller owns and frees after."""

    token_ids: Sequence[int]
    pages: Sequence[int]


def bucket(n: int, sizes: Sequence[int]) -> int:
    """The smallest of `sizes` (ascending) that holds `n`."""
    for size in sizes:
        if n <= size:
            return size
    raise ValueError(f"{n} exceeds the largest bucket {sizes[-1]}")


def prefill_chunk_cap(num_rows: int, max_tokens: int, prefill_chunk: int) -> int:
    """Tokens a chunk may have when `num_rows` prompts share a prefill call: `prefill_chunk`
    alone; side by side, rows are padded to one token bucket and the padded call stays within
    `max_tokens` (0 when not even the smallest bucket fits)."""
    if num_rows == 1:
        return prefill_chunk
    rows = bucket(num_rows, PREFILL_ROW_BUCKETS)
    fitting = (t for t in TOKEN_BUCKETS if rows * t <= max_tokens and t <= prefill_chunk)
    return max(fitting, default=0)


def page_buckets(max_pages: int) -> tuple[int, ...]:
    """Page-table widths: powers of 2 from 8, capped by (and ending at) `max_pages`.

    Attention reads every slot of the bucket, so a row just past a bucket pays for twice its
    pages at most (powers of 4 cost up to 4x: a 32-row step over 250 tokens took 362 ms in the
    64-page bucket against 206 ms over 230 in the 16-page one)."""
    sizes = [2**i for i in range(3, 24) if 2**i < max_pages]
    return (*sizes, max_pages)
