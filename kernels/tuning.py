"""Block sizes per kernel, keyed by shape.

UNTUNED: no TPU or GPU was available to measure these; they are the smallest sizes that keep
each program's tiles aligned (8 sublanes, 128 lanes) and run correctly in interpret mode. Re-tune
on the target accelerator before relying on them for speed.
"""

from __future__ import annotations

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


def prefill_block_q(chunk: int) -> int:
    return _largest_divisor(chunk, PREFILL_BLOCK_Q)


def quant_blocks(m: int, n: int, k: int) -> tuple[int, int, int]:
    return (
        _largest_divisor(m, QUANT_BLOCK_M),
        _largest_divisor(n, QUANT_BLOCK_N),
        _largest_divisor(k, QUANT_BLOCK_K),
    )


def bitmask_block_v(vocab: int) -> int:
    return _largest_divisor(vocab, BITMASK_BLOCK_V)
