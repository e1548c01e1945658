"""Pallas kernels, each beside a pure-jnp `ref_` twin (imports jax only, never the engine).

`mode`: "reference" runs the pure-jnp twins (XLA; the CPU default), "pallas" the kernels
compiled for the backend (TPU/GPU), "interpret" the kernels in Pallas interpret mode (CPU tests).
`resolve_mode("auto")` picks "pallas" on TPU/GPU and "reference" elsewhere; `resolve_weights`
picks the weight format the same way (bf16 on accelerators, int8 on CPU).
"""

from __future__ import annotations

import logging
from typing import Literal

import jax

from jaxserve.kernels.bitmask import apply_bitmask, ref_apply_bitmask
from jaxserve.kernels.paged_attention import paged_attention, ref_paged_attention
from jaxserve.kernels.prefill_attention import prefill_attention, ref_prefill_attention
from jaxserve.kernels.quant_matmul import (
    quant_matmul,
    quant_matmul_int4,
    ref_quant_matmul,
    ref_quant_matmul_int4,
)

KernelMode = Literal["reference", "pallas", "interpret"]
MODES = ("auto", "reference", "pallas", "interpret")
# Platforms whose lowering of every kernel above is tested (tests/test_lowering.py: each kernel
# and the whole prefill and decode steps export for them with `jax.export`).
LOWERED = ("tpu", "gpu")
WEIGHTS = ("auto", "int8", "bf16", "f32")

log = logging.getLogger("jaxserve.kernels")


def resolve_mode(mode: str, backend: str | None = None) -> KernelMode:
    """ "auto" -> "pallas" where the kernels' lowering is tested for the backend (TPU, GPU), else
    "reference" (one log line says so); "pallas" on another backend is refused."""
    if mode not in MODES:
        raise ValueError(f"kernels must be one of {', '.join(MODES)}, got {mode!r}")
    backend = backend or jax.default_backend()
    if mode == "auto":
        if backend in LOWERED:
            return "pallas"
        log.info("kernels: the XLA reference path on %s (Pallas kernels lower for %s)", backend,
                 " and ".join(LOWERED))  # fmt: skip
        return "reference"
    if mode == "pallas" and backend not in LOWERED:
        raise ValueError(
            f"kernels='pallas' runs on {' or '.join(LOWERED)}, not {backend}; "
            "'interpret' runs the kernels on CPU"
        )
    return mode  # type: ignore[return-value]


def resolve_weights(weights: str, backend: str | None = None) -> str:
    """ "auto" -> "bf16" on TPU/GPU, "int8" (exact int32 dots, batch-invariant) on CPU."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    if weights != "auto":
        return weights
    return "bf16" if (backend or jax.default_backend()) in LOWERED else "int8"


__all__ = [
    "KernelMode",
    "apply_bitmask",
    "paged_attention",
    "prefill_attention",
    "quant_matmul",
    "quant_matmul_int4",
    "ref_apply_bitmask",
    "ref_paged_attention",
    "ref_prefill_attention",
    "ref_quant_matmul",
    "ref_quant_matmul_int4",
    "resolve_mode",
    "resolve_weights",
]
