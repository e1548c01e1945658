"""Beam search (`jaxserve/engine/beam.py`): the beams and scores of Hugging Face `transformers`'
`generate(num_beams=...)` on tiny random checkpoints in f32, forks on shared pages copied on
write, constraints inside beams, aborts, preemption, the API's refusals and the HTTP fields.
The real-model checks (SmolLM2 int8, the defaults) are in `test_beam_search_models.py`."""

from __future__ import annotations

import json

import pytest
import torch
from fastapi.testclient import TestClient

from jaxserve import LLM, SamplingParams
from jaxserve.api.async_engine import AsyncEngine
from jaxserve.api.openai_server import Served, ServerConfig, create_app
from jaxserve.engine.page_allocator import PageAllocator
from jaxserve.engine.request import Request
from jaxserve.engine.scheduler import Scheduler, SchedulerConfig
from jaxserve.grammar import matches
from tests.tiny_hf import NUM_TOKENS, transformers, write_tiny_hf

PROMPTS = [
    [1, 77, 120, 3, 250, 18, 42, 42, 9, 101],
    [1, 5, 9, 200, 64, 33, 18, 7, 7, 90, 12, 4, 8, 150],
]
CONFIGS = [  # beam_width, max_tokens, length_penalty, early_stopping
    (3, 12, 1.0, False),
    (4, 20, 0.5, True),
    (2, 20, 1.0, "never"),
    (5, 16, -0.5, False),
]


@pytest.fixture(scope="module", params=["llama3-gqa", "qwen2-gqa"])
def checkpoint(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    write_tiny_hf(folder, request.param, seed=1, vocab=NUM_TOKENS)
    llm = LLM(str(folder), weights="f32", max_model_len=128)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    return llm, model


def _theirs(model, prompt, eos, width, max_tokens, length_penalty, early_stopping):
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            num_beams=width,
            num_return_sequences=width,
            max_new_tokens=max_tokens,
            do_sample=False,
            length_penalty=length_penalty,
            early_stopping=early_stopping,
            eos_token_id=eos,
            pad_token_id=eos[0],
            output_scores=True,
            return_dict_in_generate=True,
        )
    beams = []
    for row, score in zip(out.sequences, out.sequences_scores, strict=True):
        tokens = row[len(prompt) :].tolist()
        ends = [i for i, t in enumerate(tokens) if t in eos]
        beams.append((tokens[: ends[0] + 1] if ends else tokens, float(score)))
    return beams


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(map(str, c)))
def test_beams_and_scores_match_transformers(checkpoint, config):
    llm, model = checkpoint
    width, max_tokens, length_penalty, early_stopping = config
    eos = sorted(llm.tokenizer.eos_ids)
    ours = llm.beam_search(
        PROMPTS,
        beam_width=width,
        max_tokens=max_tokens,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
    )
    for prompt, beams in zip(PROMPTS, ours, strict=True):
        theirs = _theirs(model, prompt, eos, *config)
        assert [b.token_ids for b in beams] == [t for t, _ in theirs]
        for beam, (tokens, score) in zip(beams, theirs, strict=True):
            assert beam.beam_score == pytest.approx(score, abs=1e-4)
            n = len(tokens)
            assert beam.cumulative_logprob == pytest.approx(score * n**length_penalty, abs=1e-3)
            assert beam.finish_reason == ("stop" if tokens[-1] in eos else "length")
    assert llm.engine.scheduler.pages.num_used == 0  # every fork's pages came back


def test_forks_copy_the_shared_page_before_writing(checkpoint, monkeypatch):
    """Beams fork on their parents' pages (the partial one copied on write); each beam's
    summed logprob is that of its tokens scored from scratch, as one prompt."""
    llm, _ = checkpoint
    runner, copied = llm.engine.runner, []
    real = runner.copy_pages

    def spy(pairs):
        copied.extend(pairs)
        real(pairs)

    monkeypatch.setattr(runner, "copy_pages", spy)
    prompt = PROMPTS[1]
    beams = llm.beam_search(prompt, beam_width=3, max_tokens=12, params=_no_eos())[0]
    assert copied and all(src != dst for src, dst in copied)
    for beam in beams:
        scored = llm.generate(
            [prompt + beam.token_ids], SamplingParams(max_tokens=0, prompt_logprobs=0)
        )[0].prompt_logprobs[len(prompt) :]
        total = sum(entry.logprob for entry in scored)
        assert beam.cumulative_logprob == pytest.approx(total, abs=1e-4)


def _no_eos(**kw) -> SamplingParams:
    return SamplingParams(ignore_eos=True, **kw)


def test_logprobs_are_the_scored_ones(checkpoint):
    llm, _ = checkpoint
    beams = llm.beam_search(PROMPTS[1], beam_width=2, max_tokens=8, params=_no_eos(logprobs=3))[0]
    for beam in beams:
        assert len(beam.logprobs) == len(beam.token_ids) == 8
        assert sum(e.logprob for e in beam.logprobs) == pytest.approx(beam.cumulative_logprob)
        assert all(len(e.top) == 3 for e in beam.logprobs)
        assert beam.finish_reason == "length"


def test_a_constraint_holds_in_every_beam(tiny_gguf):
    llm = LLM(str(tiny_gguf), max_model_len=128)
    pattern = "(ab|ba|c){1,4}!"
    params = SamplingParams(regex=pattern)
    for beam in llm.beam_search(["hello"], beam_width=4, max_tokens=24, params=params)[0]:
        assert beam.finish_reason == "stop", beam
        assert matches({"regex": pattern}, beam.text), beam.text
    assert llm.engine.scheduler.pages.num_used == 0


