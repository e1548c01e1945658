"""Run the device sampler chain on explicit logits, for tests and notebooks."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxserve.sampling.chain import LogitsHook, SampleOutput, initial_counts, process, sample
from jaxserve.sampling.draw import row_keys
from jaxserve.sampling.rows import SamplingRow, pack
from jaxserve.sampling.tensors import RowState, SamplingTensors


def _host_inputs(rows: Sequence[SamplingRow], vocab: int, lengths: Sequence[int] | None):
    if lengths is None:
        lengths = [len(r.history) if r.history is not None else 0 for r in rows]
    width = max(64, *(len(r.history or ()) for r in rows))
    t, state, want = pack(rows, num_rows=len(rows), history_width=width, vocab=vocab)
    tensors = SamplingTensors(**{k: jnp.asarray(v) for k, v in t.items()})
    state = {k: jnp.asarray(v) for k, v in state.items()}
    state["length"] = jnp.asarray(np.asarray(lengths, np.int32))
    return tensors, state, jnp.asarray(want)


def row_state(t: SamplingTensors, state: dict[str, jax.Array], vocab: int) -> RowState:
    """A `RowState` from packed arrays, with token counts built on device."""
    counts = initial_counts(t, state["history"], state["length"], state["prompt_len"], vocab)
    return RowState(**state, counts_all=counts[0], counts_out=counts[1])


@partial(jax.jit, static_argnames=("hook",))
def _sample(logits, t, state, key, want, hook=None) -> SampleOutput:
    s = row_state(t, state, logits.shape[-1])
    return sample(logits, t, s, key, want_logprobs=want, hook=hook)


@jax.jit
def _process(logits, t, state, key) -> jax.Array:
    s = row_state(t, state, logits.shape[-1])
    return process(logits, t, s, row_keys(key, t.seeds, s.length))


def run_chain(
    logits: np.ndarray,
    rows: Sequence[SamplingRow],
    *,
    lengths: Sequence[int] | None = None,
    key: jax.Array | None = None,
    hook: LogitsHook | None = None,
) -> SampleOutput:
    """Draw one token per row of `logits` [B, V] through the chain. Row i draws the token at
    position `lengths[i]` (default: the length of its history, else 0)."""
    logits = jnp.asarray(logits, jnp.float32)
    t, state, want = _host_inputs(rows, logits.shape[-1], lengths)
    key = jax.random.key(0) if key is None else key
    return _sample(logits, t, state, key, want, hook=hook)


def processed_logits(
    logits: np.ndarray,
    rows: Sequence[SamplingRow],
    *,
    lengths: Sequence[int] | None = None,
    key: jax.Array | None = None,
) -> np.ndarray:
    """The logits each row would draw from (removed tokens are -inf)."""
    logits = jnp.asarray(logits, jnp.float32)
    t, state, _ = _host_inputs(rows, logits.shape[-1], lengths)
    key = jax.random.key(0) if key is None else key
    return np.asarray(_process(logits, t, state, key))
