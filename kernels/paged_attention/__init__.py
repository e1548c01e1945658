"""Decode attention over the paged KV cache: Pallas kernel and its pure-jnp reference."""

from jaxserve.kernels.paged_attention.kernel import paged_attention
from jaxserve.kernels.paged_attention.reference import ref_attention, ref_paged_attention

__all__ = ["paged_attention", "ref_attention", "ref_paged_attention"]
