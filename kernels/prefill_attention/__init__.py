"""Chunked-prefill attention over the paged KV cache: Pallas kernel and its pure-jnp reference."""

from jaxserve.kernels.prefill_attention.kernel import prefill_attention
from jaxserve.kernels.prefill_attention.reference import ref_prefill_attention

__all__ = ["prefill_attention", "ref_prefill_attention"]
