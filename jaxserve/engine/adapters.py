"""The engine's LoRA adapters (host only): names -> slots of the runner's fixed LoRA table
(`runtime/hooks.py`), the requests using each, and the prefix-cache salt that keeps pages
computed under an adapter apart from everyone else's."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import numpy as np

from jaxserve.engine.research import Capture
from jaxserve.loading.lora import LoRAAdapter
from jaxserve.sampling_params import SamplingParams


class Adapters:
    """`slots` adapters of rank <= `rank` at once. Loads and unloads are written to the device
    before the next device call (`pending`)."""

    def __init__(self, *, slots: int, rank: int) -> None:
        self.slots, self.rank = slots, rank
        self.named: dict[str, int] = {}  # adapter name -> slot
        self.ranks: dict[str, int] = {}
        self.pending: list[tuple[int, Mapping]] = []  # (slot, pairs) to write; {} clears
        self._users: dict[int, int] = {}  # slot -> unfinished requests using it
        self._salts: dict[int, bytes] = {}
        self._loads = itertools.count(1)

    def load(self, name: str, adapter: LoRAAdapter) -> int:
        """Place an adapter in a free slot; ValueError when it cannot be."""
        if not self.slots:
            raise ValueError(
                "this engine holds no LoRA adapters; start it with max_loras=N "
                "(serve --max-loras N)"
            )
        if not name or ":" in name:
            raise ValueError(f"a LoRA adapter's name must be non-empty without ':', got {name!r}")
        if name in self.named:
            raise ValueError(f"a LoRA adapter named {name!r} is loaded already")
        if adapter.rank > self.rank:
            raise ValueError(
                f"{name}: rank {adapter.rank} is above this engine's max_lora_rank {self.rank}"
            )
        used = set(self.named.values())
        free = [s for s in range(1, self.slots + 1) if s not in used]
        if not free:
            raise ValueError(
                f"all {self.slots} LoRA slots hold adapters ({', '.join(sorted(self.named))}); "
                "unload one first"
            )
        slot = free[0]
        self.named[name], self.ranks[name] = slot, adapter.rank
        self._salts[slot] = f"lora:{name}:{next(self._loads)}".encode()
        self.pending.append((slot, adapter.pairs))
        return slot

    def unload(self, name: str) -> None:
        """Free an adapter's slot; KeyError when none has that name, ValueError while
        requests use it."""
        if name not in self.named:
            raise KeyError(name)
        slot = self.named[name]
        if self._users.get(slot):
            raise ValueError(f"{name} is in use by {self._users[slot]} unfinished requests")
        del self.named[name], self.ranks[name]
        self.pending.append((slot, {}))

    def check(self, params: SamplingParams) -> None:
        """ValueError naming `lora` when the request's adapter is not loaded."""
        if params.lora is not None and params.lora not in self.named:
            loaded = ", ".join(sorted(self.named)) or "none"
            raise ValueError(f"lora: no LoRA adapter named {params.lora!r} (loaded: {loaded})")

    def admit(self, params: SamplingParams, capture: Capture | None) -> Capture | None:
        """The request's hooks with its adapter (after `check`); call `release` at its end."""
        if params.lora is None:
            return capture
        slot = self.named[params.lora]
        capture = capture if capture is not None else Capture()
        capture.lora_slot, capture.lora_scale = slot, params.lora_scale
        salt = self._salts[slot] + np.float32(params.lora_scale).tobytes()
        capture.cache_salt = salt if capture.cache_salt is None else capture.cache_salt + salt
        self._users[slot] = self._users.get(slot, 0) + 1
        return capture

    def release(self, capture: Capture | None) -> None:
        if capture is None or not capture.lora_slot:
            return
        self._users[capture.lora_slot] -= 1
        capture.lora_slot = 0
