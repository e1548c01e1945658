"""After a device call (host only): tokens recorded on their requests, matchers advanced,
logprobs shaped for the caller."""

from __future__ import annotations

import numpy as np

from jaxserve.engine.request import Request
from jaxserve.errors import NonFiniteLogitsError
from jaxserve.grammar import LazyMatcher
from jaxserve.outputs import TokenLogprob

MIN_LOGPROB = -9999.0  # stands for log(0), which JSON cannot carry (as vLLM reports it)


def top_alternatives(
    ids: np.ndarray, logprobs: np.ndarray, k: int
) -> tuple[tuple[int, float], ...]:
    """The top-k alternatives; tokens the chain removed (logprob -inf) are not alternatives."""
    pairs = zip(ids[:k], logprobs[:k], strict=True)
    return tuple((int(i), float(lp)) for i, lp in pairs if np.isfinite(lp))


def token_logprob(
    request: Request, token: int, chosen: float, top_ids: np.ndarray, top_lp: np.ndarray
) -> TokenLogprob | None:
    """The logprob entry of a generated token, when the request asked for logprobs."""
    k = request.params.logprobs
    if k is None:
        return None
    return TokenLogprob(
        token, max(float(chosen), MIN_LOGPROB), top_alternatives(top_ids, top_lp, k)
    )


def record_token(
    request: Request,
    token: int,
    lp: TokenLogprob | None,
    *,
    eos_ids: set[int],
    accepted: bool | None = None,
) -> str:
    """Record a generated token and return the text it completes; a constrained request also
    advances its matcher (unless the caller already did: `accepted`), and ends as soon as its
    output is complete and nothing may follow."""
    matcher = request.matcher
    if accepted is None:
        accepted = matcher is None or matcher.accept_token(token)
    delta = request.append_token(token, lp, eos_ids=eos_ids)
    if matcher is not None and not request.finished:
        if not accepted or matcher.is_terminated() or matcher.is_complete():
            delta += request.finish("stop")
    return delta


def runs_free(request: Request) -> bool:
    """A lazy constraint whose next draw needs no mask (before its trigger) decodes k tokens
    unmasked on device; the host keeps them up to the first after which a mask applies (later
    ones are drawn again, masked, from the same per-position keys, so the tokens are those of
    one-token steps)."""
    matcher = request.matcher
    return (
        isinstance(matcher, LazyMatcher)
        and request.params.mirostat == 0  # its state would count the dropped draws
        and matcher.is_free()
    )


def check_finite(request: Request, nonfinite: np.ndarray | None, i: int) -> None:
    """Raise (failing this request alone) when its row's logits held NaN or +inf."""
    if nonfinite is not None and nonfinite[i]:
        raise NonFiniteLogitsError(
            f"the logits of request {request.request_id} held NaN or +inf after "
            f"{len(request.output.token_ids)} generated tokens; the request was stopped"
        )
