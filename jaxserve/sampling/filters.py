"""Truncation and temperature stages: `logits [B, V] -> logits`, removed tokens set to -inf.

Each keeps at least the most likely token, so a row never loses its whole distribution. The
caller selects the result only for rows with the stage on.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxserve.sampling.select import kth_largest, mass_threshold
from jaxserve.sampling.tensors import SamplingTensors

NEG_INF = float("-inf")
MIN_TEMPERATURE = 1e-2


def _keep(logits: jax.Array, keep: jax.Array) -> jax.Array:
    return jnp.where(keep, logits, NEG_INF)


def _top1(logits: jax.Array) -> jax.Array:
    return logits >= jnp.max(logits, axis=-1, keepdims=True)


def top_k(logits: jax.Array, t: SamplingTensors, key: jax.Array) -> jax.Array:
    """Keep the k largest logits (ties with the k-th are kept)."""
    return _keep(logits, logits >= kth_largest(logits, t.top_k)[:, None])


def top_p(logits: jax.Array, t: SamplingTensors, key: jax.Array) -> jax.Array:
    """Keep the smallest most-likely set whose probability reaches top_p."""
    probs = jax.nn.softmax(logits, axis=-1)
    threshold = mass_threshold(logits, probs, t.top_p)
    return _keep(logits, (logits >= threshold[:, None]) | _top1(logits))


def min_p(logits: jax.Array, t: SamplingTensors, key: jax.Array) -> jax.Array:
    """Keep tokens with probability >= min_p * the largest probability."""
    floor = jnp.max(logits, axis=-1) + jnp.log(t.min_p)
    return _keep(logits, logits >= floor[:, None])


def typical_p(logits: jax.Array, t: SamplingTensors, key: jax.Array) -> jax.Array:
    """Locally typical sampling: keep the tokens whose surprise is closest to the entropy,
    the smallest such set with probability >= typical_p."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    probs = jnp.exp(logp)
    finite = jnp.isfinite(logp)
    entropy = -jnp.sum(jnp.where(finite, probs * logp, 0.0), axis=-1, keepdims=True)
    closeness = jnp.where(finite, -jnp.abs(-logp - entropy), NEG_INF)
    threshold = mass_threshold(closeness, probs, t.typical_p)
    return _keep(logits, (closeness >= threshold[:, None]) & finite)


def top_n_sigma(logits: jax.Array, t: SamplingTensors, key: jax.Array) -> jax.Array:
    """Keep logits within n standard deviations (over the finite logits) of the largest."""
    finite = jnp.isfinite(logits)
    count = jnp.maximum(jnp.sum(finite, axis=-1, keepdims=True), 1).astype(logits.dtype)
    mean = jnp.sum(jnp.where(finite, logits, 0.0), axis=-1, keepdims=True) / count
    var = jnp.sum(jnp.where(finite, (logits - mean) ** 2, 0.0), axis=-1, keepdims=True) / count
    top = jnp.max(logits, axis=-1, keepdims=True)
    return _keep(logits, logits >= top - t.top_n_sigma[:, None] * jnp.sqrt(var))


def xtc(logits: jax.Array, t: SamplingTensors, key: jax.Array) -> jax.Array:
    """Exclude top choices: with probability xtc_probability (one uniform per row from `key`),
    remove every token with probability >= xtc_threshold except the least likely of them
    (nothing happens when fewer than two tokens reach the threshold)."""
    u = jax.vmap(lambda k: jax.random.uniform(k, ()))(key)
    floor = jax.nn.logsumexp(logits, axis=-1, keepdims=True) + jnp.log(t.xtc_threshold)[:, None]
    above = (logits >= floor) & jnp.isfinite(logits)
    least = jnp.min(jnp.where(above, logits, jnp.inf), axis=-1, keepdims=True)
    fire = (u < t.xtc_probability) & (jnp.sum(above, axis=-1) >= 2)
    return _keep(logits, ~(fire[:, None] & above & (logits > least)))


def temperature(logits: jax.Array, t: SamplingTensors, key: jax.Array) -> jax.Array:
    """Divide by the temperature; with dynatemp_range > 0 the temperature is
    min + (max - min) * (entropy / log(candidates)) ** exponent over [t - range, t + range]
    (llama.cpp's entropy-based dynamic temperature). Rows at temperature 0 are left as they
    are: the draw takes their argmax."""
    lo = jnp.maximum(t.temperature - t.dynatemp_range, 0.0)
    hi = t.temperature + t.dynatemp_range
    logp = jax.nn.log_softmax(logits, axis=-1)
    finite = jnp.isfinite(logp)
    entropy = -jnp.sum(jnp.where(finite, jnp.exp(logp) * logp, 0.0), axis=-1)
    candidates = jnp.sum(finite, axis=-1)
    max_entropy = jnp.log(jnp.maximum(candidates, 2).astype(jnp.float32))
    normalized = jnp.clip(entropy / max_entropy, 0.0, 1.0)
    dynamic = lo + (hi - lo) * normalized**t.dynatemp_exponent
    temp = jnp.where(t.dynatemp_range > 0, dynamic, t.temperature)
    # A (dynamic) temperature near 0 is greedy: dividing by it would overflow.
    cold = (temp < MIN_TEMPERATURE) & (t.dynatemp_range > 0)
    scaled = logits / jnp.maximum(temp, MIN_TEMPERATURE)[:, None]
    scaled = jnp.where(cold[:, None], _keep(logits, _top1(logits)), scaled)
    return jnp.where((temp > 0)[:, None] | cold[:, None], scaled, logits)
