"""Code-point ranges as UTF-8 byte-range sequences, so automata can run on bytes."""

from __future__ import annotations

_LENGTH_LIMITS = (0x7F, 0x7FF, 0xFFFF)


def utf8_sequences(lo: int, hi: int) -> list[tuple[tuple[int, int], ...]]:
    """Byte-range sequences whose concatenations are exactly the encodings of `lo..hi`.

    Each sequence is a tuple of inclusive (low, high) byte ranges, one per encoded byte.
    Surrogates must already be excluded by the caller.
    """
    out: list[tuple[tuple[int, int], ...]] = []
    work = [(lo, hi)]
    while work:
        a, b = work.pop()
        if a > b:
            continue
        split = next((m for m in _LENGTH_LIMITS if a <= m < b), None)
        if split is not None:
            work += [(split + 1, b), (a, split)]
            continue
        if b <= 0x7F:
            out.append(((a, b),))
            continue
        n = len(chr(a).encode())
        for i in range(1, n):
            m = (1 << (6 * i)) - 1
            if a & ~m != b & ~m:
                if a & m:
                    work += [((a | m) + 1, b), (a, a | m)]
                    break
                if b & m != m:
                    work += [(b & ~m, b), (a, (b & ~m) - 1)]
                    break
        else:
            ea, eb = chr(a).encode(), chr(b).encode()
            out.append(tuple(zip(ea, eb, strict=True)))
    return out
