"""POST /v1/completions: prompts (text or token ids) -> engine -> OpenAI response or SSE.

`echo` with `logprobs` returns the prompt's tokens and their logprobs first (the first prompt
token has none), which is what loglikelihood evaluations (`max_tokens: 0`) read.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from jaxserve.api.errors import APIError, bad_request, unsupported
from jaxserve.api.generation import Job, merged, submit
from jaxserve.api.protocol import CompletionRequest
from jaxserve.api.research import research_fields, stream_fields
from jaxserve.api.responses import (
    Choice,
    Envelope,
    completion_logprobs,
    new_id,
    sse,
    token_text,
    total_usage,
)
from jaxserve.api.sampling import build_params, check_stream_options
from jaxserve.api.server_state import Served, ServerState
from jaxserve.outputs import TokenLogprob
from jaxserve.sampling_params import MAX_LOGPROBS
from jaxserve.text.fim import fim_prompt, fim_tokens
from jaxserve.text.tokenizer import Tokenizer, encode_prompt

HANDLED = frozenset(
    {
        "model",
        "prompt",
        "stream",
        "stream_options",
        "max_tokens",
        "logprobs",
        "echo",
        "best_of",
        "suffix",
        "priority",
        "prompt_logprobs",
    }
)
MAX_PROMPTS = 64


def prompts_of(body: CompletionRequest, tokenizer: Tokenizer) -> list[tuple[list[int], str]]:
    """(token ids, text) of each prompt; text prompts are tokenized with the model's BOS."""
    prompt = body.prompt
    if isinstance(prompt, str):
        items: list[Any] = [prompt]
    elif prompt and all(isinstance(t, int) for t in prompt):
        items = [prompt]
    else:
        items = list(prompt)
    if not items:
        raise bad_request("prompt must not be empty", "prompt")
    if len(items) > MAX_PROMPTS:
        raise bad_request(f"at most {MAX_PROMPTS} prompts per request", "prompt")
    out = []
    for item in items:
        if isinstance(item, str):
            out.append((encode_prompt(tokenizer, item), item))
            continue
        if any(not 0 <= t < tokenizer.vocab_size for t in item):
            message = f"prompt token ids must be in [0, {tokenizer.vocab_size})"
            raise bad_request(message, "prompt")
        out.append((list(item), tokenizer.decode(item)))
    return out


async def create_completion(
    body: CompletionRequest, request: Request, state: ServerState, model: str, served: Served
) -> JSONResponse | StreamingResponse:
    started = time.perf_counter()
    include_usage = check_stream_options(body)
    n = body.n or 1
    if body.best_of is not None and body.best_of != n:
        raise unsupported("best_of", "must equal n (best-of selection is not supported yet)")
    prompts = prompts_of(body, served.tokenizer)
    if body.suffix:
        prompts = _fill_in_the_middle(prompts, body, served.tokenizer)
    fixed: dict[str, Any] = {"max_tokens": 16 if body.max_tokens is None else body.max_tokens}
    if body.logprobs is not None:
        fixed["logprobs"] = body.logprobs
        if body.echo:
            fixed["prompt_logprobs"] = body.logprobs
    prompt_k = _prompt_logprobs(body)
    if prompt_k is not None:
        fixed["prompt_logprobs"] = max(prompt_k, fixed.get("prompt_logprobs", 0))
    params = build_params(
        body, handled=HANDLED, fixed=fixed, adapters=served.adapters(), routed=served.lora
    )
    priority = (body.model_extra or {}).get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise bad_request("priority must be an integer", "priority")
    jobs = [Job(ids, params, prompt=text, priority=priority) for ids, text in prompts]
    streams = await submit(
        served.engine, jobs, prompt_param="prompt", retry_after_s=state.config.retry_after_s
    )
    outputs = state.metered(
        merged(streams, request, num_sequences=params.n), started=started, n=params.n
    )
    envelope = Envelope(new_id("completion"), model, state.config.system_fingerprint)
    view = _View(served, prompts, params.n, bool(body.echo), body.logprobs, prompt_k)
    if body.stream:
        return StreamingResponse(
            state.track(_stream(outputs, envelope, view, include_usage)),
            media_type="text/event-stream",
        )
    async with state.tracking():
        choices = {i: Choice(i) for i in range(len(prompts) * params.n)}
        async for index, out in outputs:
            choices[index].add(out)
    ordered = [choices[i] for i in sorted(choices)]
    result = []
    for c in ordered:
        text, logprobs = view.start(c)
        more, _ = view.tokens(c.token_ids, c.logprobs, len(text))
        result.append(
            {
                "index": c.index,
                "text": text + c.text,
                "logprobs": view.join(logprobs, more),
                "finish_reason": c.finish_reason,
                **view.prompt_logprobs(c),
                **research_fields(served.tokenizer, c),
            }
        )
    usage = total_usage(ordered, params.n)
    return JSONResponse(envelope.wrap("text_completion", choices=result, usage=usage))


