"""TPU attention over the paged cache: pages stay in HBM and stream through VMEM.

The cache (`[L, KH, N, S, D]`, `memory_space=pl.ANY`) is never a block. A program copies the
pages of one key block (`pages_per_block` pages of its row, looked up in the page table, which
arrives in SMEM as scalar prefetch) into a VMEM scratch buffer with async copies, two buffers
deep: block i + 1 is in flight while block i is multiplied. Scores use an online softmax whose
masked keys get a large negative score and weight 0, so a block with no visible key leaves the
running state unchanged and stale page contents never reach the output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

MASKED = -1e30  # score of an invisible key (finite: exp(MASKED - m) is 0, never NaN)

Carry = tuple[jax.Array, jax.Array, jax.Array]  # running max [Q, 1], sum [Q, 1], acc [Q, D]


def page_scratch(pages_per_block: int, page_size: int, head_dim: int, dtype) -> list:
    """Scratch shapes of `PageStream`: K and V double buffers and their DMA semaphores."""
    buf = pltpu.VMEM((2, pages_per_block, page_size, head_dim), dtype)
    return [buf, buf, pltpu.SemaphoreType.DMA((2,))]


def vmem_lanes(width: int) -> int:
    """A last dimension as VMEM holds it: padded to whole 128-lane tiles."""
    return -(-width // 128) * 128


def scratch_bytes(pages_per_block: int, page_size: int, head_dim: int, itemsize: int) -> int:
    """VMEM of the double buffers."""
    return 2 * 2 * pages_per_block * page_size * vmem_lanes(head_dim) * itemsize


@dataclass(frozen=True)
class PageStream:
    """The K/V pages of one (row, kv head) at one layer, a key block at a time."""

    k_hbm: object
    v_hbm: object
    k_buf: object
    v_buf: object
    sems: object
    table_ref: object  # [B * P] int32 in SMEM
    row: jax.Array
    pages_per_row: int
    layer: jax.Array
    kv_head: jax.Array

    @property
    def pages_per_block(self) -> int:
        return self.k_buf.shape[1]

    def _copies(self, block: jax.Array, slot: jax.Array) -> list:
        copies = []
        for i in range(self.pages_per_block):
            p = jnp.minimum(block * self.pages_per_block + i, self.pages_per_row - 1)
            page = self.table_ref[self.row * self.pages_per_row + p]
            for hbm, buf in ((self.k_hbm, self.k_buf), (self.v_hbm, self.v_buf)):
                src = hbm.at[self.layer, self.kv_head, page]
                copies.append(pltpu.make_async_copy(src, buf.at[slot, i], self.sems.at[slot]))
        return copies

    def start(self, block: jax.Array, slot: jax.Array) -> None:
        for copy in self._copies(block, slot):
            copy.start()

    def wait(self, block: jax.Array, slot: jax.Array) -> tuple[jax.Array, jax.Array]:
        for copy in self._copies(block, slot):
            copy.wait()
        n, s, d = self.k_buf.shape[1:]
        k = self.k_buf[slot].reshape(n * s, d).astype(jnp.float32)
        v = self.v_buf[slot].reshape(n * s, d).astype(jnp.float32)
        return k, v


def stream_blocks(
    pages: PageStream,
    first: jax.Array,
    last: jax.Array,
    step: Callable[[Carry, jax.Array, jax.Array, jax.Array], Carry],
    init: Carry,
) -> Carry:
    """`carry = step(carry, k, v, block)` for key blocks [first, last), copies overlapped."""

    @pl.when(first < last)
    def _():
        pages.start(first, jnp.int32(0))

    def body(block, carry):
        slot = (block - first) % 2

        @pl.when(block + 1 < last)
        def _():
            pages.start(block + 1, 1 - slot)

        k, v = pages.wait(block, slot)
        return step(carry, k, v, block)

    return jax.lax.fori_loop(first, last, body, init)


def softmax_step(
    carry: Carry,
    q: jax.Array,
    q_pos: jax.Array,
    k: jax.Array,
    v: jax.Array,
    key_pos: jax.Array,
    *,
    kv_len: jax.Array,
    window: jax.Array,
    softcap: float,
) -> Carry:
    """One key block of the online softmax. q [Q, D] (scaled), q_pos [Q, 1], k/v [K, D],
    key_pos [1, K]: key j is visible to a query at p when j <= p, j < kv_len, p - j < window."""
    m, total, acc = carry
    s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    if softcap > 0:
        s = jnp.float32(softcap) * jnp.tanh(s / jnp.float32(softcap))
    visible = (key_pos <= q_pos) & (key_pos < kv_len) & (key_pos > q_pos - window)
    s = jnp.where(visible, s, MASKED)
    m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
    alpha = jnp.exp(m - m_new)
    p = jnp.where(visible, jnp.exp(s - m_new), 0.0)
    total = alpha * total + jnp.sum(p, axis=1, keepdims=True)
    acc = alpha * acc + jnp.dot(p, v, preferred_element_type=jnp.float32)
    return m_new, total, acc


def initial(num_q: int, d: int) -> Carry:
    return (
        jnp.full((num_q, 1), MASKED, jnp.float32),
        jnp.zeros((num_q, 1), jnp.float32),
        jnp.zeros((num_q, d), jnp.float32),
    )


def finish(carry: Carry) -> jax.Array:
    _, total, acc = carry
    return acc / jnp.where(total == 0.0, 1.0, total)
