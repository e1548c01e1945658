"""Reference chunked-prefill attention (pure jnp): the paged reference with many queries per row."""

from __future__ import annotations

from jaxserve.kernels.paged_attention.reference import ref_attention

ref_prefill_attention = ref_attention

__all__ = ["ref_prefill_attention"]
