"""Admission (host only): a prompt and its `SamplingParams` checked against the model, the
context and the KV pool before anything is queued; every error names what was wrong."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from jaxserve.errors import ContextLengthError, QueueFullError
from jaxserve.sampling.rows import NUM_STOP_IDS
from jaxserve.sampling_params import SamplingParams


def check_prompt(
    prompt_token_ids: Sequence[int],
    params: SamplingParams,
    *,
    vocab: int,
    num_eos: int,
    max_model_len: int,
    page_size: int,
    num_pages: int,
) -> tuple[list[int], int]:
    """The prompt as ints and the request's length limit (prompt + output tokens).

    Raises ValueError (empty prompt, ids out of the vocabulary, too many stop ids) or
    ContextLengthError (longer than the context, or than the KV pool could ever hold)."""
    ids = [int(t) for t in prompt_token_ids]
    if not ids:
        raise ValueError("the prompt is empty")
    if any(not 0 <= t < vocab for t in ids):
        raise ValueError(f"prompt token ids must be in [0, {vocab})")
    limit = max_model_len if params.max_tokens == 0 else max_model_len - 1
    if len(ids) > limit:
        raise ContextLengthError(f"prompt has {len(ids)} tokens; the context holds {max_model_len}")
    if len(params.stop_token_ids) + num_eos > NUM_STOP_IDS:
        raise ValueError(f"at most {NUM_STOP_IDS - num_eos} stop_token_ids")
    max_len = min(max_model_len, len(ids) + max(params.max_tokens, 1))
    if math.ceil(max_len / page_size) > num_pages - 1:
        raise ContextLengthError(f"{max_len} tokens do not fit the KV cache")
    if params.allowed_token_ids is not None and max(params.allowed_token_ids) >= vocab:
        raise ValueError(f"allowed_token_ids must be in [0, {vocab})")
    if params.logit_bias and max(params.logit_bias) >= vocab:
        raise ValueError(f"logit_bias token ids must be in [0, {vocab})")
    if any(t >= vocab for t in params.stop_token_ids):
        raise ValueError(f"stop_token_ids must be in [0, {vocab})")
    return ids, max_len


def check_queue(num_waiting: int, n: int, max_waiting: int) -> None:
    """Raises QueueFullError when `n` more sequences would exceed the waiting limit."""
    if num_waiting + n > max_waiting:
        raise QueueFullError(f"{num_waiting} requests are already waiting")


def check_embed_inputs(
    inputs: Sequence[Sequence[int]],
    *,
    vocab: int,
    max_model_len: int,
    page_size: int,
    num_pages: int,
) -> list[list[int]]:
    """The inputs as int lists; raises ValueError (empty or out-of-vocabulary input) or
    ContextLengthError (longer than the context or the KV cache), naming the input."""
    if not inputs:
        raise ValueError("the input is empty")
    out = []
    for i, item in enumerate(inputs):
        ids = [int(t) for t in item]
        if not ids:
            raise ValueError(f"input {i} is empty")
        if any(not 0 <= t < vocab for t in ids):
            raise ValueError(f"input {i}: token ids must be in [0, {vocab})")
        if len(ids) > max_model_len:
            raise ContextLengthError(
                f"input {i} has {len(ids)} tokens; the context holds {max_model_len}"
            )
        if math.ceil(len(ids) / page_size) > num_pages - 1:
            raise ContextLengthError(f"input {i}: {len(ids)} tokens do not fit the KV cache")
        out.append(ids)
    return out


def sequence_seed(seed: int, index: int) -> int:
    """Seed of sequence `index` of a request seeded with `seed` (sequence 0 keeps it)."""
    return (seed + index * 0x9E3779B1) % 2**32


def num_pages_for(kv_cache_bytes: int, page_bytes: int) -> int:
    """Pages of `page_bytes` a pool of `kv_cache_bytes` holds (at least 2: one is the null page)."""
    return max(kv_cache_bytes // page_bytes, 2)


def max_pages_per_row(max_model_len: int, page_size: int) -> int:
    return math.ceil(max_model_len / page_size)


def healed_prompt(ids: list[int], token_bytes: Callable[[int], bytes]) -> tuple[list[int], str]:
    """Token healing: the prompt without its last token, and a regex the output must then match
    (that token's text, then anything); ("", unchanged) where the last token cannot be healed."""
    if len(ids) < 2:
        return ids, ""
    try:
        text = token_bytes(ids[-1]).decode("utf-8")
    except UnicodeDecodeError:  # a piece of a character: nothing to extend exactly
        return ids, ""
    if not text:  # a control token
        return ids, ""
    literal = "".join(c if c.isalnum() and c.isascii() else _escape(c) for c in text)
    return ids[:-1], literal + "[\\s\\S]*"


def _escape(c: str) -> str:
    return f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}"