def test_abort_releases_every_page(tiny_gguf):
    llm = LLM(str(tiny_gguf), max_model_len=128)
    engine = llm.engine
    params = SamplingParams(use_beam_search=True, beam_width=3, max_tokens=30, ignore_eos=True)
    first = engine.add_request([1, 5, 9, 12], params)
    for _ in range(4):
        engine.step()
    assert engine.scheduler.pages.num_used > 0
    engine.abort(first.request_id)
    assert all(seq.output.finish_reason == "abort" for seq in first.group)
    while engine.has_unfinished():
        engine.step()
    assert engine.scheduler.pages.num_used == 0


def test_preempted_beams_give_the_same_beams(tiny_gguf):
    """A KV pool too small for the beams and three long requests: steps are preempted and
    recomputed, and the beams are those of the search alone."""
    alone = LLM(str(tiny_gguf), max_model_len=128).beam_search(
        [[1, 5, 9, 12, 40]], beam_width=4, max_tokens=40, params=_no_eos()
    )[0]
    small = LLM(str(tiny_gguf), max_model_len=128, kv_cache_bytes=14 * _page_bytes(tiny_gguf))
    long = SamplingParams(max_tokens=60, ignore_eos=True, temperature=0.0)
    beam = SamplingParams(use_beam_search=True, n=4, max_tokens=40, ignore_eos=True)
    others = [small.engine.add_request([1, 3 + i, 7], long) for i in range(3)]
    first = small.engine.add_request([1, 5, 9, 12, 40], beam)
    while small.engine.has_unfinished():
        small.engine.step()
    assert small.engine.scheduler.num_preemptions > 0
    assert all(o.finished for o in others)
    assert [s.output.token_ids for s in first.group] == [b.token_ids for b in alone]
    assert [s.output.beam_score for s in first.group] == [b.beam_score for b in alone]


def _page_bytes(path) -> int:
    llm = LLM(str(path), max_model_len=128)
    return llm.engine.runner.bytes_per_page(llm.engine.runner.config, llm.engine.config.page_size)


def _request(ids: list[int]) -> Request:
    return Request(0, ids, SamplingParams(), seed=0, max_len=64, detokenizer=None)


def test_scheduler_copies_a_shared_page_on_write():
    pages = PageAllocator(8, 4)
    scheduler = Scheduler(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=64), pages)
    parent = _request(list(range(6)))
    parent.pages, parent.num_computed = pages.allocate(2), 6
    children = [_request(list(range(6)) + [t]) for t in (7, 8)]
    for child in children:
        scheduler.fork(child, parent)
        assert child.pages == parent.pages and child.num_computed == 6
    scheduler.release(parent)
    assert [pages.refcount(p) for p in children[0].pages] == [2, 2]
    for child in children:
        scheduler.add(child)
    scheduler.schedule()
    first, second = children
    assert first.pages[0] == second.pages[0]  # the full page stays shared
    assert first.pages[1] != second.pages[1]  # the partial one: one holder got a copy
    # the first written copies (the page then had two holders), the second writes in place
    assert scheduler.copies == [(second.pages[1], first.pages[1])]


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        (dict(use_beam_search=True, stop=["x"]), "stop"),
        (dict(use_beam_search=True, beam_width=2, n=3), "n"),
        (dict(use_beam_search=True, beam_width=11), "beam_width"),
        (dict(use_beam_search=True, mirostat=2), "mirostat"),
        (dict(use_beam_search=True, max_tokens=0), "max_tokens"),
        (dict(use_beam_search=True, early_stopping="sometimes"), "early_stopping"),
        (dict(beam_width=2), "beam_width"),
        (dict(length_penalty=0.5), "length_penalty"),
    ],
)
def test_refusals_name_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kw)


def test_the_http_fields(tiny_gguf):
    llm = LLM(str(tiny_gguf), max_model_len=128)
    expected = llm.beam_search("hello there", beam_width=3, max_tokens=10, n=2)[0]
    engine = AsyncEngine(llm.engine)
    try:
        app = create_app(ServerConfig(model_names=("m",)), Served.from_llm(llm, engine))
        with TestClient(app) as client:
            body = {"model": "m", "prompt": "hello there", "max_tokens": 10, "n": 2}
            beam = {"use_beam_search": True, "beam_width": 3}
            r = client.post("/v1/completions", json={**body, **beam})
            assert r.status_code == 200, r.text
            texts = [c["text"] for c in sorted(r.json()["choices"], key=lambda c: c["index"])]
            assert texts == [b.text for b in expected]
            assert r.json()["usage"]["completion_tokens"] == sum(len(b.token_ids) for b in expected)
            r = client.post("/v1/completions", json={**body, **beam, "stream": True})
            assert r.status_code == 200
            streamed = ["", ""]
            for line in r.text.splitlines():
                if line.startswith("data: {"):
                    for choice in json.loads(line[6:])["choices"]:
                        streamed[choice["index"]] += choice["text"]
            assert streamed == texts
            for extra, field in (
                ({"stop": ["x"]}, "stop"),
                ({"beam_width": 1}, "n"),
                ({"use_beam_search": False}, "beam_width"),
            ):
                bad = client.post("/v1/completions", json={**body, **beam, **extra})
                assert bad.status_code == 400, bad.text
                assert field in bad.json()["error"]["message"]
            chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6}
            r = client.post("/v1/chat/completions", json={**chat, **beam, "n": 3})
            assert r.status_code == 200 and len(r.json()["choices"]) == 3
    finally:
        engine.shutdown()
