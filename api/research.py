"""The research hooks' outputs as response fields (`SamplingParams.return_hidden_states`,
`logit_lens`, `return_uncertainty`), the same on completions and chat, streamed or not.

- `hidden_states`: `{"positions": [...], "shape": [P, E], "dtype": "float32", "encoding":
  "base64", "layers": {"<layer>": ..., "final": ...}}`, each array base64 of little-endian
  float32 rows (the embeddings endpoint's encoding); on a choice, or on the last chunk of a stream.
- `logit_lens`: per generated token, `{"<layer>": [{"token", "id", "logprob"}, ...]}`.
- `uncertainty`: per generated token, `{"entropy", "processed_entropy", "margin"}` (nats).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxserve.api.responses import token_text
from jaxserve.outputs import TokenUncertainty
from jaxserve.text.tokenizer import Tokenizer


def encode(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, "<f4").tobytes()).decode("ascii")


def hidden_states_field(states: dict, positions: Sequence[int]) -> dict[str, Any]:
    final = states["final"]
    return {
        "positions": list(positions),
        "shape": list(final.shape),
        "dtype": "float32",
        "encoding": "base64",
        "layers": {str(layer): encode(rows) for layer, rows in states.items()},
    }


def lens_field(tokenizer: Tokenizer, entries: Sequence[dict]) -> list[dict[str, list]]:
    def one(token_id: int, logprob: float) -> dict[str, Any]:
        return {"token": token_text(tokenizer, token_id)[0], "id": token_id, "logprob": logprob}

    return [
        {str(layer): [one(*t) for t in top] for layer, top in entry.items()} for entry in entries
    ]


def uncertainty_field(entries: Sequence[TokenUncertainty]) -> list[dict[str, float]]:
    return [
        {"entropy": u.entropy, "processed_entropy": u.processed_entropy, "margin": u.margin}
        for u in entries
    ]


def research_fields(tokenizer: Tokenizer, source: Any) -> dict[str, Any]:
    """The fields of whatever `source` (a `Choice` or a `StreamOutput`) carries."""
    out: dict[str, Any] = {}
    if source.logit_lens is not None:
        out["logit_lens"] = lens_field(tokenizer, source.logit_lens)
    if source.uncertainty is not None:
        out["uncertainty"] = uncertainty_field(source.uncertainty)
    if source.hidden_states is not None:
        out["hidden_states"] = hidden_states_field(source.hidden_states, source.hidden_positions)
    return out


def stream_fields(tokenizer: Tokenizer, out: Any) -> dict[str, Any]:
    """A stream chunk's fields: only what this output adds (new tokens' entries, and the hidden
    states once the sequence ends); empty when there is nothing to send."""
    fields = research_fields(tokenizer, out)
    if not out.new_token_ids:
        fields.pop("logit_lens", None)
        fields.pop("uncertainty", None)
    return fields
