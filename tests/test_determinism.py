"""Seeded output is a function of (model, prompt, params, seed) only, with the defaults users get:
SmolLM2 in int8, prefix caching on. Every comparison is bit for bit (token ids and logprobs)."""

from __future__ import annotations

import random

import pytest

from jaxserve import LLM, SamplingParams
from jaxserve.outputs import RequestOutput
from tests.engine_run import run_requests
from tests.kv_pages import kv_bytes

pytestmark = pytest.mark.slow

SYSTEM = (
    "<|im_start|>system\n"
    "You are a helpful assistant named SmolLM, trained by Hugging Face.<|im_end|>\n"
)
QUESTIONS = [
    "Write a short poem about the sea and the wind over it.",
    "List three facts about the planet Mars, one per line.",
    "What is the capital of France? Answer in one sentence.",
    "Explain in two sentences why the sky looks blue on a clear day.",
    "Give me a recipe for pancakes with exactly four ingredients.",
    "Name five animals that live in the Arctic and say what they eat.",
]


def chat(question: str) -> str:
    return f"{SYSTEM}<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


TARGETS = [
    (
        chat(QUESTIONS[0]),
        SamplingParams(max_tokens=24, temperature=0.8, top_p=0.9, seed=7, logprobs=2),
    ),
    (chat(QUESTIONS[1]), SamplingParams(max_tokens=24, temperature=0.0, logprobs=1)),
]


def fillers(count: int, seed: int) -> list[tuple[str, SamplingParams]]:
    """Other requests of every kind: lengths, sampler stages, constraints, seeds."""
    rng = random.Random(seed)
    kinds = [
        dict(temperature=0.0),
        dict(temperature=1.0, top_k=40, min_p=0.05, repetition_penalty=1.1),
        dict(temperature=0.7, typical_p=0.9, presence_penalty=0.5, frequency_penalty=0.2),
        dict(temperature=0.9, dry_multiplier=0.8, xtc_probability=0.5, xtc_threshold=0.1),
        dict(temperature=0.6, regex=r"[A-Z][a-z]+( [a-z]+){2,6}\."),
        dict(
            temperature=0.5,
            json_schema={"type": "object", "properties": {"n": {"type": "integer"}}},
        ),
        dict(temperature=1.0, mirostat=2),
    ]
    out = []
    for _ in range(count):
        question = rng.choice(QUESTIONS) + " " + " ".join(["Please."] * rng.randrange(0, 40))
        fields = dict(rng.choice(kinds), max_tokens=rng.randrange(4, 40), seed=rng.randrange(1000))
        out.append((chat(question), SamplingParams(**fields)))
    return out


def same(a: RequestOutput, b: RequestOutput) -> bool:
    return a.token_ids == b.token_ids and a.logprobs == b.logprobs


@pytest.fixture(scope="module")
def llm(smollm2_path) -> LLM:
    return LLM(str(smollm2_path), max_num_seqs=64)  # int8 weights, prefix caching: defaults


@pytest.fixture(scope="module")
def reference(llm) -> list[RequestOutput]:
    """Each target alone; the first on an empty prefix cache (the second shares its system
    prompt)."""
    outs = [run_requests(llm, [t])[0] for t in TARGETS]
    assert outs[0].num_cached_tokens == 0
    return outs


def test_a_repeat_hits_the_prefix_cache_and_gives_the_same_output(llm, reference):
    for target, first in zip(TARGETS, reference, strict=True):
        again = run_requests(llm, [target])[0]
        assert again.num_cached_tokens > 0
        assert same(again, first)


def test_a_shared_prefix_cached_by_another_request_changes_nothing(llm, reference):
    run_requests(llm, [(chat(QUESTIONS[0]) + "Sure, here", SamplingParams(max_tokens=3))])
    out = run_requests(llm, TARGETS[:1])[0]
    assert out.num_cached_tokens > 0
    assert same(out, reference[0])


