"""Drive a real engine directly: add requests (chat-rendered text), step until all finish."""

from __future__ import annotations

from jaxserve import LLM, SamplingParams
from jaxserve.outputs import RequestOutput


def run_requests(llm: LLM, requests: list[tuple[str, SamplingParams]]) -> list[RequestOutput]:
    """One batch: every (prompt, params) queued at once; outputs in request order."""
    engine = llm.engine
    added = []
    for prompt, params in requests:
        ids = llm.tokenizer.encode(prompt, add_special=False, parse_special=True)
        added.append(engine.add_request(ids, params))
    while engine.has_unfinished():
        engine.step()
    return [r.output for r in added]
