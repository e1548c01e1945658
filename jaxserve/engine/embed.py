"""Embeddings between engine steps (host only): pages borrowed from the pool, freed at once."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from jaxserve.engine.device import Runner
from jaxserve.engine.page_allocator import PageAllocator
from jaxserve.engine.rows import EmbedRow
from jaxserve.errors import OutOfPagesError


def embed(
    inputs: Sequence[Sequence[int]],
    *,
    runner: Runner,
    pages: PageAllocator,
    max_rows: int,
    chunk: int,
) -> np.ndarray:
    """Embeddings `[len(inputs), hidden]` (float32) of checked inputs: each input's final hidden
    states (after the final norm) averaged over its tokens, then L2-normalized.

    Each input's K/V is written to pages of its own, taken from the pool and freed before this
    returns (never entered in the prefix cache), so running requests are untouched. Raises
    `OutOfPagesError`, having computed nothing, when the free pages cannot hold the longest
    input; the caller retries once running requests have finished.
    """
    unique = list(dict.fromkeys(tuple(x) for x in inputs))  # equal inputs: one row
    ids = [list(x) for x in unique]
    need = [math.ceil(len(x) / pages.page_size) for x in ids]
    if max(need) > pages.num_free:
        raise OutOfPagesError(f"need {max(need)} KV pages, {pages.num_free} free")
    out = np.zeros((len(ids), runner.config.hidden_size), np.float32)
    begin = 0
    while begin < len(ids):  # as many inputs at once as the free pages hold
        end, total = begin, 0
        while end < len(ids) and total + need[end] <= pages.num_free:
            total += need[end]
            end += 1
        rows = [
            EmbedRow(x, pages.allocate(n))
            for x, n in zip(ids[begin:end], need[begin:end], strict=True)
        ]
        try:
            out[begin:end] = runner.embed(rows, max_rows=max_rows, chunk=chunk)
        finally:
            for row in rows:
                pages.free(row.pages)
        begin = end
    where = {x: i for i, x in enumerate(unique)}
    return out[[where[tuple(x)] for x in inputs]]