@pytest.mark.parametrize("size", [3, 17, 64])
def test_mixed_batches_of_every_size_give_each_target_its_own_output(llm, reference, size):
    batch = fillers(size - len(TARGETS), seed=size) + TARGETS
    random.Random(size).shuffle(batch)
    outs = run_requests(llm, batch)
    for target, expected in zip(TARGETS, reference, strict=True):
        assert same(outs[batch.index(target)], expected)


def test_chunked_prefill_preemption_and_one_token_steps_change_nothing(smollm2_path, reference):
    """Prompts prefilled 32 tokens at a time, one decode token per step, and a KV pool so small
    that running requests are preempted and recomputed."""
    small = LLM(
        str(smollm2_path),
        max_num_seqs=8,
        prefill_chunk=32,
        decode_steps=1,
        max_num_batched_tokens=64,
        kv_cache_bytes=kv_bytes(smollm2_path, 24),  # 24 pages of 16 tokens
    )
    batch = fillers(8, seed=1) + TARGETS
    outs = run_requests(small, batch)
    assert small.engine.scheduler.num_preemptions > 0
    for target, expected in zip(TARGETS, reference, strict=True):
        assert same(outs[batch.index(target)], expected)


def test_the_same_seeded_request_over_http_alone_and_among_others(llm):
    """What a client of `jaxserve serve` gets: the same seeded /v1/completions request, alone and
    then sent together with 12 other streaming requests of every kind, returns the same tokens
    and logprobs (the defaults: int8, prefix caching; the second copy hits the prefix cache)."""
    import asyncio

    import httpx

    from jaxserve.api.async_engine import AsyncEngine
    from jaxserve.api.openai_server import Served, ServerConfig, create_app
    from tests.http_server import running

    target = {
        "prompt": chat(QUESTIONS[0]),
        "max_tokens": 24,
        "temperature": 0.8,
        "top_p": 0.9,
        "seed": 7,
        "logprobs": 2,
    }
    kinds = [
        {"temperature": 0.0},
        {"temperature": 1.0, "top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1},
        {"temperature": 0.7, "presence_penalty": 0.5, "frequency_penalty": 0.2},
        {"temperature": 0.6, "regex": r"[A-Z][a-z]+( [a-z]+){2,6}\."},
        {"temperature": 0.9, "seed": 99, "logprobs": 3},
    ]
    others = [
        {"prompt": chat(QUESTIONS[i % len(QUESTIONS)]) + "Sure." * i, "max_tokens": 8 + 3 * i}
        | kinds[i % len(kinds)]
        | {"stream": True}
        for i in range(12)
    ]

    def tokens(body: dict) -> tuple:
        choice = body["choices"][0]
        lp = choice["logprobs"]
        return choice["text"], tuple(lp["tokens"]), tuple(lp["token_logprobs"])

    async def send(client: httpx.AsyncClient, body: dict) -> httpx.Response:
        if not body.get("stream"):
            return await client.post("/v1/completions", json=body)
        async with client.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            async for _ in r.aiter_lines():
                pass
            return r

    async def main(url: str) -> tuple:
        async with httpx.AsyncClient(base_url=url, timeout=600) as client:
            alone = await send(client, target)
            assert alone.status_code == 200, alone.text
            crowd = await asyncio.gather(
                *(send(client, b) for b in [*others[:6], target, *others[6:]])
            )
            together = crowd[6]
            assert together.status_code == 200, together.text
            return tokens(alone.json()), tokens(together.json()), together.json()["usage"]

    engine = AsyncEngine(llm.engine)
    app = create_app(ServerConfig(model_names=("smollm2",)), Served.from_llm(llm, engine))
    try:
        with running(app) as url:
            alone, together, usage = asyncio.run(main(url))
    finally:
        engine.shutdown()
    assert len(alone[1]) == 24
    assert together == alone
    assert usage["prompt_tokens_details"]["cached_tokens"] > 0
