"""The runner's per-row hooks on device: capture slots, the steering table and the LoRA table,
and the `Probe` each batch carries (`models/decoder.py`). Tables are fixed in shape, so loading
a vector or an adapter replaces device arrays and never recompiles."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np

from jaxserve.config import ModelConfig
from jaxserve.engine.rows import ProbeRow
from jaxserve.models.decoder import Probe
from jaxserve.models.lora import PROJECTIONS, LoRATable, projection_dims, quantize_columns

Put = Callable[[np.ndarray], jax.Array]


class DeviceHooks:
    """`put_rows` places a per-row host array, `put_shared` one every device reads whole."""

    def __init__(
        self,
        config: ModelConfig,
        *,
        capture_slots: int,
        steering_slots: int,
        lora_slots: int,
        lora_rank: int,
        put_rows: Put,
        put_shared: Put,
    ) -> None:
        self.config = config
        self.capture_slots = capture_slots
        self.steering_slots = steering_slots
        self.lora_slots, self.lora_rank = lora_slots, lora_rank
        self._rows, self._shared = put_rows, put_shared
        shape = (steering_slots + 1, config.num_layers, config.hidden_size)
        self.steering = put_shared(np.zeros(shape, np.float32))
        self.exact = config.kv_format == "q8_0"  # int8 weights: integer LoRA dots too
        table = LoRATable.zeros(config, lora_slots, lora_rank, exact=self.exact)
        self.lora = jax.tree.map(lambda x: put_shared(np.asarray(x)), table)

    @property
    def enabled(self) -> bool:
        return bool(self.capture_slots or self.steering_slots or self.lora_slots)

    def load_steering(self, table: np.ndarray) -> None:
        """Replace the steering table (`[steering_slots + 1, layers, hidden]`, row 0 zeros)."""
        if table.shape != self.steering.shape:
            raise ValueError(f"the steering table must have shape {self.steering.shape}")
        self.steering = self._shared(np.asarray(table, np.float32))

    def load_lora(
        self,
        slot: int,
        pairs: Mapping[tuple[int, str], tuple[np.ndarray, np.ndarray]],
    ) -> None:
        """Write an adapter into `slot` (1..lora_slots): {(layer, projection): (A [in, r],
        B [r, out])} with r <= lora_rank, zeros everywhere else. Empty pairs clear the slot."""
        if not 1 <= slot <= self.lora_slots:
            raise ValueError(f"LoRA slot {slot} is outside 1..{self.lora_slots}")
        c, rank = self.config, self.lora_rank
        table = self.lora
        a, b, a_scale, b_scale = (dict(d) for d in (table.a, table.b, table.a_scale, table.b_scale))
        for name in PROJECTIONS:
            d_in, d_out = projection_dims(c, name)
            new_a = np.zeros((c.num_layers, d_in, rank), np.float32)
            new_b = np.zeros((c.num_layers, rank, d_out), np.float32)
            for (layer, proj), (pa, pb) in pairs.items():
                if proj == name:
                    if pa.shape[1] > rank:
                        raise ValueError(f"rank {pa.shape[1]} exceeds the table's {rank}")
                    new_a[layer, :, : pa.shape[1]] = pa
                    new_b[layer, : pb.shape[0]] = pb
            if self.exact:
                new_a, scale_a = quantize_columns(new_a)
                new_b, scale_b = quantize_columns(new_b)
                a_scale[name] = a_scale[name].at[:, slot].set(self._shared(scale_a))
                b_scale[name] = b_scale[name].at[:, slot].set(self._shared(scale_b))
            a[name] = a[name].at[:, slot].set(self._shared(new_a))
            b[name] = b[name].at[:, slot].set(self._shared(new_b))
        self.lora = LoRATable(a, b, a_scale, b_scale)

    def probe(self, rows: Sequence[ProbeRow], num_rows: int) -> Probe | None:
        """The batch's probe, or None when the runner has no hooks at all."""
        if not self.enabled:
            return None
        capture = np.full((num_rows, self.capture_slots), -1, np.int32)
        slot, scale = np.zeros(num_rows, np.int32), np.zeros(num_rows, np.float32)
        lora_slot, lora_scale = np.zeros(num_rows, np.int32), np.zeros(num_rows, np.float32)
        lens = np.zeros(num_rows, bool)
        for i, r in enumerate(rows):
            capture[i, : len(r.capture)] = r.capture
            slot[i], scale[i], lens[i] = r.steer_slot, r.steer_scale, r.lens
            lora_slot[i], lora_scale[i] = r.lora_slot, r.lora_scale
        return Probe(
            *map(self._rows, (capture, slot, scale)),
            steering=self.steering,
            lens=self._rows(lens),
            lora_slot=self._rows(lora_slot),
            lora_scale=self._rows(lora_scale),
            lora=self.lora,
        )
