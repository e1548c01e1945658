"""Host side of the research hooks (numpy only): which layers each request captures, where its
steering vector sits in the device's fixed table, and what the device kept, turned into
`RequestOutput.hidden_states`, `.logit_lens` and `.uncertainty`.

The device table (`[steering_slots + 1, layers, hidden]`, row 0 zeros) holds named control
vectors for the engine's lifetime and each request's own vector while it runs; requests with
equal vectors share a row. A steered request's prefix-cache entries are keyed by its vector and
scale (`cache_salt`): its K/V differ from an unsteered prompt's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from jaxserve.engine.device import PrefillResult, ProbeResult
from jaxserve.engine.rows import NO_PROBE, ProbeRow
from jaxserve.errors import QueueFullError
from jaxserve.outputs import TokenUncertainty
from jaxserve.sampling_params import SamplingParams

if TYPE_CHECKING:
    from jaxserve.engine.request import Request


@dataclass
class Capture:
    """A request's research state: its resolved layers and what was kept so far."""

    layers: tuple[int, ...] = ()  # one per capture slot, in slot order
    hidden: tuple[int, ...] = ()  # slots whose hidden states are returned
    lens: tuple[int, ...] = ()  # slots whose logit lens is returned
    steer_slot: int = 0
    steer_scale: float = 0.0
    lora_slot: int = 0  # the request's LoRA adapter (`engine/adapters.py`)
    lora_scale: float = 0.0
    cache_salt: bytes | None = None
    # position -> [len(hidden) + 1, E]: the hidden slots' states, then the final norm's output
    kept: dict[int, np.ndarray] = field(default_factory=dict)

    keep: bool = False  # the request returns hidden states or the logit lens

    def row(self) -> ProbeRow:
        if not self.keep and not self.steer_slot and not self.lora_slot:
            return NO_PROBE
        return ProbeRow(
            self.layers,
            bool(self.lens),
            self.steer_slot,
            self.steer_scale,
            keep=self.keep,
            lora_slot=self.lora_slot,
            lora_scale=self.lora_scale,
        )

    def hidden_states(self, leader: Capture | None = None) -> tuple[dict, list[int]]:
        """({layer: [P, E], "final": [P, E]}, the P positions in order); positions this
        sequence did not compute itself (an n > 1 request's shared prompt) come from `leader`."""
        kept = dict(leader.kept) if leader is not None else {}
        kept.update(self.kept)
        positions = sorted(kept)
        e = next(iter(kept.values())).shape[-1] if kept else 0
        stacked = np.stack([kept[p] for p in positions]) if positions else None
        out: dict[int | str, np.ndarray] = {}
        for n, slot in enumerate(self.hidden):
            rows = stacked[:, n] if stacked is not None else np.zeros((0, e), np.float32)
            out[self.layers[slot]] = rows
        out["final"] = stacked[:, -1] if stacked is not None else np.zeros((0, e), np.float32)
        return out, positions


