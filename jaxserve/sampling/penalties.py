"""Repetition, presence and frequency penalties over per-row token counts, and DRY.

Counts are built once per step from the row's token history and advanced per generated token.
Scope (documented in `SamplingParams`): repetition_penalty sees prompt and output tokens;
presence/frequency see output tokens only (OpenAI's semantics); `repeat_last_n` limits all three
to the last n positions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxserve.sampling.restrict import token_bits
from jaxserve.sampling.tensors import RowState, SamplingTensors

DRY_MAX_MATCH = 32  # repeats are measured up to this many tokens


def _window_start(length: jax.Array, last_n: jax.Array) -> jax.Array:
    return jnp.where(last_n < 0, 0, length - last_n)


def build_counts(
    t: SamplingTensors, history: jax.Array, length: jax.Array, prompt_len: jax.Array, vocab: int
) -> tuple[jax.Array, jax.Array]:
    """(counts_all, counts_out) [B, V] of the tokens at positions < length within the window."""
    pos = jnp.arange(history.shape[1])[None, :]
    inside = (pos < length[:, None]) & (pos >= _window_start(length, t.repeat_last_n)[:, None])
    inside &= history >= 0
    rows = jnp.arange(history.shape[0])[:, None]
    ids = jnp.where(inside, history, vocab)
    zeros = jnp.zeros((history.shape[0], vocab), jnp.int32)
    counts_all = zeros.at[rows, ids].add(1, mode="drop")
    out_ids = jnp.where(pos >= prompt_len[:, None], ids, vocab)
    counts_out = zeros.at[rows, out_ids].add(1, mode="drop")
    return counts_all, counts_out


def advance_counts(t: SamplingTensors, state: RowState, new_ids: jax.Array, write: jax.Array):
    """Counts after appending `new_ids` [B] at position `state.length` (rows where `write`):
    the new token enters the window and, with a finite window, the oldest one leaves it."""
    b, vocab = state.counts_all.shape
    rows = jnp.arange(b)
    new = jnp.where(write, new_ids, vocab)
    gone_pos = state.length + 1 - t.repeat_last_n - 1
    leaves = write & (t.repeat_last_n >= 0) & (gone_pos >= 0)
    gone = jnp.take_along_axis(state.history, jnp.maximum(gone_pos, 0)[:, None], 1)[:, 0]
    gone_all = jnp.where(leaves & (gone >= 0), gone, vocab)
    gone_out = jnp.where(gone_pos >= state.prompt_len, gone_all, vocab)
    counts_all = state.counts_all.at[rows, new].add(1, mode="drop")
    counts_all = counts_all.at[rows, gone_all].add(-1, mode="drop")
    counts_out = state.counts_out.at[rows, new].add(1, mode="drop")
    counts_out = counts_out.at[rows, gone_out].add(-1, mode="drop")
    return counts_all, counts_out


def apply_penalties(logits: jax.Array, t: SamplingTensors, state: RowState) -> jax.Array:
    """repetition_penalty r: seen logits > 0 divided by r, < 0 multiplied by r; then
    presence and frequency: subtract presence * [seen] + frequency * count (output tokens)."""
    r = t.repetition_penalty[:, None]
    seen = state.counts_all > 0
    penalized = jnp.where(logits > 0, logits / r, logits * r)
    logits = jnp.where(seen, penalized, logits)
    out = state.counts_out
    return (
        logits
        - t.presence_penalty[:, None] * (out > 0).astype(logits.dtype)
        - t.frequency_penalty[:, None] * out.astype(logits.dtype)
    )


def apply_dry(logits: jax.Array, t: SamplingTensors, state: RowState) -> jax.Array:
    """DRY: if the sequence's last m tokens also occur earlier, followed by token x, then
    drawing x would extend the repeat; for m >= allowed_length, x loses
    multiplier * base ** (m - allowed_length). Matches stop at sequence breakers and at the
    start of the `dry_penalty_last_n` window; each token takes its longest match."""
    b, h = state.history.shape
    hist = state.history
    length = state.length
    start = _window_start(length, t.dry_last_n)
    breaker = token_bits(t.dry_breakers, hist)  # [B, H]
    pos = jnp.arange(h)[None, :]  # candidate position i: token hist[i] follows the match

    def extend(j, carry):
        match, alive = carry
        earlier = pos - 1 - j  # compared with the token at length - 1 - j
        tail_pos = length - 1 - j
        tail = jnp.take_along_axis(hist, jnp.clip(tail_pos, 0, h - 1)[:, None], 1)
        prev = jnp.take_along_axis(hist, jnp.clip(earlier, 0, h - 1), 1)
        same = (earlier >= start[:, None]) & (tail_pos[:, None] > earlier) & (prev == tail)
        same &= (prev >= 0) & ~jnp.take_along_axis(breaker, jnp.clip(earlier, 0, h - 1), 1)
        alive &= same
        return match + alive.astype(jnp.int32), alive

    init = (jnp.zeros((b, h), jnp.int32), jnp.ones((b, h), bool))
    match, _ = jax.lax.fori_loop(0, DRY_MAX_MATCH, extend, init)
    valid = (pos < length[:, None]) & (pos >= start[:, None]) & (hist >= 0)
    allowed = t.dry_allowed_length[:, None]
    hit = valid & (match >= allowed)
    exponent = (match - allowed).astype(jnp.float32)
    penalty = t.dry_multiplier[:, None] * t.dry_base[:, None] ** exponent
    ids = jnp.where(hit, hist, logits.shape[-1])
    rows = jnp.arange(b)[:, None]
    worst = jnp.zeros_like(logits).at[rows, ids].max(jnp.where(hit, penalty, 0.0), mode="drop")
    return logits - worst
