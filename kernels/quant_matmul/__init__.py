"""Activations x block-quantized weights (int8, int4): Pallas kernels and the XLA references."""

from jaxserve.kernels.quant_matmul.kernel import quant_matmul, quant_matmul_int4
from jaxserve.kernels.quant_matmul.reference import (
    BLOCK,
    dequantize,
    matmul_w8a8,
    matmul_w8a8_many,
    pack_int4,
    ref_quant_matmul,
    ref_quant_matmul_int4,
    unpack_int4,
)

__all__ = [
    "BLOCK",
    "dequantize",
    "matmul_w8a8",
    "matmul_w8a8_many",
    "pack_int4",
    "quant_matmul",
    "quant_matmul_int4",
    "ref_quant_matmul",
    "ref_quant_matmul_int4",
    "unpack_int4",
]
