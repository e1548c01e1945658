"""KV page pool (host only): hands out page ids and takes them back."""

from __future__ import annotations

from jaxserve.errors import JaxserveError


class OutOfPagesError(JaxserveError):
    """The KV pool cannot hold a request."""


class PageAllocator:
    """A fixed pool of `num_pages` pages; page 0 is reserved as the padding (null) page."""

    def __init__(self, num_pages: int) -> None:
        if num_pages < 2:
            raise ValueError("the KV pool needs at least 2 pages")
        self.num_pages = num_pages
        self._free = list(range(num_pages - 1, 0, -1))

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self, n: int) -> list[int]:
        if n > len(self._free):
            raise OutOfPagesError(f"need {n} KV pages, {len(self._free)} free")
        pages = [self._free.pop() for _ in range(n)]
        return pages

    def free(self, pages: list[int]) -> None:
        self._free.extend(reversed(pages))
