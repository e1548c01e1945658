"""The host KV page allocator: ref counts, LRU eviction, chained prefix hashing, copy-on-write."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from jaxserve.engine.page_allocator import PageAllocator
from jaxserve.errors import OutOfPagesError

PS = 4  # page size in the unit tests


def _snapshot(alloc: PageAllocator) -> tuple:
    return (
        list(alloc._free),
        list(alloc._evictable),
        list(alloc._refcount),
        dict(alloc._page_hash),
        dict(alloc._cached),
        dict(alloc._page_key),
        alloc.num_used,
    )


def _cached_prompt(alloc: PageAllocator, token_ids: list[int]) -> list[int]:
    """Allocate, register and free a request, leaving its full pages evictable in the cache."""
    pages = alloc.allocate(-(-len(token_ids) // alloc.page_size))
    alloc.register_full_pages(pages, token_ids)
    alloc.free(pages)
    return pages


def test_allocate_free_round_trip():
    alloc = PageAllocator(8, PS)
    assert (alloc.num_free, alloc.num_used) == (7, 0)
    pages = alloc.allocate(3)
    assert len(set(pages)) == 3 and all(alloc.refcount(p) == 1 for p in pages)
    assert (alloc.num_free, alloc.num_used) == (4, 3)
    alloc.free(pages)
    assert (alloc.num_free, alloc.num_used) == (7, 0)
    assert sorted(alloc.allocate(7)) == list(range(1, 8))


def test_page_zero_is_never_returned_or_freed():
    alloc = PageAllocator(4, PS)
    for _ in range(3):
        pages = alloc.allocate(3)
        assert 0 not in pages
        alloc.free(pages)
    with pytest.raises(ValueError, match="null page"):
        alloc.free([0])
    with pytest.raises(ValueError):
        alloc.share([0])


def test_freeing_an_unreferenced_page_raises_and_changes_nothing():
    alloc = PageAllocator(6, PS)
    (page,) = alloc.allocate(1)
    before = _snapshot(alloc)
    with pytest.raises(ValueError):
        alloc.free([page, page])  # one reference, freed twice
    with pytest.raises(ValueError):
        alloc.free([page + 1])
    assert _snapshot(alloc) == before


def test_out_of_pages_leaves_state_unchanged():
    alloc = PageAllocator(5, PS)
    held = alloc.allocate(2)
    _cached_prompt(alloc, list(range(PS)))
    before = _snapshot(alloc)
    with pytest.raises(OutOfPagesError):
        alloc.allocate(alloc.num_free + 1)
    assert _snapshot(alloc) == before
    alloc.free(held)


def test_prefix_match_of_zero_one_and_several_pages():
    alloc = PageAllocator(16, PS)
    tokens = list(range(100, 100 + 3 * PS))
    pages = _cached_prompt(alloc, tokens)
    assert alloc.match_prefix([7] * (3 * PS)) == []
    assert alloc.match_prefix(tokens[:PS] + [7] * PS) == pages[:1]
    assert alloc.match_prefix(tokens + [1, 2]) == pages
    assert [alloc.refcount(p) for p in pages] == [2, 1, 1]
    assert alloc.stats.num_queries == 3
    assert alloc.stats.query_tokens == 3 * PS + 2 * PS + (3 * PS + 2)
    assert alloc.stats.hit_tokens == 4 * PS
    assert alloc.stats.hit_rate == pytest.approx(4 * PS / alloc.stats.query_tokens)


def test_partial_last_page_is_never_matched_or_registered():
    alloc = PageAllocator(8, PS)
    tokens = list(range(2 * PS - 1))  # one full page and a partial one
    pages = _cached_prompt(alloc, tokens)
    assert alloc.num_cached == 1
    assert alloc.match_prefix(tokens) == pages[:1]
    assert alloc.match_prefix(tokens[: PS - 1]) == []


def test_chain_hash_stops_at_the_first_different_page():
    alloc = PageAllocator(16, PS)
    a, b, c, d = ([i] * PS for i in range(1, 5))
    pages = _cached_prompt(alloc, a + b + c + d)
    # Pages 1, 3 and 4 match token for token, but page 3's parent differs, so the chain stops.
    assert alloc.match_prefix(a + b + [9] * PS + d) == pages[:2]
    assert alloc.match_prefix(b + c + d) == []


def test_duplicate_content_keeps_the_first_cached_page():
    alloc = PageAllocator(8, PS)
    tokens = list(range(2 * PS))
    first = alloc.allocate(2)
    second = alloc.allocate(2)
    alloc.register_full_pages(first, tokens)
    alloc.register_full_pages(second, tokens)
    alloc.register_full_pages(second, tokens)  # idempotent
    assert alloc.num_cached == 2
    alloc.free(second)  # duplicates go straight back to the free list
    assert alloc.num_free == 5 and len(alloc._evictable) == 0
    assert alloc.match_prefix(tokens) == first


def test_eviction_is_lru_among_unreferenced_cached_pages():
    alloc = PageAllocator(5, PS)  # 4 usable pages
    old, new, busy = ([i] * PS for i in (1, 2, 3))
    (p_old,) = _cached_prompt(alloc, old)
    (p_new,) = _cached_prompt(alloc, new)
    (p_busy,) = alloc.allocate(1)
    alloc.register_full_pages([p_busy], busy)  # cached but referenced: never evicted
    assert (alloc.num_free, alloc.num_cached) == (3, 3)
    (fresh,) = alloc.allocate(1)  # the one truly free page goes first
    assert alloc.num_cached == 3
    (evicted,) = alloc.allocate(1)
    assert evicted == p_old and alloc.match_prefix(old) == []
    assert alloc.match_prefix(new) == [p_new]
    assert alloc.match_prefix(busy) == [p_busy] and alloc.refcount(p_busy) == 2
    with pytest.raises(OutOfPagesError):
        alloc.allocate(1)
    alloc.free([fresh, evicted])


def test_match_prefix_revives_evictable_pages():
    alloc = PageAllocator(8, PS)
    tokens = list(range(3 * PS))
    pages = _cached_prompt(alloc, tokens)
    assert (alloc.num_free, alloc.num_used) == (7, 0)
    assert alloc.match_prefix(tokens) == pages
    assert (alloc.num_free, alloc.num_used) == (4, 3)
    assert len(alloc.allocate(4)) == 4  # the revived pages are not evicted
    assert [alloc.refcount(p) for p in pages] == [1, 1, 1]


def test_copy_on_write():
    alloc = PageAllocator(8, PS)
    tokens = list(range(2 * PS))
    pages = alloc.allocate(2)
    alloc.register_full_pages(pages, tokens)
    alloc.share(pages)  # a fork
    fresh = alloc.copy_on_write(pages[1])
    assert fresh is not None and fresh not in pages
    assert (alloc.refcount(pages[1]), alloc.refcount(fresh)) == (1, 1)
    assert alloc.match_prefix(tokens) == pages  # the shared original stays cached
    alloc.free(pages)
    # The sole holder writes in place; the page leaves the cache since its content will change.
    assert alloc.copy_on_write(pages[1]) is None
    assert alloc.refcount(pages[1]) == 1
    assert alloc.match_prefix(tokens) == pages[:1]
    alloc.register_full_pages(pages, tokens[:PS] + [9] * PS)  # re-registered with new content
    assert alloc.match_prefix(tokens[:PS] + [9] * PS) == pages
    with pytest.raises(ValueError):
        alloc.copy_on_write(0)


def test_copy_on_write_out_of_pages_changes_nothing():
    alloc = PageAllocator(3, PS)
    pages = alloc.allocate(2)
    alloc.share(pages[:1])
    before = _snapshot(alloc)
    with pytest.raises(OutOfPagesError):
        alloc.copy_on_write(pages[0])
    assert _snapshot(alloc) == before


def test_disabled_prefix_caching_never_matches():
    alloc = PageAllocator(8, PS, enable_prefix_caching=False)
    tokens = list(range(2 * PS))
    pages = alloc.allocate(2)
    alloc.register_full_pages(pages, tokens)
    assert alloc.match_prefix(tokens) == []
    alloc.free(pages)
    assert alloc.num_cached == 0 and len(alloc._free) == 7


# --- stateful: random allocator traffic against a model of holders and page contents ---

SPS = 2  # page size in the state machine: with 2 token values, prefixes collide often
NUM_PAGES = 8
tokens_st = st.lists(st.integers(0, 1), max_size=4 * SPS)


@dataclass
class Seq:
    pages: list[int]
    token_ids: list[int]


class AllocatorMachine(RuleBasedStateMachine):
    """Holders are sequences of pages; `written[page]` is the token prefix its K/V encode."""

    def __init__(self) -> None:
        super().__init__()
        self.alloc = PageAllocator(NUM_PAGES, SPS)
        self.seqs: list[Seq] = []
        self.written: dict[int, tuple[int, ...]] = {}
        self.history: list[tuple[int, ...]] = []  # every token list ever registered

    def _check_hit(self, pages: list[int], token_ids: list[int]) -> None:
        for i, page in enumerate(pages):  # a hit's K/V encode exactly the queried prefix
            assert self.written[page] == tuple(token_ids[: (i + 1) * SPS])

    def _write(self, seq: Seq, first: int) -> None:
        for i in range(first, len(seq.pages)):
            self.written[seq.pages[i]] = tuple(seq.token_ids[: (i + 1) * SPS])

    @initialize(token_ids=st.lists(st.integers(0, 1), min_size=3 * SPS, max_size=3 * SPS))
    def warm_cache(self, token_ids: list[int]) -> None:
        """Start with three evictable cached pages, so eviction and revival come early."""
        seq = Seq(self.alloc.allocate(3), token_ids)
        self._write(seq, 0)
        self.alloc.register_full_pages(seq.pages, seq.token_ids)
        self.history.append(tuple(token_ids))
        self.alloc.free(seq.pages)

    @rule(k=st.integers(0, NUM_PAGES), data=st.data())
    def allocate(self, k: int, data: st.DataObject) -> None:
        if k > self.alloc.num_free:
            before = _snapshot(self.alloc)
            with pytest.raises(OutOfPagesError):
                self.alloc.allocate(k)
            assert _snapshot(self.alloc) == before
            return
        # Often continue earlier content, so pages repeat and prefixes are shared.
        base = list(data.draw(st.sampled_from([(), *self.history])))
        token_ids = (base + data.draw(st.lists(st.integers(0, 1), max_size=k * SPS)))[: k * SPS]
        seq = Seq(self.alloc.allocate(k), token_ids)
        self._write(seq, 0)
        self.seqs.append(seq)

    @precondition(lambda self: self.seqs)
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        seq = self.seqs.pop(data.draw(st.integers(0, len(self.seqs) - 1)))
        self.alloc.free(seq.pages)

    @precondition(lambda self: self.seqs)
    @rule(data=st.data())
    def share(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(self.seqs))
        self.alloc.share(seq.pages)
        self.seqs.append(Seq(list(seq.pages), list(seq.token_ids)))

    @precondition(lambda self: self.seqs)
    @rule(data=st.data())
    def register(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(self.seqs))
        self.alloc.register_full_pages(seq.pages, seq.token_ids)
        self.history.append(tuple(seq.token_ids))
        # Everything just registered is findable: the match covers every full page.
        pages = self.alloc.match_prefix(seq.token_ids)
        assert len(pages) == min(len(seq.pages), len(seq.token_ids) // SPS)
        self._check_hit(pages, seq.token_ids)
        self.alloc.free(pages)

    @precondition(lambda self: self.history)
    @rule(data=st.data())
    def match_prefix(self, data: st.DataObject) -> None:
        # Past contents too: stale cache entries would surface as wrong hits.
        candidates = [list(t) for t in self.history] + [s.token_ids for s in self.seqs]
        base = data.draw(st.sampled_from(candidates)) if candidates else []
        token_ids = data.draw(st.sampled_from([base, base[: len(base) // 2]]) | tokens_st)
        pages = self.alloc.match_prefix(token_ids)
        self._check_hit(pages, token_ids)
        self.seqs.append(Seq(pages, list(token_ids[: len(pages) * SPS])))

    @precondition(lambda self: any(s.token_ids for s in self.seqs))
    @rule(data=st.data(), new=st.lists(st.integers(0, 1), min_size=1, max_size=SPS))
    def rewrite(self, data: st.DataObject, new: list[int]) -> None:
        """Rewrite page i of a sequence from its start (a rollback), dropping its later pages."""
        seq = data.draw(st.sampled_from([s for s in self.seqs if s.token_ids]))
        i = data.draw(st.integers(0, (len(seq.token_ids) - 1) // SPS))
        shared = self.alloc.refcount(seq.pages[i]) > 1
        if shared and self.alloc.num_free == 0:
            before = _snapshot(self.alloc)
            with pytest.raises(OutOfPagesError):
                self.alloc.copy_on_write(seq.pages[i])
            assert _snapshot(self.alloc) == before
            return
        fresh = self.alloc.copy_on_write(seq.pages[i])
        assert (fresh is not None) == shared
        if fresh is not None:
            seq.pages[i] = fresh
        self.alloc.free(seq.pages[i + 1 :])
        seq.pages[i + 1 :] = []
        seq.token_ids[i * SPS :] = new
        self._write(seq, i)

    @invariant()
    def pages_partition_the_pool(self) -> None:
        alloc = self.alloc
        free, lru = alloc._free, list(alloc._evictable)
        used = [p for p in range(NUM_PAGES) if alloc.refcount(p) > 0]
        assert Counter(free + lru + used) == Counter(range(1, NUM_PAGES))
        assert alloc.num_free == len(free) + len(lru) and alloc.num_used == len(used)
        assert alloc.num_free + alloc.num_used == NUM_PAGES - 1

    @invariant()
    def refcounts_match_the_holders(self) -> None:
        held = Counter(p for s in self.seqs for p in s.pages)
        assert all(self.alloc.refcount(p) == held[p] for p in range(NUM_PAGES))

    @invariant()
    def cache_entries_are_consistent(self) -> None:
        alloc = self.alloc
        assert set(alloc._page_key) == set(alloc._cached.values())
        assert set(alloc._evictable) <= set(alloc._page_key)
        for h, page in alloc._cached.items():
            assert page != 0 and hash(alloc._page_key[page]) == h == alloc._page_hash[page]
        assert 0 not in alloc._page_hash and alloc.refcount(0) == 0


AllocatorMachine.TestCase.settings = settings(
    max_examples=50, stateful_step_count=30, deadline=None
)
TestAllocatorMachine = AllocatorMachine.TestCase
