"""OpenAI response shapes: choices accumulated from `StreamOutput`s, logprobs, usage, SSE chunks."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from jaxserve.api.async_engine import StreamOutput
from jaxserve.outputs import TokenLogprob
from jaxserve.text.tokenizer import Tokenizer

Kind = Literal["chat", "completion"]


def new_id(kind: Kind) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex


def sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def token_text(tokenizer: Tokenizer, token_id: int) -> tuple[str, list[int]]:
    """A token's text (partial UTF-8 shown as \\xNN escapes, like OpenAI) and its bytes."""
    raw = tokenizer.token_bytes(token_id, special=True)
    return raw.decode("utf-8", errors="backslashreplace"), list(raw)


def chat_logprob_entry(tokenizer: Tokenizer, entry: TokenLogprob) -> dict[str, Any]:
    def one(token_id: int, logprob: float) -> dict[str, Any]:
        text, raw = token_text(tokenizer, token_id)
        return {"token": text, "logprob": logprob, "bytes": raw}

    return {**one(entry.token_id, entry.logprob), "top_logprobs": [one(*t) for t in entry.top]}


def completion_logprobs(
    tokenizer: Tokenizer, entries: Sequence[tuple[int, TokenLogprob | None]], offset: int
) -> tuple[dict[str, list], int]:
    """Legacy completions logprobs for (token id, entry) pairs, text offsets starting at `offset`;
    returns it with the offset after the last token. An entry of None (the first prompt token,
    which has no context) gives null logprobs, as OpenAI does with echo."""
    out: dict[str, list] = {
        "tokens": [],
        "token_logprobs": [],
        "top_logprobs": [],
        "text_offset": [],
    }
    for token_id, entry in entries:
        text, _ = token_text(tokenizer, token_id)
        out["tokens"].append(text)
        out["text_offset"].append(offset)
        offset += len(text)
        if entry is None:
            out["token_logprobs"].append(None)
            out["top_logprobs"].append(None)
            continue
        out["token_logprobs"].append(entry.logprob)
        out["top_logprobs"].append({token_text(tokenizer, i)[0]: lp for i, lp in entry.top})
    return out, offset


def usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


@dataclass
class Choice:
    """One sequence's text, tokens and logprobs as they arrive."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
    logit_lens: list | None = None
    uncertainty: list | None = None
    hidden_states: dict | None = None
    hidden_positions: tuple[int, ...] | None = None

    def add(self, out: StreamOutput) -> None:
        self.text += out.delta
        self.token_ids += out.new_token_ids
        self.logprobs += out.logprobs or ()
        self.finish_reason = out.finish_reason
        self.prompt_tokens = out.prompt_tokens
        self.completion_tokens = out.completion_tokens
        self.cached_tokens = out.cached_tokens
        if out.prompt_logprobs is not None:
            self.prompt_logprobs = out.prompt_logprobs
        if out.logit_lens is not None:
            self.logit_lens = (self.logit_lens or []) + list(out.logit_lens)
        if out.uncertainty is not None:
            self.uncertainty = (self.uncertainty or []) + list(out.uncertainty)
        if out.hidden_states is not None:
            self.hidden_states, self.hidden_positions = out.hidden_states, out.hidden_positions


def total_usage(choices: Sequence[Choice], num_sequences: int) -> dict[str, Any]:
    """Each prompt counts once even when it has several sequences (n > 1)."""
    prompt = sum(c.prompt_tokens for c in choices if c.index % num_sequences == 0)
    cached = sum(c.cached_tokens for c in choices if c.index % num_sequences == 0)
    return usage(prompt, sum(c.completion_tokens for c in choices), cached)


@dataclass(frozen=True)
class Envelope:
    """The fields every response and chunk of one request shares."""

    id: str
    model: str
    system_fingerprint: str
    created: int = field(default_factory=lambda: int(time.time()))

    def wrap(self, obj: str, **body: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.system_fingerprint,
            **body,
        }
