"""The pure jitted steps over the paged KV cache, each `(params, kv, batch, key) -> (kv, out)`.

- `prefill`: rows of T tokens (prompt chunks) -> K/V written, one token sampled per row, and the
  final hidden states, which stay on device and feed `prompt_logprobs` or `pool` when asked.
- `decode`: rows of one token, run for up to `num_steps` tokens inside one `lax.while_loop`, with
  each row stopping on device at a stop id or its token limit, so the host syncs once per k tokens.
A batch's `probe` (None unless the runner has capture or steering slots) steers rows, keeps their
residual stream after chosen layers and, for rows that ask, the logit lens of those layers.
`kv` is donated in both: the cache is updated in place.

Embeddings reuse `prefill` (its hidden states) and add one small pure step, `pool`.
`make_steps` jits all four and counts their traces: after warm-up that count must stay flat.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxserve.models.decoder import Probe
from jaxserve.runtime.kv_cache import KVCache, TokenLayout
from jaxserve.runtime.parallel import tracing_mesh
from jaxserve.sampling.chain import LogitsHook, SampleOutput, advance, initial_counts, sample
from jaxserve.sampling.draw import TOP_LOGPROBS_MAX, logprobs_of
from jaxserve.sampling.grammar import DeviceGrammarTables, advance_rows, is_complete, mask_rows
from jaxserve.sampling.tensors import RowState, SamplingTensors
from jaxserve.sampling.uncertainty import NUM_MEASURES
from jaxserve.sampling_params import LENS_TOP_K


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class RowInputs:
    """Per-row sequence state for the sampler (the counts are built on device from it)."""

    history: jax.Array  # [B, H] int32, tokens by position (-1 where a row does not need them)
    prompt_len: jax.Array  # [B] int32
    num_generated: jax.Array  # [B] int32
    mirostat_mu: jax.Array  # [B] f32
    want_logprobs: jax.Array  # [B] bool


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class PrefillBatch:
    token_ids: jax.Array  # [B, T] int32
    start: jax.Array  # [B] int32, tokens already in the cache
    num_new: jax.Array  # [B] int32, valid tokens of this step (0 for a padding row)
    page_table: jax.Array  # [B, P] int32
    sampling: SamplingTensors
    rows: RowInputs
    probe: Probe | None = None


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class DecodeBatch:
    token_ids: jax.Array  # [B] int32, each row's last token (not yet in the cache)
    start: jax.Array  # [B] int32, its position = tokens already in the cache
    page_table: jax.Array  # [B, P] int32, pages for start + num_steps tokens
    remaining: jax.Array  # [B] int32, tokens a row may still generate (0 = padding row)
    grammar_state: jax.Array  # [B] int32, global constraint state (-1 = none on device)
    sampling: SamplingTensors  # its stop_ids end a row
    rows: RowInputs
    probe: Probe | None = None


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class ProbeOutput:
    """What a step's probe kept, per row and per drawn token (N: 1 in a prefill step)."""

    captured: jax.Array  # [B, T, C, E] f32 in a prefill step (every token), [B, N, C, E] in decode
    final: jax.Array | None  # [B, N, E] f32, the final norm's output (decode; prefill: `hidden`)
    lens_ids: jax.Array  # [B, N, C, K] int32, the logit lens of each capture slot
    lens_logprobs: jax.Array  # [B, N, C, K] f32


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class DecodeOutput:
    token_ids: jax.Array  # [B, N] int32, N = num_steps; entries past num_generated are junk
    logprobs: jax.Array  # [B, N] f32
    top_ids: jax.Array  # [B, N, K] int32
    top_logprobs: jax.Array  # [B, N, K] f32
    num_generated: jax.Array  # [B] int32
    mirostat_mu: jax.Array  # [B] f32, each row's Mirostat state after its last token
    nonfinite: jax.Array  # [B] bool, the row's logits held NaN or +inf (the row stopped there)
    uncertainty: jax.Array  # [B, N, 3] f32 (see `sampling.uncertainty`)
    probe: ProbeOutput | None = None


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class PrefillOutput:
    sampled: SampleOutput  # one token per row, drawn after its last valid token
    hidden: jax.Array  # [B, T, E] f32, final hidden states (after the final norm)
    probe: ProbeOutput | None = None


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class DecodeCarry:
    """The state of the k-step decode loop, one iteration per generated token."""

    step: jax.Array  # [] int32, iterations done
    kv: KVCache  # the cache being written
    token_ids: jax.Array  # [B] int32, each row's last token (the next input)
    state: RowState  # the sampler's per-row sequence state
    num_new: jax.Array  # [B] int32, tokens generated in this call
    stopped: jax.Array  # [B] bool
    out_ids: jax.Array  # [B, N] int32
    out_logprobs: jax.Array  # [B, N] f32
    top_ids: jax.Array  # [B, N, K] int32
    top_logprobs: jax.Array  # [B, N, K] f32
    grammar_state: jax.Array  # [B] int32, global constraint state (-1 = none on device)
    nonfinite: jax.Array  # [B] bool, a draw of the row saw NaN or +inf logits
    uncertainty: jax.Array  # [B, N, 3] f32
    probe: ProbeOutput | None  # the probe's outputs so far (None without a probe)


