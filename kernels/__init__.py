"""Pallas kernels, each beside a pure-jnp `ref_` twin (imports jax only, never the engine).

`mode`: "reference" runs the pure-jnp twins (XLA; the CPU default), "pallas" the kernels
compiled for the backend (TPU/GPU), "interpret" the kernels in Pallas interpret mode (CPU tests).
`resolve_mode("auto")` picks "pallas" on TPU/GPU and "reference" elsewhere.
"""

from __future__ import annotations

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


def resolve_mode(mode: str) -> KernelMode:
    """ "auto" -> "pallas" on TPU/GPU, "reference" on CPU; other modes are returned checked."""
    if mode not in MODES:
        raise ValueError(f"kernels must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "auto":
        return "pallas" if jax.default_backend() in ("tpu", "gpu") else "reference"
    return mode  # type: ignore[return-value]


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
]
