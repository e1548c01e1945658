"""The sampler chain: restrictions, the optional research hook, the ordered stages, Mirostat,
then one draw and logprobs, all on device for a whole batch.

Order per row follows `SamplingTensors.stage_slot`. The (slot, stage) pairs that some row uses
are listed on device, slot-major, and a loop runs just those: each iteration `lax.switch`es to
one stage and keeps its result for the rows that placed it at that slot. Each stage is compiled
once, a batch that uses no stage runs no iteration, and any parameter mix or order runs the
same compiled program.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from jaxserve.sampling import filters, mirostat, penalties, restrict
from jaxserve.sampling.draw import draw, logprobs_of, row_keys
from jaxserve.sampling.tensors import RowState, SamplingTensors
from jaxserve.sampling.uncertainty import measures
from jaxserve.sampling_params import SAMPLER_STAGES

# (logits [B, V], row state) -> logits: a pure function compiled into every step's chain.
LogitsHook = Callable[[jax.Array, RowState], jax.Array]


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class SampleOutput:
    token_ids: jax.Array  # [B] int32
    logprobs: jax.Array  # [B] f32, logprob of the drawn token (raw or processed per row)
    top_ids: jax.Array  # [B, K] int32
    top_logprobs: jax.Array  # [B, K] f32
    mirostat_mu: jax.Array  # [B] f32, the rows' Mirostat state after this draw
    nonfinite: jax.Array  # [B] bool, NaN or +inf in the row's logits (raw, or after the chain)
    uncertainty: jax.Array  # [B, 3] f32, entropy / processed entropy / top-2 margin (or zeros)


def _stateful(fn):
    return lambda logits, t, state, key: fn(logits, t, state)


def _stateless(fn):
    return lambda logits, t, state, key: fn(logits, t, key)


_STAGE_FNS = {
    "penalties": _stateful(penalties.apply_penalties),
    "dry": _stateful(penalties.apply_dry),
    "top_n_sigma": _stateless(filters.top_n_sigma),
    "top_k": _stateless(filters.top_k),
    "typ_p": _stateless(filters.typical_p),
    "top_p": _stateless(filters.top_p),
    "min_p": _stateless(filters.min_p),
    "xtc": _stateless(filters.xtc),
    "temperature": _stateless(filters.temperature),
}
STAGES = tuple(_STAGE_FNS[name] for name in SAMPLER_STAGES)
PENALTIES = SAMPLER_STAGES.index("penalties")


def _when(pred: jax.Array, fn, logits: jax.Array) -> jax.Array:
    return jax.lax.cond(jnp.any(pred), fn, lambda x: x, logits)


def process(
    logits: jax.Array,
    t: SamplingTensors,
    state: RowState,
    keys: jax.Array,
    hook: LogitsHook | None = None,
    kernels: str = "reference",
) -> jax.Array:
    """Raw logits [B, V] -> the distribution each row draws from (as logits). `kernels` picks
    the bitmask's implementation (see `jaxserve.kernels`)."""
    logits = _when(t.bias_ids >= 0, lambda x: restrict.apply_logit_bias(x, t), logits)
    masking = (
        t.use_bitmask[:, None]
        | (t.bad_word_lens > 0)
        | (state.num_generated < t.min_tokens)[:, None]
    )
    logits = _when(masking, lambda x: _restrict(x, t, state, kernels), logits)
    if hook is not None:
        logits = hook(logits, state)
    stage_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    branches = [(lambda x, stage=stage: stage(x, t, state, stage_keys)) for stage in STAGES]
    # The (slot, stage) pairs some row uses, slot-major; a loop runs just those, so each
    # stage is compiled once and a batch using no stage runs no iteration.
    num = len(STAGES)
    slots = jnp.arange(num, dtype=jnp.int32)
    used = jnp.any(t.stage_slot[:, None, :] == slots[None, :, None], axis=0)  # [slot, stage]
    flat = used.reshape(-1)
    pending = jnp.argsort(~flat, stable=True).astype(jnp.int32)  # used pairs first, in order

    def run_pair(i: jax.Array, x: jax.Array) -> jax.Array:
        slot, stage = pending[i] // num, pending[i] % num
        on = jnp.take(t.stage_slot, stage, axis=1) == slot
        return jnp.where(on[:, None], jax.lax.switch(stage, branches, x), x)

    logits = jax.lax.fori_loop(0, jnp.sum(flat, dtype=jnp.int32), run_pair, logits)
    return _when(t.mirostat > 0, lambda x: mirostat.truncate(x, t, state.mirostat_mu), logits)