class Research:
    """The engine's research hooks: capture slots and the steering table."""

    def __init__(self, *, capture_slots: int, steering_slots: int, num_layers: int, hidden: int):
        self.capture_slots = capture_slots
        self.steering_slots = steering_slots
        self.num_layers = num_layers
        self.hidden = hidden
        self.table = np.zeros((steering_slots + 1, num_layers, hidden), np.float32)
        self.dirty = False
        self.named: dict[str, int] = {}  # control vector name -> its permanent slot
        self._refs: dict[int, int] = {}  # slot -> requests using it (named slots: absent)
        self._slot_of: dict[bytes, int] = {}  # vector digest -> slot

    def add_control_vector(self, name: str, directions: Mapping[int, np.ndarray]) -> None:
        """Keep `directions` ({layer: [hidden]}) in the table for the engine's lifetime."""
        if name in self.named:
            raise ValueError(f"a control vector named {name!r} is loaded already")
        vectors = np.zeros((self.num_layers, self.hidden), np.float32)
        for layer, vector in directions.items():
            vectors[self._layer("control vector", layer)] = self._vector(name, vector)
        slot = self._place(vectors, permanent=True)
        self.named[name] = slot

    def admit(self, params: SamplingParams) -> Capture | None:
        """The request's resolved hooks (None when it uses none); raises ValueError naming the
        field for what this engine cannot do, QueueFullError when the steering table is full.
        Call `release` once the request ends."""
        layers = params.captured_layers
        if params.return_hidden_states is None and not layers and params.steering is None:
            return None
        capture = Capture()
        if params.return_hidden_states is not None or layers:
            capture.keep = True
            name = "return_hidden_states" if params.return_hidden_states else "logit_lens"
            if not self.capture_slots:
                raise ValueError(
                    f"{name}: this engine keeps no hidden states; start it with capture_layers=N "
                    "(serve --capture-layers N)"
                )
            if len(layers) > self.capture_slots:
                raise ValueError(
                    f"{name}: {len(layers)} layers asked, this engine captures at most "
                    f"{self.capture_slots} per request (capture_layers)"
                )
            resolved = {layer: self._layer(name, layer) for layer in layers}
            capture.layers = tuple(dict.fromkeys(resolved.values()))
            slot = {layer: i for i, layer in enumerate(capture.layers)}
            capture.hidden = tuple(slot[resolved[x]] for x in params.return_hidden_states or ())
            capture.lens = tuple(slot[resolved[x]] for x in params.logit_lens or ())
        if params.steering is not None:
            vectors = self._steering(params.steering)
            capture.steer_slot = self._place(vectors, permanent=False)
            capture.steer_scale = params.steering_scale
            digest = self._digest(vectors)
            capture.cache_salt = digest + np.float32(params.steering_scale).tobytes()
        return capture

    def finish(self, request: Request) -> None:
        """A finished request: its hidden states assembled, its steering slot freed."""
        capture = request.capture
        if capture is None:
            return
        if request.params.return_hidden_states is not None:
            leader = request.leader.capture if request.leader is not None else None
            out = request.output
            out.hidden_states, out.hidden_positions = capture.hidden_states(leader)
        self.release(capture)

    def release(self, capture: Capture | None) -> None:
        """The request ended: its steering slot may go to another vector."""
        if capture is None or not capture.steer_slot or capture.steer_slot not in self._refs:
            return
        slot = capture.steer_slot
        capture.steer_slot = 0
        self._refs[slot] -= 1
        if self._refs[slot] == 0:
            del self._refs[slot]
            self._slot_of = {d: s for d, s in self._slot_of.items() if s != slot}

    def _steering(self, spec: str | Mapping[int, str | tuple[float, ...]]) -> np.ndarray:
        if isinstance(spec, str):
            return self.table[self._named_slot(spec)].copy()
        vectors = np.zeros((self.num_layers, self.hidden), np.float32)
        for layer, value in spec.items():
            i = self._layer("steering", layer)
            if isinstance(value, str):
                vectors[i] = self.table[self._named_slot(value), i]
            else:
                vectors[i] = self._vector(f"steering[{layer}]", value)
        return vectors

    def _named_slot(self, name: str) -> int:
        if not self.steering_slots:
            raise ValueError(
                "steering: this engine has no steering table; start it with steering_slots=N "
                "(serve --steering-slots N)"
            )
        if name not in self.named:
            known = ", ".join(sorted(self.named)) or "none"
            raise ValueError(f"steering: no control vector named {name!r} (loaded: {known})")
        return self.named[name]

    def _place(self, vectors: np.ndarray, *, permanent: bool) -> int:
        if not self.steering_slots:
            raise ValueError(
                "steering: this engine has no steering table; start it with steering_slots=N "
                "(serve --steering-slots N)"
            )
        digest = self._digest(vectors)
        slot = self._slot_of.get(digest)
        if slot is None:
            used = set(self._refs) | set(self.named.values())
            free = [s for s in range(1, self.steering_slots + 1) if s not in used]
            if not free:
                raise QueueFullError(
                    f"steering: all {self.steering_slots} steering slots hold other requests' "
                    "vectors; retry later"
                )
            slot = free[0]
            self.table[slot] = vectors
            self._slot_of[digest] = slot
            self.dirty = True
        if not permanent and slot not in self.named.values():
            self._refs[slot] = self._refs.get(slot, 0) + 1
        return slot

    def _layer(self, name: str, layer: int) -> int:
        n = self.num_layers
        if not -n <= layer < n:
            raise ValueError(f"{name}: layer {layer} is out of range for a model of {n} layers")
        return layer % n

    def _vector(self, name: str, value) -> np.ndarray:
        vector = np.asarray(value, np.float32).reshape(-1)
        if vector.shape != (self.hidden,):
            raise ValueError(
                f"{name}: a vector of {vector.size} values, the model's hidden size is "
                f"{self.hidden}"
            )
        return vector

    @staticmethod
    def _digest(vectors: np.ndarray) -> bytes:
        return hashlib.blake2b(vectors.tobytes(), digest_size=16).digest()


