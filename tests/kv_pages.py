"""KV budgets in pages, for tests that need a pool small enough to preempt."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxserve.loading.loader import open_model
from jaxserve.runtime.kv_cache import KVCache, kv_format_for


def kv_bytes(path: str | Path, pages: int, *, weights: str = "int8", page_size: int = 16) -> int:
    """`kv_cache_bytes` that holds `pages` pages of the model at `path` with `weights`."""
    config = open_model(path).config
    config = dataclasses.replace(config, kv_format=kv_format_for(weights, "reference"))
    return pages * KVCache.bytes_per_page(config, page_size)