def _restrict(
    logits: jax.Array, t: SamplingTensors, state: RowState, kernels: str = "reference"
) -> jax.Array:
    """Allowed ids, bad words and min_tokens. Restrictions that leave a row nothing (say
    allowed ids that are all stop ids under min_tokens) give way: the row keeps its logits
    rather than drawing from nothing. Every later stage keeps at least one token."""
    masked = restrict.apply_bitmask(logits, t, kernels)
    masked = restrict.apply_bad_words(masked, t, state)
    masked = restrict.apply_min_tokens(masked, t, state)
    alive = jnp.any(jnp.isfinite(masked), axis=-1, keepdims=True)
    return jnp.where(alive, masked, logits)


def sample(
    logits: jax.Array,
    t: SamplingTensors,
    state: RowState,
    key: jax.Array,
    *,
    want_logprobs: jax.Array,
    hook: LogitsHook | None = None,
    kernels: str = "reference",
) -> SampleOutput:
    """Draw one token per row from raw `logits` [B, V] through the chain.

    The row's key is `fold_in(fold_in(key, seed), position)` (position = `state.length`), so a
    row's tokens depend on its own seed and sequence only. Greedy rows (temperature 0, no
    Mirostat) take the argmax of the processed logits. Logprobs (chosen + top-K) are computed
    only when some row wants them (`want_logprobs` [B] bool), the per-token uncertainty only
    when some row's `want_uncertainty` is set.
    """
    keys = row_keys(key, t.seeds, state.length)
    processed = process(logits, t, state, keys, hook, kernels)
    greedy = (t.temperature == 0.0) & (t.mirostat == 0)
    ids = draw(processed, greedy, keys)
    mu = jax.lax.cond(
        jnp.any(t.mirostat > 0),
        lambda _: mirostat.update(processed, ids, t, state.mirostat_mu),
        lambda _: state.mirostat_mu,
        None,
    )
    source = jnp.where(t.processed_logprobs[:, None], processed, logits)

    def no_logprobs(_):
        b, k = ids.shape[0], 20
        return jnp.zeros(b), jnp.zeros((b, k), jnp.int32), jnp.zeros((b, k))

    chosen, top_ids, top_lp = jax.lax.cond(
        jnp.any(want_logprobs), lambda _: logprobs_of(source, ids), no_logprobs, None
    )
    nonfinite = _nonfinite(logits) | _nonfinite(processed)
    uncertainty = measures(logits, processed, t.want_uncertainty)
    return SampleOutput(ids, chosen, top_ids, top_lp, mu, nonfinite, uncertainty)


def _nonfinite(x: jax.Array) -> jax.Array:
    """[B, V] -> [B]: a NaN or +inf anywhere in the row (-inf is a masked token, not a fault)."""
    return jnp.any(jnp.isnan(x) | (x == jnp.inf), axis=-1)


def initial_counts(
    t: SamplingTensors, history: jax.Array, length: jax.Array, prompt_len: jax.Array, vocab: int
) -> tuple[jax.Array, jax.Array]:
    """Token counts for rows with penalties on (zeros when no row has them)."""
    b = history.shape[0]

    def build(_):
        return penalties.build_counts(t, history, length, prompt_len, vocab)

    def none(_):
        zeros = jnp.zeros((b, vocab), jnp.int32)
        return zeros, zeros

    return jax.lax.cond(jnp.any(t.stage_slot[:, PENALTIES] >= 0), build, none, None)


def advance(t: SamplingTensors, state: RowState, out: SampleOutput, write: jax.Array) -> RowState:
    """The row state after appending each writing row's drawn token."""
    ids = out.token_ids
    counts = jax.lax.cond(
        jnp.any(t.stage_slot[:, PENALTIES] >= 0),
        lambda _: penalties.advance_counts(t, state, ids, write),
        lambda _: (state.counts_all, state.counts_out),
        None,
    )
    h = state.history.shape[1]
    rows = jnp.arange(ids.shape[0])
    target = jnp.where(write & (state.length < h), state.length, h)
    history = state.history.at[rows, target].set(ids, mode="drop")
    step = write.astype(jnp.int32)
    return RowState(
        history=history,
        length=state.length + step,
        prompt_len=state.prompt_len,
        num_generated=state.num_generated + step,
        mirostat_mu=jnp.where(write, out.mirostat_mu, state.mirostat_mu),
        counts_all=counts[0],
        counts_out=counts[1],
    )
