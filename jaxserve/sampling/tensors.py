"""What a step's sampler takes (`SamplingTensors`, fixed for the call) and carries (`RowState`).

Every field is a per-row array, so a batch mixing any parameters runs the same compiled program.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class SamplingTensors:
    """Per-row sampling parameters; a stage is off for a row whose `stage_slot` entry is -1."""

    seeds: jax.Array  # [B] uint32
    temperature: jax.Array  # [B] f32, 0 = greedy
    dynatemp_range: jax.Array  # [B] f32
    dynatemp_exponent: jax.Array  # [B] f32
    top_k: jax.Array  # [B] int32
    top_p: jax.Array  # [B] f32
    min_p: jax.Array  # [B] f32
    typical_p: jax.Array  # [B] f32
    top_n_sigma: jax.Array  # [B] f32
    xtc_probability: jax.Array  # [B] f32
    xtc_threshold: jax.Array  # [B] f32
    repetition_penalty: jax.Array  # [B] f32
    presence_penalty: jax.Array  # [B] f32
    frequency_penalty: jax.Array  # [B] f32
    repeat_last_n: jax.Array  # [B] int32, -1 = whole sequence
    dry_multiplier: jax.Array  # [B] f32
    dry_base: jax.Array  # [B] f32
    dry_allowed_length: jax.Array  # [B] int32
    dry_last_n: jax.Array  # [B] int32, -1 = whole sequence
    dry_breakers: jax.Array  # [B, ceil(V/32)] int32 bitmask of tokens that end a DRY match
    mirostat: jax.Array  # [B] int32, 0 / 1 / 2
    mirostat_tau: jax.Array  # [B] f32
    mirostat_eta: jax.Array  # [B] f32
    min_tokens: jax.Array  # [B] int32
    stop_ids: jax.Array  # [B, S] int32, end-of-generation and stop ids (-1 = unused)
    bias_ids: jax.Array  # [B, NB] int32 logit_bias ids (-1 = unused)
    bias_values: jax.Array  # [B, NB] f32
    use_bitmask: jax.Array  # [B] bool
    bitmask: jax.Array  # [B, ceil(V/32)] int32, bit set = token allowed
    bad_words: jax.Array  # [B, NW, L] int32 banned sequences, left-aligned (-1 = unused)
    bad_word_lens: jax.Array  # [B, NW] int32 (0 = unused)
    stage_slot: jax.Array  # [B, len(SAMPLER_STAGES)] int32, position in the row's order or -1
    processed_logprobs: jax.Array  # [B] bool: logprobs of the processed distribution
    want_uncertainty: jax.Array  # [B] bool: entropies and top-2 margin of each drawn token


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class RowState:
    """What the chain reads about each row's sequence; the decode loop advances it per token.

    `history` is indexed by position; only rows that need it (penalties, DRY, bad words) fill
    it, the others hold -1. `counts_*` are kept only while some row uses penalties.
    """

    history: jax.Array  # [B, H] int32, token at each position (-1 = unknown/unused)
    length: jax.Array  # [B] int32, tokens in the sequence = position of the token being drawn
    prompt_len: jax.Array  # [B] int32
    num_generated: jax.Array  # [B] int32, tokens generated before the one being drawn
    mirostat_mu: jax.Array  # [B] f32
    counts_all: jax.Array  # [B, V] int32, prompt + output tokens within repeat_last_n
    counts_out: jax.Array  # [B, V] int32, output tokens within repeat_last_n
