"""The engine's background warm-up (host only): its buckets compiled one at a time while it
is idle, so a server answers before every shape is compiled."""

from __future__ import annotations

import logging
import time

from jaxserve.engine.drafter import Drafter
from jaxserve.engine.mappings import WARMUP_STOP, mapping_use
from jaxserve.engine.speculation import Speculator

log = logging.getLogger("jaxserve.engine")
DRAFT = "draft-"  # the prefix of the draft model's buckets


class BackgroundWarmUp:
    """The warm-up half of `Engine` (it supplies `runner`, `scheduler` and the fields below)."""

    _to_warm: list[tuple[str, int, int, int]]
    drafter: Drafter | None
    speculator: Speculator | None
    warmup_total: int
    _warm_started: float

    def warm_in_background(self) -> None:
        """Compile the engine's buckets one at a time while it is idle (`warm_one`), instead of
        before serving; a request meanwhile compiles the buckets it needs on first use."""
        s = self.scheduler.config
        self._to_warm = self.runner.warmup_shapes(
            max_rows=s.max_num_seqs,
            max_prefill_rows=s.max_prefill_rows,
            max_chunk=s.prefill_chunk,
            max_batched_tokens=s.max_num_batched_tokens,
        )
        drafter = self.drafter
        if drafter is not None:  # the draft model's decode and catch-up buckets
            shapes = drafter.runner.warmup_shapes(
                max_rows=self.speculator.config.max_rows,
                max_prefill_rows=1,
                max_chunk=drafter.chunk,
                max_batched_tokens=drafter.chunk,
            )
            self._to_warm += [(DRAFT + kind, *rest) for kind, *rest in shapes]
        self.warmup_total = len(self._to_warm)
        self._warm_started = time.perf_counter()

    @property
    def warmup_done(self) -> int:
        """Buckets compiled by the background warm-up so far (of `warmup_total`)."""
        return self.warmup_total - len(self._to_warm)

    def warmup_pending(self) -> list[tuple[str, int, int, int]]:
        """(kind, rows, tokens, pages) of the buckets the warm-up has yet to compile."""
        return list(self._to_warm)

    def warm_one(self) -> bool:
        """Compile the next bucket of the background warm-up; False when none is left."""
        if not self._to_warm:
            return False
        use = mapping_use()
        if use is not None and use > WARMUP_STOP:  # leave room for the shapes requests need
            log.warning(
                "warm-up stopped at %d/%d shapes: %.0f%% of vm.max_map_count is mapped; the rest "
                "compile on first use",
                self.warmup_done,
                self.warmup_total,
                100 * use,
            )
            self.warmup_total = self.warmup_done
            self._to_warm.clear()
            self.runner.warmed_up()
            return False
        kind, *rest = self._to_warm[0]
        if kind.startswith(DRAFT):
            self.drafter.runner.warm((kind[len(DRAFT) :], *rest), num_steps=self.drafter.steps)
        else:
            self.runner.warm(self._to_warm[0], num_steps=self.scheduler.config.decode_steps)
        if len(self._to_warm) == 1:
            self.runner.warmed_up()
            if self.drafter is not None:
                self.drafter.runner.warmed_up()
        self._to_warm.pop(0)  # counted done (`warmup_done`, read by other threads) only now
        elapsed = time.perf_counter() - self._warm_started
        log.info(
            "warm-up: %d/%d shapes compiled (%.0f s)", self.warmup_done, self.warmup_total, elapsed
        )
        return True
