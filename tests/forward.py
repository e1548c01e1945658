"""One full prefill of a model over scattered pages, for logits-level comparisons."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxserve.runtime.kv_cache import KVCache, TokenLayout


def full_logits(model, config, token_ids: list[int], page_size: int = 4, probe=None) -> np.ndarray:
    """One prefill of `token_ids` over randomly placed pages; logits [T, V] (through the
    model's per-row hooks when `probe` is given: one row)."""
    n = len(token_ids)
    num_pages = -(-n // page_size)
    pages = np.random.default_rng(0).permutation(np.arange(1, 2 * num_pages + 1))[:num_pages]
    kv = KVCache.zeros(config, num_pages=2 * num_pages + 1, page_size=page_size)

    @jax.jit
    def run(model, kv, token_ids, page_table, probe):
        layout = TokenLayout.build(
            start=jnp.zeros((1,), jnp.int32),
            num_new=jnp.full((1,), n, jnp.int32),
            num_tokens=n,
            page_table=page_table,
            page_size=page_size,
        )
        h, _, _ = model.probed(token_ids, kv, layout, probe)
        return model.logits(h[0])

    ids = jnp.asarray([token_ids], jnp.int32)
    return np.asarray(run(model, kv, ids, jnp.asarray(pages[None], jnp.int32), probe))
