"""KV page pool (host only): ref-counted pages with a hashed prefix cache.

Every page 1..num_pages-1 is in exactly one of three places: the free list, the evictable LRU
(unreferenced pages that still hold a cached full page), or in use (refcount > 0). Page 0 is the
null page that pads page tables; it is never handed out.

A full page is cached under a chained hash `h_i = hash((h_{i-1}, page_tokens))`, so a hash names the
whole prefix up to the end of its page, not just the page's own tokens. Lookups compare the stored
(parent hash, tokens) key, so two pages whose hashes collide are never confused.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from jaxserve.errors import OutOfPagesError

_ROOT_HASH = 0x6A617873  # h_{-1}: the parent of every request's first page

PageKey = tuple[int, tuple[int, ...]]  # (parent hash, the page's token ids)


@dataclass
class PrefixCacheStats:
    """Prefix-cache counters over every `match_prefix` call."""

    num_queries: int = 0
    query_tokens: int = 0  # tokens asked for
    hit_tokens: int = 0  # tokens found in cached pages

    @property
    def hit_rate(self) -> float:
        """Fraction of queried tokens served from the cache (0.0 before any query)."""
        return self.hit_tokens / self.query_tokens if self.query_tokens else 0.0


class PageAllocator:
    """A fixed pool of `num_pages` KV pages of `page_size` tokens each; page 0 is reserved."""

    def __init__(
        self, num_pages: int, page_size: int, *, enable_prefix_caching: bool = True
    ) -> None:
        if num_pages < 2:
            raise ValueError("the KV pool needs at least 2 pages")
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self.num_pages = num_pages
        self.page_size = page_size
        self.enable_prefix_caching = enable_prefix_caching
        self.stats = PrefixCacheStats()
        self._refcount = [0] * num_pages
        self._num_used = 0
        self._free = list(range(num_pages - 1, 0, -1))  # a stack: page 1 is handed out first
        self._evictable: OrderedDict[int, None] = OrderedDict()  # least recently freed first
        # Chained hash of each hashed full page, owner or not (later pages chain from it).
        self._page_hash: dict[int, int] = {}
        self._cached: dict[int, int] = {}  # hash -> the one page that holds it in the cache
        self._page_key: dict[int, PageKey] = {}  # cached page -> its (parent hash, tokens)

    @property
    def num_free(self) -> int:
        """Pages obtainable now: truly free plus cached-but-unreferenced (evictable)."""
        return len(self._free) + len(self._evictable)

    @property
    def num_used(self) -> int:
        """Pages with refcount > 0."""
        return self._num_used

    @property
    def num_cached(self) -> int:
        """Full pages registered in the prefix cache (referenced or evictable)."""
        return len(self._cached)

    def refcount(self, page: int) -> int:
        """How many holders reference `page` (0 for the null page)."""
        if not 0 <= page < self.num_pages:
            raise ValueError(f"page {page} is outside the pool [0, {self.num_pages})")
        return self._refcount[page]

    def allocate(self, n: int) -> list[int]:
        """Hand out `n` fresh pages (refcount 1): free ones first, then evict LRU cached pages.

        Raises `OutOfPagesError`, with nothing allocated, when `n > num_free`.
        """
        if n < 0:
            raise ValueError(f"cannot allocate {n} pages")
        if n > self.num_free:
            raise OutOfPagesError(f"need {n} KV pages, {self.num_free} free")
        pages = []
        for _ in range(n):
            if self._free:
                page = self._free.pop()
            else:
                page, _ = self._evictable.popitem(last=False)
                self._uncache(page)
            self._refcount[page] = 1
            pages.append(page)
        self._num_used += n
        return pages

    def free(self, pages: Sequence[int]) -> None:
        """Drop one reference to each page; raises ValueError (changing nothing) on a bad page.

        A page reaching refcount 0 becomes evictable if it holds a cached full page, else free.
        Pages are released last to first, so a request's tail is evicted before its head.
        """
        for page, count in Counter(pages).items():
            self._check_referenced(page, count)
        for page in reversed(pages):
            self._refcount[page] -= 1
            if self._refcount[page] > 0:
                continue
            self._num_used -= 1
            if page in self._page_key:
                self._evictable[page] = None
            else:
                self._page_hash.pop(page, None)  # a duplicate of a page cached elsewhere
                self._free.append(page)

    def share(self, pages: Sequence[int]) -> None:
        """Add one reference to each page (already referenced), e.g. when forking for `n > 1`."""
        for page in pages:
            self._check_referenced(page)
        for page in pages:
            self._refcount[page] += 1

    def match_prefix(self, token_ids: Sequence[int], salt: bytes | None = None) -> list[int]:
        """Take a reference on the longest chain of cached full pages that spells `token_ids`.

        Page i matches when its stored tokens equal `token_ids[i*page_size : (i+1)*page_size]` and
        its parent is the page matched before it; a partial last page never matches. Evictable
        pages are revived. To keep one token to compute logits from, pass `prompt_token_ids[:-1]`.
        Returns [] when prefix caching is disabled. Pages registered with a `salt` (K/V computed
        under a steering vector, say) match only requests with the same salt.
        """
        if not self.enable_prefix_caching:
            return []
        size = self.page_size
        matched: list[int] = []
        parent = _root(salt)
        for start in range(0, len(token_ids) - size + 1, size):
            key = (parent, tuple(token_ids[start : start + size]))
            h = hash(key)
            page = self._cached.get(h)
            if page is None or self._page_key[page] != key:
                break
            matched.append(page)
            parent = h
        for page in matched:
            if self._refcount[page] == 0:
                del self._evictable[page]
                self._num_used += 1
            self._refcount[page] += 1
        self.stats.num_queries += 1
        self.stats.query_tokens += len(token_ids)
        self.stats.hit_tokens += len(matched) * size
        return matched

    def register_full_pages(
        self, pages: Sequence[int], token_ids: Sequence[int], salt: bytes | None = None
    ) -> None:
        """Cache every full page of a request whose K/V for `token_ids` are now written.

        `pages` is the request's page list in order. Pages hashed before are skipped, so calling
        this every step costs a dict lookup or two per full page. When another page already holds
        the same hash, that entry stays and this page is only remembered for chaining; if that
        other page is later evicted, the next call caches this one in its place.
        """
        if not self.enable_prefix_caching:
            return
        size = self.page_size
        parent = _root(salt)
        for i in range(min(len(pages), len(token_ids) // size)):
            page = pages[i]
            h = self._page_hash.get(page)
            if h is None or h not in self._cached:  # new, or a duplicate whose original left
                self._check_referenced(page)
                key = (parent, tuple(token_ids[i * size : (i + 1) * size]))
                h = hash(key)
                self._page_hash[page] = h
                if h not in self._cached:
                    self._cached[h] = page
                    self._page_key[page] = key
            parent = h

    def copy_on_write(self, page: int) -> int | None:
        """Make `page` safe to write for one holder.

        Shared (refcount > 1): drop this holder's reference and return a fresh page; the caller
        copies the K/V into it on device. Sole holder: return None (write in place), first removing
        the page from the prefix cache since its content is about to change.
        """
        self._check_referenced(page)
        if self._refcount[page] > 1:
            (fresh,) = self.allocate(1)
            self._refcount[page] -= 1
            return fresh
        self._uncache(page)
        return None

    def _uncache(self, page: int) -> None:
        h = self._page_hash.pop(page, None)
        if h is not None and self._cached.get(h) == page:
            del self._cached[h]
            del self._page_key[page]

    def _check_referenced(self, page: int, count: int = 1) -> None:
        if page == 0:
            raise ValueError("page 0 is the null page and is never allocated")
        if not 0 < page < self.num_pages:
            raise ValueError(f"page {page} is outside the pool [1, {self.num_pages})")
        if self._refcount[page] < count:
            raise ValueError(f"page {page} has {self._refcount[page]} references, not {count}")


def _root(salt: bytes | None) -> int:
    """The parent hash of a chain's first page: salted chains never meet unsalted ones."""
    return _ROOT_HASH if salt is None else hash((_ROOT_HASH, salt))
