"""The Pallas kernels compiled for the local accelerator (no interpret mode) against their XLA
references, at SmolLM2's and Gemma 3's serving shapes: max abs error and ms per call.

    python experiments/accelerator_kernels.py

Run by `experiments/accelerator_check.sh` on a TPU or GPU host; on CPU it refuses (use the
interpret-mode tests there).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxserve.kernels import (
    apply_bitmask,
    paged_attention,
    prefill_attention,
    quant_matmul,
    ref_apply_bitmask,
    ref_paged_attention,
    ref_prefill_attention,
    ref_quant_matmul,
)

SHAPES = {"smollm2": (30, 9, 3, 64), "gemma3": (18, 4, 1, 256)}  # layers, heads, kv heads, dim


def timed(fn, *args) -> tuple[np.ndarray, float]:
    out = jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(10):
        out = jax.block_until_ready(fn(*args))
    return np.asarray(out, np.float32), (time.perf_counter() - start) / 10 * 1e3


def compare(name: str, kernel, reference, *args) -> None:
    got, ms = timed(jax.jit(kernel), *args)
    want, ref_ms = timed(jax.jit(reference), *args)
    finite = np.isfinite(want)
    err = float(np.max(np.abs(got[finite] - want[finite]))) if finite.any() else 0.0
    same_inf = bool(np.array_equal(np.isfinite(got), finite))
    print(f"{name}: max |kernel - reference| {err:.2e}, -inf kept {same_inf}, "
          f"kernel {ms:.3f} ms, XLA {ref_ms:.3f} ms", flush=True)  # fmt: skip


def main() -> None:
    if jax.default_backend() not in ("tpu", "gpu"):
        raise SystemExit(f"needs a TPU or GPU, found {jax.default_backend()}")
    print(jax.devices(), flush=True)
    rng = np.random.default_rng(0)
    pages, page_size, rows, per_row = 2048, 16, 32, 16
    for model, (layers, h, kh, d) in SHAPES.items():
        shape = (layers, kh, pages, page_size, d)
        k = jnp.asarray(rng.standard_normal(shape), jnp.bfloat16)
        v = jnp.asarray(rng.standard_normal(shape), jnp.bfloat16)
        table = jnp.asarray(
            rng.permutation(np.arange(1, pages))[: rows * per_row].reshape(rows, -1)
        )
        lengths = jnp.asarray(rng.integers(1, per_row * page_size, rows), jnp.int32)
        q = jnp.asarray(rng.standard_normal((rows, h, d)), jnp.float32)
        args = dict(layer=jnp.int32(3), page_table=table.astype(jnp.int32), lengths=lengths)
        compare(
            f"{model} paged_attention, {rows} rows",
            functools.partial(paged_attention, **args),
            functools.partial(ref_paged_attention, **args),
            q, k, v,
        )  # fmt: skip
        t = 256
        start = jnp.asarray([0, 17, 100, 0], jnp.int32)
        pargs = dict(
            layer=jnp.int32(3),
            page_table=table[:4].astype(jnp.int32),
            q_positions=start[:, None] + jnp.arange(t, dtype=jnp.int32)[None],
            kv_lens=start + t,
        )
        q = jnp.asarray(rng.standard_normal((4, t, h, d)), jnp.float32)
        compare(
            f"{model} prefill_attention, 4 x {t} tokens",
            functools.partial(prefill_attention, **pargs),
            functools.partial(ref_prefill_attention, **pargs),
            q, k, v,
        )  # fmt: skip
    for m in (1, 32, 128, 512):
        x = jnp.asarray(rng.standard_normal((m, 576)), jnp.float32)
        w = jnp.asarray(rng.integers(-127, 128, (576, 1536)), jnp.int8)
        s = jnp.asarray(rng.uniform(0.001, 0.02, (18, 1536)), jnp.float32)
        compare(f"quant_matmul {m} x 576 x 1536", quant_matmul, ref_quant_matmul, x, w, s)
    logits = jnp.asarray(rng.standard_normal((32, 49152)), jnp.float32)
    mask = jnp.asarray(rng.integers(-(2**31), 2**31 - 1, (32, 1536)), jnp.int32)
    compare("apply_bitmask 32 x 49152", apply_bitmask, ref_apply_bitmask, logits, mask)


if __name__ == "__main__":
    main()
