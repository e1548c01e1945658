"""How close the process is to the kernel's limit on memory mappings.

XLA CPU's JIT maps the code and data of every compiled kernel separately: about 900 regions per
compiled step of SmolLM2 on this backend. Linux allows `vm.max_map_count` regions per process
(65,530 by default), and when the JIT cannot map more, LLVM aborts the whole process. The runner
reads `mapping_use()` before compiling a new shape and drops its compiled steps when the process
is close to the limit; the background warm-up stops earlier, leaving room for the shapes
requests need.
"""

from __future__ import annotations

from pathlib import Path

WARMUP_STOP = 0.6  # the background warm-up compiles nothing more past this share of the limit
CLEAR_AT = 0.85  # past this share, compiled steps are dropped before a new shape compiles
MIN_DROP = 16  # ... if the runner holds at least this many shapes (a drop must free something)


def mapping_use(proc: Path = Path("/proc")) -> float | None:
    """Mapped regions of this process as a share of `vm.max_map_count`; None off Linux."""
    try:
        limit = int((proc / "sys/vm/max_map_count").read_text())
        with (proc / "self/maps").open("rb") as maps:
            used = sum(1 for _ in maps)
    except (OSError, ValueError):
        return None
    return used / limit if limit > 0 else None
