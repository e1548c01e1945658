"""The grammar's token bitmask applied to logits: Pallas kernel and its pure-jnp reference."""

from jaxserve.kernels.bitmask.kernel import apply_bitmask
from jaxserve.kernels.bitmask.reference import ref_apply_bitmask, unpack_bits

__all__ = ["apply_bitmask", "ref_apply_bitmask", "unpack_bits"]