def keeps_position(params: SamplingParams, position: int, prompt_len: int) -> bool:
    """Whether the hidden states at `position` are returned (`hidden_positions`)."""
    mode = params.hidden_positions
    if mode == "all":
        return True
    if mode == "generated":
        return position >= prompt_len - 1
    return position == prompt_len - 1


def keep_prefill(request: Request, out: PrefillResult, i: int, start: int, n: int) -> None:
    """Keep the hidden states of row `i`'s chunk (positions start .. start + n - 1)."""
    capture, params = request.capture, request.params
    if capture is None or params.return_hidden_states is None or out.probe is None:
        return
    prompt_len = len(request.prompt_token_ids)
    for j in range(n):
        position = start + j
        if keeps_position(params, position, prompt_len):
            slots = out.probe.captured[i, j, list(capture.hidden)]
            capture.kept[position] = np.concatenate([slots, out.hidden[i, j][None]])


def record_research(
    request: Request,
    uncertainty: np.ndarray | None,
    probe: ProbeResult | None,
    i: int,
    j: int,
    position: int | None = None,
) -> None:
    """The uncertainty and logit lens of the token about to be recorded (row i, step j of the
    call) and, for a decode step (`position`: its input's), the hidden states there."""
    out, capture = request.output, request.capture
    if out.uncertainty is not None and uncertainty is not None:
        out.uncertainty.append(uncertainty_entry(uncertainty))
    if capture is None or probe is None:
        return
    if out.logit_lens is not None:
        out.logit_lens.append(lens_entry(capture, request.params, probe, i, j))
    if position is not None:
        keep_decoded(capture, request.params, probe, i, j, position)


def keep_decoded(
    capture: Capture, params: SamplingParams, probe: ProbeResult, i: int, j: int, position: int
) -> None:
    """Keep the hidden states of row `i`'s j-th token of a decode call (input at `position`)."""
    if params.return_hidden_states is None or params.hidden_positions == "last":
        return
    slots = probe.captured[i, j, list(capture.hidden)]
    capture.kept[position] = np.concatenate([slots, probe.final[i, j][None]])


def lens_entry(
    capture: Capture, params: SamplingParams, probe: ProbeResult, i: int, j: int
) -> dict[int, tuple[tuple[int, float], ...]]:
    """{layer: ((token id, logprob), ...)} of the token drawn at row i, step j."""
    k = params.logit_lens_top_k
    out = {}
    for slot in capture.lens:
        layer = capture.layers[slot]
        ids, lps = probe.lens_ids[i, j, slot, :k], probe.lens_logprobs[i, j, slot, :k]
        out[layer] = tuple((int(t), float(lp)) for t, lp in zip(ids, lps, strict=True))
    return out


def uncertainty_entry(values: np.ndarray) -> TokenUncertainty:
    return TokenUncertainty(float(values[0]), float(values[1]), float(values[2]))
