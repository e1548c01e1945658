"""Device sampling: greedy at temperature 0, draws that follow the softmax, per-row keys."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from jaxserve.sampler import sample

LOGITS = np.array([2.0, 1.0, 0.5, 0.0, -1.0, -3.0, -30.0, 1.5], np.float32)


def _draw(temperature: float, n: int, positions=None) -> np.ndarray:
    logits = jnp.tile(jnp.asarray(LOGITS)[None], (n, 1))
    return np.asarray(
        jax.jit(sample)(
            logits,
            temperature=jnp.full((n,), temperature, jnp.float32),
            seeds=jnp.arange(n, dtype=jnp.uint32),
            positions=jnp.zeros((n,), jnp.int32) if positions is None else positions,
            key=jax.random.key(0),
        )
    )


def test_temperature_zero_is_argmax():
    assert set(_draw(0.0, 16).tolist()) == {int(LOGITS.argmax())}


def test_draws_follow_the_softmax():
    n = 20000
    for temperature in (1.0, 0.6):
        counts = np.bincount(_draw(temperature, n), minlength=len(LOGITS))
        p = np.exp(LOGITS.astype(np.float64) / temperature)
        p /= p.sum()
        keep = p * n >= 5  # chi-square needs expected counts of at least 5
        observed = counts[keep].astype(np.float64)
        expected = p[keep] / p[keep].sum() * observed.sum()
        assert counts[~keep].sum() <= 5
        chi2 = stats.chisquare(observed, expected)
        assert chi2.pvalue > 1e-4, (temperature, counts, expected)


def test_a_row_draw_depends_on_its_seed_and_position_only():
    n = 64
    both = _draw(1.0, n)
    logits = jnp.tile(jnp.asarray(LOGITS)[None], (2, 1))
    for i in (0, 17, 63):
        alone = jax.jit(sample)(
            logits,
            temperature=jnp.ones((2,), jnp.float32),
            seeds=jnp.asarray([i, 1000], jnp.uint32),
            positions=jnp.zeros((2,), jnp.int32),
            key=jax.random.key(0),
        )
        assert int(alone[0]) == both[i]
    moved = _draw(1.0, n, positions=jnp.full((n,), 5, jnp.int32))
    assert not np.array_equal(moved, both)