def _fill_in_the_middle(
    prompts: list[tuple[list[int], str]], body: CompletionRequest, tokenizer: Tokenizer
) -> list[tuple[list[int], str]]:
    """Each prompt as a FIM prompt around `suffix` (`jaxserve.text.fim`)."""
    tokens = fim_tokens(tokenizer)
    if tokens is None:
        raise unsupported(
            "suffix", "needs a model with fill-in-the-middle tokens; this one has none"
        )
    if body.echo:
        raise bad_request("suffix cannot be combined with echo", "suffix")
    assert body.suffix is not None
    return [(fim_prompt(tokenizer, ids, body.suffix, tokens), text) for ids, text in prompts]


def _prompt_logprobs(body: CompletionRequest) -> int | None:
    """vLLM's `prompt_logprobs` extension: top alternatives per prompt token (None: not asked)."""
    k = (body.model_extra or {}).get("prompt_logprobs")
    if k is not None and (
        not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= MAX_LOGPROBS
    ):
        message = f"prompt_logprobs must be an integer in [0, {MAX_LOGPROBS}]"
        raise bad_request(message, "prompt_logprobs")
    return k


class _View:
    """How one request's choices are shown: echoed prompt, logprobs or not, prompt logprobs."""

    def __init__(
        self,
        served: Served,
        prompts: list[tuple[list[int], str]],
        n: int,
        echo: bool,
        logprobs: int | None,
        prompt_k: int | None,
    ) -> None:
        self.tokenizer = served.tokenizer
        self.prompts, self.n, self.echo = prompts, n, echo
        self.lp, self.k, self.prompt_k = logprobs is not None, logprobs or 0, prompt_k

    def start(self, choice: Choice) -> tuple[str, dict | None]:
        """The echoed prompt text and its logprobs ("" and None without echo)."""
        if not self.echo:
            return "", None
        ids, text = self.prompts[choice.index // self.n]
        if not self.lp:
            return text, None
        entries = [
            (i, None if e is None else TokenLogprob(e.token_id, e.logprob, e.top[: self.k]))
            for i, e in zip(ids, choice.prompt_logprobs or [None] * len(ids), strict=True)
        ]
        return text, completion_logprobs(self.tokenizer, entries, 0)[0]

    def prompt_logprobs(self, choice: Choice) -> dict[str, list | None]:
        """`{"prompt_logprobs": [...]}` as vLLM gives it (when asked): per prompt token, None for
        the first, else {token id: {"logprob", "decoded_token"}} for the prompt's own token and
        its top alternatives."""
        if self.prompt_k is None:
            return {}
        shown = []
        for entry in choice.prompt_logprobs or ():
            if entry is None:
                shown.append(None)
                continue
            pairs = [(entry.token_id, entry.logprob), *entry.top[: self.prompt_k]]
            shown.append(
                {
                    str(t): {"logprob": lp, "decoded_token": token_text(self.tokenizer, t)[0]}
                    for t, lp in pairs
                }
            )
        return {"prompt_logprobs": shown}

    def tokens(self, ids: list[int], entries: list, offset: int) -> tuple[dict | None, int]:
        if not self.lp:
            return None, offset
        return completion_logprobs(self.tokenizer, list(zip(ids, entries, strict=True)), offset)

    @staticmethod
    def join(a: dict | None, b: dict | None) -> dict | None:
        if a is None or b is None:
            return a or b
        return {key: a[key] + b[key] for key in a}


async def _stream(
    outputs: AsyncIterator, envelope: Envelope, view: _View, include_usage: bool
) -> AsyncIterator[bytes]:
    extra = {"usage": None} if include_usage else {}
    choices: dict[int, Choice] = {}
    offsets: dict[int, int] = {}
    announced: set[int] = set()

    def chunk(index: int, text: str, lp: dict | None, finish: str | None, **more) -> bytes:
        choice = {"index": index, "text": text, "logprobs": lp, "finish_reason": finish, **more}
        if index not in announced:  # a choice's first chunk carries its prompt logprobs
            announced.add(index)
            choice.update(view.prompt_logprobs(choices[index]))
        return sse(envelope.wrap("text_completion", choices=[choice], **extra))

    try:
        async for index, out in outputs:
            choice = choices.setdefault(index, Choice(index))
            choice.add(out)
            text, lp = "", None
            if index not in offsets:  # this choice's first chunk carries the echoed prompt
                text, lp = view.start(choice)
                offsets[index] = len(text)
            more, offsets[index] = view.tokens(
                list(out.new_token_ids), list(out.logprobs or ()), offsets[index]
            )
            lp = view.join(lp, more)
            text += out.delta
            if text or out.finish_reason is not None or out.new_token_ids:
                fields = stream_fields(view.tokenizer, out)
                yield chunk(index, text, lp, out.finish_reason, **fields)
    except APIError as error:
        yield sse(error.body())
        return
    if include_usage:
        ordered = [choices[i] for i in sorted(choices)]
        usage = total_usage(ordered, view.n)
        yield sse(envelope.wrap("text_completion", choices=[], usage=usage))
    yield sse("[DONE]")