class TraceCounter:
    """Counts traces of the functions it wraps: `jax.jit` runs the Python function only to trace
    it, so once every bucket is warm the count must not move (a retrace is a recompile)."""

    def __init__(self) -> None:
        self.count = 0

    def wrap(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def traced(*args, **kwargs):
            self.count += 1
            return fn(*args, **kwargs)

        return traced


class Steps(NamedTuple):
    """The jitted steps of one model structure (see each function's docstring)."""

    prefill: Callable[..., tuple[KVCache, PrefillOutput]]
    prompt_logprobs: Callable[..., tuple[jax.Array, jax.Array, jax.Array]]
    decode: Callable[..., tuple[KVCache, DecodeOutput]]
    pool: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
    traces: TraceCounter
    verify: Callable[..., tuple[KVCache, SampleOutput]]
    copy_pages: Callable[[KVCache, jax.Array], KVCache]


def _row_state(rows: RowInputs, length: jax.Array, t: SamplingTensors, vocab: int) -> RowState:
    """`length`: each row's position of the token to draw."""
    counts = initial_counts(t, rows.history, length, rows.prompt_len, vocab)
    return RowState(
        history=rows.history,
        length=length,
        prompt_len=rows.prompt_len,
        num_generated=rows.num_generated,
        mirostat_mu=rows.mirostat_mu,
        counts_all=counts[0],
        counts_out=counts[1],
    )


def make_steps(
    graphdef: nnx.GraphDef,
    hook: LogitsHook | None = None,
    num_tokens: int | None = None,
    kv_sharding: jax.sharding.Sharding | None = None,
) -> Steps:
    """Jitted prefill, prompt_logprobs, decode and pool for one model structure; `hook` is compiled
    into the sampler chain of both sampling steps. With `num_tokens` (the tokenizer's size),
    logits of the ids past it (a padded embedding) are -inf, so they are never sampled. With
    `kv_sharding` (tensor parallel), the returned cache keeps the layout it came in with, so
    the next step finds the same input sharding and nothing recompiles."""

    def keep(kv: KVCache) -> KVCache:
        if kv_sharding is None:
            return kv
        return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, kv_sharding), kv)

    def head(model: nnx.Module, h: jax.Array) -> jax.Array:
        logits = model.logits(h)
        if num_tokens is None or num_tokens >= logits.shape[-1]:
            return logits
        ids = jnp.arange(logits.shape[-1], dtype=jnp.int32)
        return jnp.where(ids < num_tokens, logits, -jnp.inf)

    def prefill(
        params: nnx.State, kv: KVCache, batch: PrefillBatch, key: jax.Array
    ) -> tuple[KVCache, PrefillOutput]:
        """Write K/V of `batch` into `kv` and sample one token per row after its last valid token.

        Returns (kv, out): `out.hidden` stays on device and feeds `prompt_logprobs` or `pool`
        only when a request asks for them. Each row's draw runs the sampler
        chain keyed by `fold_in(fold_in(key, seed), position of the sampled token)`.
        """
        model = nnx.merge(graphdef, params)
        b, t = batch.token_ids.shape
        layout = TokenLayout.build(
            start=batch.start,
            num_new=batch.num_new,
            num_tokens=t,
            page_table=batch.page_table,
            page_size=kv.k.shape[3],
        )
        h, kv, kept = _forward(model, batch.token_ids, kv, layout, batch.probe)
        last = jnp.clip(batch.num_new - 1, 0, t - 1)
        logits = head(model, h[jnp.arange(b), last])
        probe = None
        if kept is not None:
            lens_ids, lens_lp = lens(model, kept[jnp.arange(b), last], batch.probe.lens)
            probe = ProbeOutput(kept, None, lens_ids[:, None], lens_lp[:, None])
        state = _row_state(batch.rows, layout.kv_lens, batch.sampling, model.config.vocab_size)
        out = sample(
            logits,
            batch.sampling,
            state,
            key,
            want_logprobs=batch.rows.want_logprobs,
            hook=hook,
            kernels=model.config.kernels,
        )
        return keep(kv), PrefillOutput(sampled=out, hidden=h, probe=probe)

    def lens(model: nnx.Module, kept: jax.Array, want: jax.Array) -> tuple[jax.Array, jax.Array]:
        """kept [B, C, E] -> the top LENS_TOP_K (ids, logprobs) [B, C, K] of the final norm and
        head applied to each slot of the rows that `want` them (zeros elsewhere). When at most a
        quarter of the rows want them, only those rows go through the head."""
        b, c, _ = kept.shape
        few_rows = max(1, b // 4)

        def top(x: jax.Array) -> tuple[jax.Array, jax.Array]:
            logp = jax.nn.log_softmax(head(model, model.norm(x)), axis=-1)
            top_lp, top_ids = jax.lax.top_k(logp, LENS_TOP_K)
            return top_ids.astype(jnp.int32), top_lp

        def skip(_):
            zeros = jnp.zeros((b, c, LENS_TOP_K))
            return zeros.astype(jnp.int32), zeros

        def few(_):
            rows = jnp.argsort(~want, stable=True)[:few_rows]  # the rows that want it first
            ids, lp = top(kept[rows])
            zero_ids, zero_lp = skip(None)
            return zero_ids.at[rows].set(ids), zero_lp.at[rows].set(lp)

        wanted = jnp.sum(want, dtype=jnp.int32)
        branch = jnp.where(wanted == 0, 0, jnp.where(wanted <= few_rows, 1, 2))
        return jax.lax.switch(branch, [skip, few, lambda _: top(kept)], None)

    def prompt_logprobs(
        params: nnx.State, hidden: jax.Array, target_ids: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """hidden [B, T, E], target_ids [B, T] (the next prompt token at each position) ->
        (logprob of each target [B, T], top ids [B, T, K], top logprobs [B, T, K])."""
        model = nnx.merge(graphdef, params)
        return logprobs_of(model.logits(hidden), target_ids)

    def decode(
        params: nnx.State,
        kv: KVCache,
        batch: DecodeBatch,
        key: jax.Array,
        grammar: DeviceGrammarTables,
        *,
        num_steps: int,
    ) -> tuple[KVCache, DecodeOutput]:
        """Generate up to `num_steps` tokens per row without returning to the host.

        A row stops once it produced `remaining` tokens, a token in its `stop_ids`, or a complete
        string of its constraint; stopped rows write nothing more to the cache. Rows with a
        `grammar_state` draw under their automaton's mask and advance it per token. The loop ends
        early when every row has stopped. Draws use the same per-row keys as single steps, so k
        does not change a seeded result.
        """
        model = nnx.merge(graphdef, params)
        b = batch.token_ids.shape[0]
        page_size = kv.k.shape[3]
        t = batch.sampling
        vocab = model.config.vocab_size
        k_top = TOP_LOGPROBS_MAX
        init = DecodeCarry(
            step=jnp.int32(0),
            kv=kv,
            token_ids=batch.token_ids,
            state=_row_state(batch.rows, batch.start + 1, t, vocab),
            num_new=jnp.zeros(b, jnp.int32),
            stopped=batch.remaining <= 0,
            out_ids=jnp.zeros((b, num_steps), jnp.int32),
            out_logprobs=jnp.zeros((b, num_steps), jnp.float32),
            top_ids=jnp.zeros((b, num_steps, k_top), jnp.int32),
            top_logprobs=jnp.zeros((b, num_steps, k_top), jnp.float32),
            grammar_state=batch.grammar_state,
            nonfinite=jnp.zeros(b, bool),
            uncertainty=jnp.zeros((b, num_steps, NUM_MEASURES), jnp.float32),
            probe=_empty_probe(batch.probe, b, num_steps, model.config.hidden_size),
        )

        def cond(c: DecodeCarry) -> jax.Array:
            return (c.step < num_steps) & ~jnp.all(c.stopped)

        def body(c: DecodeCarry) -> DecodeCarry:
            i, state = c.step, c.state
            active = (~c.stopped).astype(jnp.int32)
            layout = TokenLayout.build(
                start=state.length - 1,  # the input token's position
                num_new=active,
                num_tokens=1,
                page_table=batch.page_table,
                page_size=page_size,
            )
            h, kv, kept = _forward(model, c.token_ids[:, None], c.kv, layout, batch.probe)
            bitmask, use_bitmask = mask_rows(grammar, c.grammar_state, t.bitmask, t.use_bitmask)
            s = sample(
                head(model, h[:, 0]),
                dataclasses.replace(t, bitmask=bitmask, use_bitmask=use_bitmask),
                state,
                key,
                want_logprobs=batch.rows.want_logprobs,
                hook=hook,
                kernels=model.config.kernels,
            )
            write = ~c.stopped
            bad = write & s.nonfinite  # a faulty row stops: the host fails its request
            num_new = c.num_new + active
            hit_stop = jnp.any(s.token_ids[:, None] == t.stop_ids, axis=-1)
            advanced = advance_rows(grammar, c.grammar_state, s.token_ids)
            grammar_state = jnp.where(write, advanced, c.grammar_state)
            done = is_complete(grammar, grammar_state)
            probe = c.probe
            if kept is not None:
                lens_ids, lens_lp = lens(model, kept[:, 0], batch.probe.lens & write)
                probe = ProbeOutput(
                    probe.captured.at[:, i].set(kept[:, 0]),
                    probe.final.at[:, i].set(h[:, 0].astype(jnp.float32)),
                    probe.lens_ids.at[:, i].set(lens_ids),
                    probe.lens_logprobs.at[:, i].set(lens_lp),
                )
            return DecodeCarry(
                step=i + 1,
                kv=kv,
                token_ids=jnp.where(write, s.token_ids, c.token_ids),
                state=advance(t, state, s, write),
                num_new=num_new,
                stopped=c.stopped | hit_stop | done | (num_new >= batch.remaining) | bad,
                out_ids=c.out_ids.at[:, i].set(jnp.where(write, s.token_ids, 0)),
                out_logprobs=c.out_logprobs.at[:, i].set(s.logprobs),
                top_ids=c.top_ids.at[:, i].set(s.top_ids),
                top_logprobs=c.top_logprobs.at[:, i].set(s.top_logprobs),
                grammar_state=grammar_state,
                nonfinite=c.nonfinite | bad,
                uncertainty=c.uncertainty.at[:, i].set(s.uncertainty),
                probe=probe,
            )

        c = jax.lax.while_loop(cond, body, init)
        out = DecodeOutput(
            c.out_ids,
            c.out_logprobs,
            c.top_ids,
            c.top_logprobs,
            c.num_new,
            c.state.mirostat_mu,
            c.nonfinite,
            c.uncertainty,
            c.probe,
        )
        return keep(c.kv), out

    def verify(
        params: nnx.State,
        kv: KVCache,
        batch: PrefillBatch,
        key: jax.Array,
        grammar: DeviceGrammarTables,
        grammar_state: jax.Array,
    ) -> tuple[KVCache, SampleOutput]:
        """Speculative decoding's check: each row is its last token (not yet cached, at
        `start`) followed by draft tokens, all written to the cache in one forward pass; the
        token after every position is drawn exactly as a decode step would draw it there (the
        position's key, the row's chain), so a draft is accepted when it equals the draw and
        the accepted tokens are the ones decoding alone would give. Returns the draws,
        `[B, T]` in every field. Rows need no token history (no penalties, DRY or bad words:
        their counts are not advanced between positions) and no Mirostat. A row with a
        constraint state on device (`grammar_state` [B], -1: none) draws each position under
        the mask of the state its tokens so far reach (a draft the constraint forbids is never
        drawn, so it is rejected there)."""
        model = nnx.merge(graphdef, params)
        t = batch.token_ids.shape[1]
        layout = TokenLayout.build(
            start=batch.start,
            num_new=batch.num_new,
            num_tokens=t,
            page_table=batch.page_table,
            page_size=kv.k.shape[3],
        )
        h, kv = model.hidden(batch.token_ids, kv, layout)
        logits = head(model, h)
        vocab = model.config.vocab_size
        draws, sampling = [], batch.sampling
        for i in range(t):
            rows = dataclasses.replace(batch.rows, num_generated=batch.rows.num_generated + i)
            state = _row_state(rows, batch.start + 1 + i, sampling, vocab)
            bitmask, use_bitmask = mask_rows(
                grammar, grammar_state, sampling.bitmask, sampling.use_bitmask
            )
            draws.append(
                sample(
                    logits[:, i],
                    dataclasses.replace(sampling, bitmask=bitmask, use_bitmask=use_bitmask),
                    state,
                    key,
                    want_logprobs=batch.rows.want_logprobs,
                    hook=hook,
                    kernels=model.config.kernels,
                )
            )
            if i + 1 < t:  # the state after the next input (a draft)
                grammar_state = advance_rows(grammar, grammar_state, batch.token_ids[:, i + 1])
        return keep(kv), jax.tree.map(lambda *x: jnp.stack(x, axis=1), *draws)

    traces = TraceCounter()
    mesh = getattr(kv_sharding, "mesh", None)

    def wrap(fn: Callable) -> Callable:
        """Counted, and traced under the mesh (the kernels split by it: `parallel.per_device`)."""

        @functools.wraps(fn)
        def under_mesh(*args, **kwargs):
            with tracing_mesh(mesh):
                return fn(*args, **kwargs)

        return traces.wrap(under_mesh)

    return Steps(
        prefill=jax.jit(wrap(prefill), donate_argnames=("kv",)),
        prompt_logprobs=jax.jit(wrap(prompt_logprobs)),
        decode=jax.jit(wrap(decode), static_argnames=("num_steps",), donate_argnames=("kv",)),
        pool=jax.jit(wrap(pool)),
        traces=traces,
        verify=jax.jit(wrap(verify), donate_argnames=("kv",)),
        copy_pages=jax.jit(wrap(lambda kv, pairs: keep(copy_pages(kv, pairs))), donate_argnums=0),
    )


def copy_pages(kv: KVCache, pairs: jax.Array) -> KVCache:
    """Copy each page `pairs[i, 0]` of every layer and head onto page `pairs[i, 1]` (K, V and
    their scales); padding pairs copy the null page onto itself."""
    src, dst = pairs[:, 0], pairs[:, 1]
    return jax.tree.map(lambda x: x.at[:, :, dst].set(x[:, :, src]), kv)


def _forward(model, token_ids, kv, layout, probe):
    """The model's hidden states, through its probe when the batch has one (a model without
    research hooks, such as `jaxserve.testing.mock_model`, needs none)."""
    if probe is None:
        h, kv = model.hidden(token_ids, kv, layout)
        return h, kv, None
    return model.probed(token_ids, kv, layout, probe)


def _empty_probe(probe: Probe | None, b: int, n: int, e: int) -> ProbeOutput | None:
    """The decode loop's probe buffers, or None when the batch keeps nothing."""
    if probe is None or probe.capture.shape[1] == 0:
        return None
    c = probe.capture.shape[1]
    return ProbeOutput(
        captured=jnp.zeros((b, n, c, e), jnp.float32),
        final=jnp.zeros((b, n, e), jnp.float32),
        lens_ids=jnp.zeros((b, n, c, LENS_TOP_K), jnp.int32),
        lens_logprobs=jnp.zeros((b, n, c, LENS_TOP_K), jnp.float32),
    )


def pool(sums: jax.Array, hidden: jax.Array, num_new: jax.Array) -> jax.Array:
    """`sums [B, E]` plus the sum of each row's first `num_new [B]` hidden states
    (`hidden [B, T, E]`, a prefill chunk's valid tokens), for mean-pooled embeddings."""
    valid = jnp.arange(hidden.shape[1], dtype=jnp.int32)[None, :] < num_new[:, None]  # [B, T]
    # `where`, not a product: a padding row's hidden states may not be finite.
    return sums + jnp.sum(jnp.where(valid[..., None], hidden, 0.0), axis=1)
