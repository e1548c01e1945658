"""Host side of the chain (numpy only, never jax): each row's `SamplingParams` and sequence
state -> the numpy arrays of `SamplingTensors` and `RowState`, padded to a bucket.

Rows that do not use a feature leave its arrays at neutral values, and a stage is marked off
(`stage_slot` -1) for rows where it would change nothing, so the device skips it entirely when
no row of the batch needs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from jaxserve.sampling_params import (
    MAX_BAD_WORD_TOKENS,
    MAX_BAD_WORDS,
    MAX_LOGIT_BIAS,
    SAMPLER_STAGES,
    SamplingParams,
)

BAD_WORD_SEQUENCES = 2 * MAX_BAD_WORDS  # each word alone and after a space
NUM_STOP_IDS = 16  # end-of-generation ids + stop_token_ids per row


def bitmask_words(vocab: int) -> int:
    return (vocab + 31) // 32


def token_bitmask(token_ids: Sequence[int], vocab: int) -> np.ndarray:
    """A [ceil(V/32)] int32 bitmask with the bits of `token_ids` set."""
    bits = np.zeros(bitmask_words(vocab) * 32, np.uint8)
    bits[np.asarray(list(token_ids), np.int64)] = 1
    packed = np.packbits(bits.reshape(-1, 32)[:, ::-1], axis=-1, bitorder="big")
    return packed.view(">u4").astype(np.uint32).view(np.int32).reshape(-1)


@dataclass(frozen=True)
class SamplingRow:
    """One row's sampling inputs. `history` holds the sequence's tokens when the params need
    them (penalties, DRY, bad words), up to the token being drawn (exclusive)."""

    params: SamplingParams = field(default_factory=lambda: SamplingParams(temperature=0.0))
    seed: int = 0
    prompt_len: int = 0
    num_generated: int = 0
    mirostat_mu: float = 0.0
    stop_ids: Sequence[int] = ()
    history: Sequence[int] | None = None
    allowed_mask: np.ndarray | None = None  # [ceil(V/32)] int32
    breaker_mask: np.ndarray | None = None  # [ceil(V/32)] int32
    bad_word_ids: Sequence[Sequence[int]] = ()


def stage_enabled(params: SamplingParams) -> dict[str, bool]:
    """Which ordered stages would change this row's distribution."""
    p = params
    return {
        "penalties": p.repetition_penalty != 1.0
        or p.presence_penalty != 0.0
        or p.frequency_penalty != 0.0,
        "dry": p.dry_multiplier > 0.0,
        "top_n_sigma": p.top_n_sigma > 0.0,
        "top_k": p.top_k > 0,
        "typ_p": p.typical_p < 1.0,
        "top_p": p.top_p < 1.0,
        "min_p": p.min_p > 0.0,
        "xtc": p.xtc_probability > 0.0 and p.xtc_threshold <= 0.5,
        "temperature": p.temperature > 0.0 and (p.temperature != 1.0 or p.dynatemp_range > 0),
    }


def stage_slots(params: SamplingParams) -> list[int]:
    on = stage_enabled(params)
    order = {name: i for i, name in enumerate(params.samplers)}
    return [order[s] if on[s] and s in order else -1 for s in SAMPLER_STAGES]


def pack(
    rows: Sequence[SamplingRow], *, num_rows: int, history_width: int, vocab: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """-> (SamplingTensors fields, RowState fields without counts, want_logprobs [B])."""
    words = bitmask_words(vocab)
    f32, i32 = np.float32, np.int32

    def full(value, dtype, *shape):
        return np.full((num_rows, *shape), value, dtype)

    t = {
        "seeds": full(0, np.uint32),
        "temperature": full(0.0, f32),
        "dynatemp_range": full(0.0, f32),
        "dynatemp_exponent": full(1.0, f32),
        "top_k": full(0, i32),
        "top_p": full(1.0, f32),
        "min_p": full(0.0, f32),
        "typical_p": full(1.0, f32),
        "top_n_sigma": full(0.0, f32),
        "xtc_probability": full(0.0, f32),
        "xtc_threshold": full(0.1, f32),
        "repetition_penalty": full(1.0, f32),
        "presence_penalty": full(0.0, f32),
        "frequency_penalty": full(0.0, f32),
        "repeat_last_n": full(-1, i32),
        "dry_multiplier": full(0.0, f32),
        "dry_base": full(1.75, f32),
        "dry_allowed_length": full(2, i32),
        "dry_last_n": full(-1, i32),
        "dry_breakers": full(0, i32, words),
        "mirostat": full(0, i32),
        "mirostat_tau": full(5.0, f32),
        "mirostat_eta": full(0.1, f32),
        "min_tokens": full(0, i32),
        "stop_ids": full(-1, i32, NUM_STOP_IDS),
        "bias_ids": full(-1, i32, MAX_LOGIT_BIAS),
        "bias_values": full(0.0, f32, MAX_LOGIT_BIAS),
        "use_bitmask": full(False, bool),
        "bitmask": full(-1, i32, words),
        "bad_words": full(-1, i32, BAD_WORD_SEQUENCES, MAX_BAD_WORD_TOKENS),
        "bad_word_lens": full(0, i32, BAD_WORD_SEQUENCES),
        "stage_slot": full(-1, i32, len(SAMPLER_STAGES)),
        "processed_logprobs": full(False, bool),
        "want_uncertainty": full(False, bool),
    }
    state = {
        "history": full(-1, i32, history_width),
        "prompt_len": full(0, i32),
        "num_generated": full(0, i32),
        "mirostat_mu": full(0.0, f32),
    }
    want_logprobs = full(False, bool)
    for i, row in enumerate(rows):
        p = row.params
        for name in (
            "temperature",
            "dynatemp_range",
            "dynatemp_exponent",
            "top_k",
            "top_p",
            "min_p",
            "typical_p",
            "top_n_sigma",
            "xtc_probability",
            "xtc_threshold",
            "repetition_penalty",
            "presence_penalty",
            "frequency_penalty",
            "repeat_last_n",
            "dry_multiplier",
            "dry_base",
            "dry_allowed_length",
            "mirostat",
            "mirostat_tau",
            "mirostat_eta",
            "min_tokens",
        ):
            t[name][i] = getattr(p, name)
        t["seeds"][i] = row.seed
        t["dry_last_n"][i] = p.dry_penalty_last_n
        t["stop_ids"][i, : len(row.stop_ids)] = list(row.stop_ids)
        if p.logit_bias:
            ids, values = zip(*sorted(p.logit_bias.items()), strict=True)
            t["bias_ids"][i, : len(ids)] = ids
            t["bias_values"][i, : len(ids)] = values
        if row.allowed_mask is not None:
            t["use_bitmask"][i] = True
            t["bitmask"][i] = row.allowed_mask
        if row.breaker_mask is not None:
            t["dry_breakers"][i] = row.breaker_mask
        for j, seq in enumerate(row.bad_word_ids):
            t["bad_words"][i, j, : len(seq)] = list(seq)
            t["bad_word_lens"][i, j] = len(seq)
        t["stage_slot"][i] = stage_slots(p)
        t["processed_logprobs"][i] = p.logprobs_mode == "processed"
        t["want_uncertainty"][i] = p.return_uncertainty
        want_logprobs[i] = p.logprobs is not None
        state["prompt_len"][i] = row.prompt_len
        state["num_generated"][i] = row.num_generated
        state["mirostat_mu"][i] = row.mirostat_mu
        if row.history is not None:
            n = min(len(row.history), history_width)
            state["history"][i, :n] = row.history[:n]
    return t, state, want_logprobs
