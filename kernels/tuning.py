"""Block sizes per kernel, keyed by shape.

UNTUNED: no TPU or GPU was available to measure these; they are the smallest sizes that keep
each program's tiles aligned (8 sublanes, 128 lanes) and run correctly in interpret mode. Re-tune
on the target accelerator before relying on them for speed.
"""

from __future__ import annotations

from collections.abc import Callable

# chunk length -> query rows per prefill program (largest entry that divides the chunk wins)
PREFILL_BLOCK_Q = (128, 64, 32, 16, 8)
# (rows, out features) tiles of the quantized matmul; K is walked in QUANT_BLOCK_K steps
QUANT_BLOCK_M = (128, 64, 32, 16, 8)
QUANT_BLOCK_N = (512, 256, 128)
QUANT_BLOCK_K = (512, 256, 128, 64, 32)
# vocabulary columns per bitmask program
BITMASK_BLOCK_V = (4096, 2048, 1024, 512, 256, 128, 64, 32)


def _largest_divisor(n: int, sizes: tuple[int, ...]) -> int:
    return next((s for s in sizes if n % s == 0), n)


def prefill_block_q(chunk: int, fits: Callable[[int], bool] = lambda _: True) -> int:
    """The largest query block that divides the chunk and whose program `fits` its budget."""
    sizes = tuple(s for s in PREFILL_BLOCK_Q if fits(s)) or PREFILL_BLOCK_Q[-1:]
    return _largest_divisor(chunk, sizes)


def quant_blocks(m: int, n: int, k: int, *, target: str = "interpret") -> tuple[int, int, int]:
    """(block_m, block_n, block_k) for `m` rows. Interpret: divisors of the shape. TPU: rows padded
    to 8 sublanes, K walked in steps whose scale rows fill sublanes (256) or whole. GPU (Triton):
    power-of-two tiles, at least 16 rows (its smallest dot)."""
    if target == "interpret":
        return (
            _largest_divisor(m, QUANT_BLOCK_M),
            _largest_divisor(n, QUANT_BLOCK_N),
            _largest_divisor(k, QUANT_BLOCK_K),
        )
    if target == "tpu":
        bm = min(QUANT_BLOCK_M[0], -(-m // 8) * 8)
        return bm, _largest_divisor(n, QUANT_BLOCK_N), _largest_divisor(k, (512, 256))
    bm = min(64, max(16, 1 << (m - 1).bit_length()))
    return bm, _largest_divisor(n, (128, 64, 32)), _largest_divisor(k, (64, 32))


def bitmask_block_v(vocab: int) -> int:
    return _largest_divisor(vocab, BITMASK_BLOCK_V)


# TPU attention: keys per streamed block (pages of one row copied into VMEM together)
TPU_KEYS_PER_BLOCK = 128


def tpu_pages_per_block(page_size: int, pages_per_row: int) -> int:
    return max(1, min(TPU_KEYS_PER_BLOCK // page_size, pages_per_row))


# TPU prefill: queries per program (times the query heads of a kv head, rows of one matmul)
TPU_BLOCK_Q = (128, 64, 32, 16, 8)


def tpu_block_q(chunk: int) -> int:
    return _largest_divisor(chunk, TPU_BLOCK_Q)
