"""Speculative decoding on SmolLM2 in its default int8: an editing request (the answer repeats the
prompt) gives the tokens plain decoding gives, greedy and seeded, and most drafts are accepted;
the server reports the drafts in /metrics."""

from __future__ import annotations

import httpx
import pytest

from jaxserve import LLM, SamplingParams
from jaxserve.api.async_engine import AsyncEngine
from jaxserve.api.openai_server import Served, ServerConfig, create_app
from tests.http_server import running

pytestmark = pytest.mark.slow

CODE = """def area(width, height):
    return width * height


def perimeter(width, height):
    return 2 * (width + height)
"""
MESSAGES = [
    [{"role": "user", "content": f"Rename width to w in this code, return all of it:\n{CODE}"}],
    [{"role": "user", "content": "Write two sentences about the sea."}],
]


@pytest.fixture(scope="module")
def pair(smollm2_path):
    common = dict(max_model_len=512, max_num_seqs=4)
    plain = LLM(str(smollm2_path), **common)
    spec = LLM(str(smollm2_path), speculative="ngram", num_speculative_tokens=4, **common)
    return plain, spec


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_tokens=96, temperature=0.0, logprobs=1),
        SamplingParams(max_tokens=96, temperature=0.7, top_p=0.9, seed=4),
    ],
    ids=["greedy", "seeded"],
)
def test_the_same_text_as_plain_decoding(pair, params):
    plain, spec = pair
    before = spec.engine.speculator.num_proposed, spec.engine.speculator.num_accepted
    want = plain.chat(MESSAGES, params)
    got = spec.chat(MESSAGES, params)
    for a, b in zip(want, got, strict=True):
        assert a.token_ids == b.token_ids
        assert a.text == b.text
        if a.logprobs is not None:
            assert [x.logprob for x in a.logprobs] == [x.logprob for x in b.logprobs]
    proposed = spec.engine.speculator.num_proposed - before[0]
    accepted = spec.engine.speculator.num_accepted - before[1]
    if params.temperature == 0.0:
        assert accepted > 0.3 * proposed > 0


def test_metrics_count_drafts(pair):
    _, spec = pair
    engine = AsyncEngine(spec.engine)
    app = create_app(ServerConfig(model_names=("smol",)), Served.from_llm(spec, engine))
    with running(app) as url, httpx.Client(base_url=url, timeout=300) as client:
        body = {"messages": MESSAGES[0], "max_tokens": 48, "temperature": 0}
        assert client.post("/v1/chat/completions", json=body).status_code == 200
        metrics = client.get("/metrics").text
    engine.shutdown()
    lines = {
        line.split()[0]: float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith("jaxserve_engine_") and "draft" in line
    }
    assert lines['jaxserve_engine_draft_tokens_total{model="smol"}'] > 0
    assert 0 < lines['jaxserve_engine_accepted_draft_tokens_total{model="smol"}']


def test_a_draft_model_gives_the_targets_text(pair, smollm2_path):
    """SmolLM2 in f32 drafts for SmolLM2 in int8 (the default): the int8 model's text, with
    most drafts accepted (the two formats agree on most greedy tokens)."""
    plain, _ = pair
    drafted = LLM(
        str(smollm2_path),
        max_model_len=512,
        max_num_seqs=4,
        speculative="draft",
        speculative_model=str(smollm2_path),
        speculative_weights="f32",
    )
    params = SamplingParams(max_tokens=64, temperature=0.0)
    for a, b in zip(plain.chat(MESSAGES, params), drafted.chat(MESSAGES, params), strict=True):
        assert a.token_ids == b.token_ids
    speculator = drafted.engine.speculator
    assert speculator.num_accepted > 0.5 * speculator.num_proposed > 0
