"""POST /v1/embeddings: inputs (texts or token ids) -> `engine.embed` -> OpenAI's list of vectors.

An embedding is the mean of the input's final hidden states (after the model's final norm) over
all of its tokens, L2-normalized; text is tokenized with the model's BOS, as completions are.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from starlette.responses import JSONResponse

from jaxserve.api.errors import APIError, bad_request
from jaxserve.api.protocol import EmbeddingRequest
from jaxserve.api.server_state import Served, ServerState
from jaxserve.errors import ContextLengthError
from jaxserve.text.tokenizer import Tokenizer, encode_prompt

MAX_INPUTS = 2048  # OpenAI's limit of inputs per request


def inputs_of(body: EmbeddingRequest, tokenizer: Tokenizer) -> list[list[int]]:
    """Token ids of each input; an empty input or an unknown token id is a 400 naming `input`."""
    value = body.input
    if isinstance(value, str) or (value and all(isinstance(t, int) for t in value)):
        items: list[Any] = [value]
    else:
        items = list(value)
    if not items:
        raise bad_request("input must not be empty", "input")
    if len(items) > MAX_INPUTS:
        raise bad_request(f"at most {MAX_INPUTS} inputs per request", "input")
    out = []
    for i, item in enumerate(items):
        where = "input" if len(items) == 1 else f"input[{i}]"
        if not item:
            raise bad_request(f"{where} must not be empty", "input")
        if isinstance(item, str):
            out.append(encode_prompt(tokenizer, item))
            continue
        if any(not 0 <= t < tokenizer.vocab_size for t in item):
            message = f"{where}: token ids must be in [0, {tokenizer.vocab_size})"
            raise bad_request(message, "input")
        out.append(list(item))
    return out


async def create_embedding(
    body: EmbeddingRequest, state: ServerState, model: str, served: Served
) -> JSONResponse:
    """Mean-pooled, L2-normalized final hidden states of each input (see the module docstring);
    `encoding_format: "base64"` gives each vector as base64 of little-endian float32, as OpenAI
    does. `dimensions` is accepted only when it equals the model's width (no truncation)."""
    if body.dimensions is not None and body.dimensions != served.embedding_size > 0:
        message = (
            f"dimensions must equal the model's width, {served.embedding_size} "
            f"(shortened embeddings are not supported), got {body.dimensions}"
        )
        raise APIError(400, message, param="dimensions", code="unsupported_parameter")
    inputs = inputs_of(body, served.tokenizer)
    async with state.tracking():
        vectors = await embed(served, inputs, param="input")
    num_tokens = sum(len(ids) for ids in inputs)
    state.metrics.count_tokens(num_tokens, 0)
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
        for i, v in enumerate(vectors)
    ]
    usage = {"prompt_tokens": num_tokens, "total_tokens": num_tokens}
    return JSONResponse({"object": "list", "data": data, "model": model, "usage": usage})


async def embed(served: Served, inputs: list[list[int]], *, param: str) -> np.ndarray:
    """`engine.embed`, its errors as APIErrors naming `param` (both fronts)."""
    if not served.embedding_size:
        raise APIError(400, "This model does not serve embeddings", param="model")
    try:
        return await served.engine.embed(inputs)
    except ContextLengthError as error:
        raise bad_request(str(error), param, "context_length_exceeded") from None
    except ValueError as error:
        raise bad_request(str(error), param) from None
    except RuntimeError:  # the engine loop has stopped
        raise APIError(503, "The engine is not running", code="engine_dead") from None


def _encode(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()
