"""Which XLA formulation of block-quantized matmuls is fastest on this CPU?

    .venv/bin/python experiments/bench_quant_matmul.py [--rows 1 2 16 64] \
        [--write experiments/RESULTS.md]

Every variant runs SmolLM2-sized projections (576 -> 1536 and 1536 -> 576, 30 layers stacked and
walked by `lax.scan`, as the model does) inside one jitted function, so weight reads dominate as
in decode. Variants:

- f32: dequantized weights, one f32 dot (the exact mode).
- int8 dequant: int8 `[in, out]` + per-32 scales, dequantized to f32 inside the scan, then a dot
  (the reference of the Pallas kernel, and the model's path above 64 rows).
- int8 W8A8: activations quantized per 32-block to int8, int8 x int8 dots accumulated in int32
  per block over `[K, 32, out]`, then scaled (the model's decode path, as llama.cpp's Q8_0 dots).
- int4 dequant: two values per byte `[in / 2, out]`, unpacked, dequantized, f32 dot.
- int4 W4A8: unpacked to int8, then the W8A8 path.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxserve.kernels.quant_matmul import (
    dequantize,
    matmul_w8a8,
    pack_int4,
    unpack_int4,
)

LAYERS, HIDDEN, FFN = 30, 576, 1536


def _weights(rng: np.random.Generator, n_in: int, n_out: int) -> dict[str, jax.Array]:
    shape = (LAYERS, n_in, n_out)
    q8 = rng.integers(-127, 128, size=shape).astype(np.int8)
    q4 = rng.integers(-8, 8, size=shape).astype(np.int32)
    scales = rng.uniform(0.001, 0.02, size=(LAYERS, n_in // 32, n_out)).astype(np.float32)
    blocks = q8.reshape(LAYERS, n_in // 32, 32, n_out).astype(np.float32)
    f32 = (blocks * scales[:, :, None, :]).reshape(shape)
    return {
        "f32": jnp.asarray(f32),
        "q8": jnp.asarray(q8),
        "q4": jax.vmap(pack_int4)(jnp.asarray(q4)),
        "scales": jnp.asarray(scales),
    }


def _variant(name: str):
    def matmul(x, w):
        if name == "f32":
            return x @ w["f32"]
        if name == "int8 dequant":
            return x @ dequantize(w["q8"], w["scales"])
        if name == "int8 W8A8":
            return matmul_w8a8(x, w["q8"], w["scales"])
        if name == "int4 dequant":
            return x @ dequantize(unpack_int4(w["q4"]), w["scales"])
        if name == "int4 W4A8":
            return matmul_w8a8(x, unpack_int4(w["q4"]), w["scales"])
        raise ValueError(name)

    @jax.jit
    def run(x, up, down):
        def layer(x, ws):
            w_up, w_down = ws
            return x + matmul(jnp.tanh(matmul(x, w_up)), w_down) * 0.01, None

        return jax.lax.scan(layer, x, (up, down))[0]

    return run


VARIANTS = ("f32", "int8 dequant", "int8 W8A8", "int4 dequant", "int4 W4A8")


def _time(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 16, 64])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    up, down = _weights(rng, HIDDEN, FFN), _weights(rng, FFN, HIDDEN)
    results: dict[str, dict[int, float]] = {name: {} for name in VARIANTS}
    for rows in args.rows:
        x = jnp.asarray(rng.standard_normal((rows, HIDDEN)), jnp.float32)
        for name in VARIANTS:
            results[name][rows] = _time(_variant(name), x, up, down, repeats=args.repeats)
    head = " | ".join(f"{r} rows (ms)" for r in args.rows)
    lines = [
        f"### Quantized matmul formulations, XLA CPU, {time.strftime('%Y-%m-%d')}, "
        f"{platform.machine()} ({LAYERS} scanned layers of {HIDDEN}x{FFN} + {FFN}x{HIDDEN})",
        "",
        f"| variant | weight bytes | {head} |",
        "|---|---:|" + "---:|" * len(args.rows),
    ]
    sizes = {"f32": 4, "int8 dequant": 1.125, "int8 W8A8": 1.125}
    sizes |= {"int4 dequant": 0.625, "int4 W4A8": 0.625}
    for name in VARIANTS:
        cells = " | ".join(f"{results[name][r] * 1e3:.2f}" for r in args.rows)
        lines.append(f"| {name} | {sizes[name]} B/weight | {cells} |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        with args.write.open("a", encoding="utf-8") as f:
            f.write("\n" + table + "\n")


if __name__ == "__main__":
    main()
