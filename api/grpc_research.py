"""The research hooks' outputs on a gRPC `GenerateResponse` (`logit_lens`, `uncertainty`,
`hidden_states`), as api/research.py renders them for HTTP."""

from __future__ import annotations

import numpy as np

from jaxserve.api import jaxserve_v1_pb2 as pb
from jaxserve.api.async_engine import StreamOutput
from jaxserve.api.responses import token_text
from jaxserve.text.tokenizer import Tokenizer


def add_research(response: pb.GenerateResponse, tokenizer: Tokenizer, out: StreamOutput) -> None:
    """Whatever `out` carries: its new tokens' lens and uncertainty entries, and the hidden
    states once the sequence ends."""
    if out.logit_lens:
        response.logit_lens.extend(_lens(tokenizer, entry) for entry in out.logit_lens)
    if out.uncertainty:
        response.uncertainty.extend(
            pb.TokenUncertainty(
                entropy=u.entropy, processed_entropy=u.processed_entropy, margin=u.margin
            )
            for u in out.uncertainty
        )
    if out.hidden_states is not None:
        response.hidden_states.CopyFrom(hidden_states(out.hidden_states, out.hidden_positions))


def _lens(tokenizer: Tokenizer, entry: dict) -> pb.TokenLens:
    layers = [
        pb.LensLayer(
            layer=layer,
            top=[
                pb.TopLogprob(token_id=i, token=token_text(tokenizer, i)[0], logprob=lp)
                for i, lp in top
            ],
        )
        for layer, top in entry.items()
    ]
    return pb.TokenLens(layers=layers)


def hidden_states(states: dict, positions: tuple[int, ...]) -> pb.HiddenStates:
    """Each array as little-endian float32 bytes, row-major [positions, hidden_size]."""
    layers = [
        pb.HiddenLayer(layer=str(layer), data=np.ascontiguousarray(rows, "<f4").tobytes())
        for layer, rows in states.items()
    ]
    hidden_size = states["final"].shape[-1]
    return pb.HiddenStates(positions=positions, hidden_size=hidden_size, layers=layers)
