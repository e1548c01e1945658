"""The OpenAI HTTP front on the tiny random model: outputs against offline `LLM` generation,
response and stream shapes, logprobs, stop strings, usage."""

from __future__ import annotations

import json

import httpx
import pytest

from jaxserve import LLM, SamplingParams
from jaxserve.api.async_engine import AsyncEngine
from jaxserve.api.openai_server import Served, ServerConfig, create_app
from tests.http_server import running

MESSAGES = [{"role": "user", "content": "Tell me about the sea."}]
PROMPTS = ["The sea is", "Once upon a time"]


def _llm(tiny_gguf) -> LLM:
    return LLM(str(tiny_gguf), weights="f32", max_num_seqs=4, decode_steps=4, max_model_len=256)


@pytest.fixture(scope="module")
def oracle(tiny_gguf) -> LLM:
    return _llm(tiny_gguf)


@pytest.fixture(scope="module")
def server(tiny_gguf):
    llm = _llm(tiny_gguf)
    engine = AsyncEngine(llm.engine)
    app = create_app(ServerConfig(model_names=("tiny", "tiny-alias")), Served.from_llm(llm, engine))
    with running(app) as url:
        yield url
    engine.shutdown()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server, timeout=60) as c:
        yield c


def _greedy(max_tokens: int, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, **kw)


def _events(response: httpx.Response) -> list:
    lines = [line for line in response.text.split("\n\n") if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


def test_chat_matches_offline_greedy_in_openai_shape(client, oracle):
    expected = oracle.chat(MESSAGES, _greedy(12))[0]
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 12, "temperature": 0}
    r = client.post("/v1/chat/completions", json={**body, "ignore_eos": True})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"].startswith("chatcmpl-") and out["object"] == "chat.completion"
    assert isinstance(out["created"], int) and out["model"] == "tiny"
    assert out["system_fingerprint"]
    [choice] = out["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "length"
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == expected.text
    assert choice["logprobs"] is None
    usage = out["usage"]
    assert usage["prompt_tokens"] == len(expected.prompt_token_ids)
    assert usage["completion_tokens"] == 12 == len(expected.token_ids)
    assert usage["total_tokens"] == usage["prompt_tokens"] + 12
    assert 0 <= usage["prompt_tokens_details"]["cached_tokens"] <= usage["prompt_tokens"]


def test_the_same_prompt_again_reports_cached_tokens(client):
    body = {"messages": MESSAGES + [{"role": "user", "content": "x" * 40}], "max_tokens": 2}
    first = client.post("/v1/chat/completions", json=body).json()["usage"]
    again = client.post("/v1/chat/completions", json=body).json()["usage"]
    assert again["prompt_tokens"] == first["prompt_tokens"]
    # The prompt's full pages are found in the prefix cache the second time.
    assert again["prompt_tokens_details"]["cached_tokens"] > 0


@pytest.mark.parametrize("form", ["string", "strings", "token-ids", "token-id-lists"])
def test_completions_prompt_forms_match_offline(client, oracle, form):
    ids = [oracle.tokenize(p) for p in PROMPTS]
    forms = {"string": PROMPTS[0], "strings": PROMPTS, "token-ids": ids[0], "token-id-lists": ids}
    request_prompt = forms[form]
    texts = [o.text for o in oracle.generate(ids, _greedy(6))]
    if form in ("string", "token-ids"):
        texts = texts[:1]
    r = client.post(
        "/v1/completions",
        json={"prompt": request_prompt, "max_tokens": 6, "temperature": 0, "ignore_eos": True},
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"].startswith("cmpl-") and out["object"] == "text_completion"
    assert [c["index"] for c in out["choices"]] == list(range(len(texts)))
    assert [c["text"] for c in out["choices"]] == texts
    assert out["usage"]["prompt_tokens"] == sum(len(i) for i in ids[: len(texts)])
    assert out["usage"]["completion_tokens"] == 6 * len(texts)


def test_chat_stream_has_role_deltas_finish_usage_and_done(client, oracle):
    expected = oracle.chat(MESSAGES, _greedy(10))[0]
    body = {
        "messages": MESSAGES,
        "max_completion_tokens": 10,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _events(r)
    assert len({e["id"] for e in events}) == 1
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    *content, finish, usage = events[1:]
    assert all(e["usage"] is None for e in events[:-1])
    assert "".join(e["choices"][0]["delta"]["content"] for e in content) == expected.text
    assert all(e["choices"][0]["finish_reason"] is None for e in content)
    assert finish["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "length",
    }
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 10


def test_stream_without_usage_option_has_no_usage_field(client):
    body = {"messages": MESSAGES, "max_tokens": 3, "stream": True}
    events = _events(client.post("/v1/chat/completions", json=body))
    assert all("usage" not in e for e in events)
    assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_chat_logprobs_match_offline(client, oracle):
    expected = oracle.chat(MESSAGES, _greedy(5, logprobs=3))[0]
    body = {"messages": MESSAGES, "max_tokens": 5, "temperature": 0, "ignore_eos": True}
    r = client.post("/v1/chat/completions", json={**body, "logprobs": True, "top_logprobs": 3})
    content = r.json()["choices"][0]["logprobs"]["content"]
    assert len(content) == 5
    tok = oracle.tokenizer
    for entry, want in zip(content, expected.logprobs, strict=True):
        assert entry["logprob"] == pytest.approx(want.logprob, abs=1e-4)
        assert bytes(entry["bytes"]) == tok.token_bytes(want.token_id, special=True)
        assert len(entry["top_logprobs"]) == 3
        top = [(bytes(t["bytes"]), t["logprob"]) for t in entry["top_logprobs"]]
        for (raw, lp), (i, want_lp) in zip(top, want.top, strict=True):
            assert raw == tok.token_bytes(i, special=True)
            assert lp == pytest.approx(want_lp, abs=1e-4)
    # Greedy: the chosen token is the most likely one.
    assert all(e["logprob"] == pytest.approx(e["top_logprobs"][0]["logprob"]) for e in content)


def test_completion_echo_with_prompt_logprobs_scores_the_prompt(client, oracle):
    text = "The sea is deep and blue"
    ids = oracle.tokenize(text)
    expected = oracle.generate(ids, SamplingParams(max_tokens=0, prompt_logprobs=2))[0]
    body = {"prompt": text, "max_tokens": 0, "echo": True, "logprobs": 2}
    out = client.post("/v1/completions", json=body).json()
    choice = out["choices"][0]
    assert choice["text"] == text
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(ids) == out["usage"]["prompt_tokens"]
    assert "".join(lp["tokens"]) == oracle.tokenizer.decode(ids)
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    want = [e.logprob for e in expected.prompt_logprobs[1:]]
    assert lp["token_logprobs"][1:] == pytest.approx(want, abs=1e-4)
    assert all(len(t) <= 2 for t in lp["top_logprobs"][1:])
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(len(ids))]


def test_completion_stream_with_echo_and_logprobs(client, oracle):
    expected = oracle.generate(PROMPTS[0], _greedy(6, logprobs=1))[0]
    body = {"prompt": PROMPTS[0], "max_tokens": 6, "temperature": 0, "ignore_eos": True}
    body |= {"stream": True, "echo": True, "logprobs": 1}
    events = _events(client.post("/v1/completions", json=body))
    choices = [e["choices"][0] for e in events]
    assert "".join(c["text"] for c in choices) == PROMPTS[0] + expected.text
    token_lps = [lp for c in choices for lp in c["logprobs"]["token_logprobs"]]
    n_prompt = len(expected.prompt_token_ids)
    assert token_lps[0] is None and len(token_lps) == n_prompt + 6
    assert token_lps[n_prompt:] == pytest.approx([e.logprob for e in expected.logprobs], abs=1e-4)
    assert choices[-1]["finish_reason"] == "length"


def test_stop_string_ends_generation_and_never_leaks(client, oracle):
    full = oracle.chat(MESSAGES, _greedy(24))[0].text
    stop = next(full[i : i + 2] for i in range(3, len(full) - 2) if full[i : i + 2].strip())
    expected = full[: full.index(stop)]
    body = {"messages": MESSAGES, "max_tokens": 24, "temperature": 0, "ignore_eos": True}
    body["stop"] = ["never-generated-stop", stop]
    out = client.post("/v1/chat/completions", json=body).json()["choices"][0]
    assert out["message"]["content"] == expected and out["finish_reason"] == "stop"
    events = _events(client.post("/v1/chat/completions", json={**body, "stream": True}))
    deltas = [e["choices"][0]["delta"].get("content", "") for e in events]
    assert "".join(deltas) == expected and all(stop not in d for d in deltas)
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    single = client.post("/v1/chat/completions", json={**body, "stop": stop}).json()
    assert single["choices"][0]["message"]["content"] == expected


def test_extension_fields_reach_the_engine(client, oracle):
    """`stop_token_ids` has no OpenAI counterpart: it goes to SamplingParams by name."""
    ids = oracle.chat(MESSAGES, _greedy(12))[0].token_ids
    stop_id = ids[4]
    expected = oracle.chat(MESSAGES, _greedy(12, stop_token_ids=(stop_id,)))[0]
    body = {"messages": MESSAGES, "max_tokens": 12, "temperature": 0, "ignore_eos": True}
    out = client.post("/v1/chat/completions", json={**body, "stop_token_ids": [stop_id]}).json()
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["choices"][0]["message"]["content"] == expected.text
    assert out["usage"]["completion_tokens"] == ids.index(stop_id) + 1


def test_seed_makes_sampling_reproducible(client):
    body = {"prompt": PROMPTS[1], "max_tokens": 12, "temperature": 1.0, "seed": 1234}
    first = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    assert client.post("/v1/completions", json=body).json()["choices"][0]["text"] == first
    texts = {
        client.post("/v1/completions", json={**body, "seed": s}).json()["choices"][0]["text"]
        for s in range(5)
    }
    assert len(texts) > 1  # the seed is applied, not ignored


def test_no_op_fields_are_accepted_and_change_nothing(client):
    body = {"messages": MESSAGES, "max_tokens": 6, "temperature": 0}
    plain = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]
    extras = {
        "user": "u-1",
        "metadata": {"k": "v"},
        "store": False,
        "service_tier": "auto",
        "parallel_tool_calls": True,
        "response_format": {"type": "text"},
        "tool_choice": "none",
        "top_p": None,
    }
    r = client.post("/v1/chat/completions", json={**body, **extras})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"] == plain


def test_content_parts_and_developer_role(client, oracle):
    messages = [
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "!"}],
        },
    ]
    as_text = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi\n!"},
    ]
    expected = oracle.chat(as_text, _greedy(5))[0].text
    body = {"messages": messages, "max_tokens": 5, "temperature": 0, "ignore_eos": True}
    out = client.post("/v1/chat/completions", json=body).json()
    assert out["choices"][0]["message"]["content"] == expected


def test_n_sequences_match_offline_generation_in_plain_and_streamed_responses(client, oracle):
    params = SamplingParams(n=3, max_tokens=6, seed=11, ignore_eos=True)
    expected = oracle.generate(PROMPTS[0], params)
    assert [o.index for o in expected] == [0, 1, 2]
    body = {"prompt": PROMPTS[0], "n": 3, "max_tokens": 6, "seed": 11, "ignore_eos": True}
    out = client.post("/v1/completions", json=body).json()
    assert [c["index"] for c in out["choices"]] == [0, 1, 2]
    assert [c["text"] for c in out["choices"]] == [o.text for o in expected]
    assert out["usage"]["prompt_tokens"] == len(expected[0].prompt_token_ids)  # counted once
    assert out["usage"]["completion_tokens"] == 18
    events = _events(client.post("/v1/completions", json={**body, "stream": True}))
    texts = ["", "", ""]
    for event in events:
        for choice in event["choices"]:
            texts[choice["index"]] += choice["text"]
    assert texts == [o.text for o in expected]


def test_models_tokenize_detokenize(client, oracle):
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["tiny", "tiny-alias"]
    assert all(m["object"] == "model" and m["owned_by"] for m in models["data"])
    assert client.get("/v1/models/tiny-alias").json()["id"] == "tiny-alias"
    out = client.post("/tokenize", json={"prompt": PROMPTS[0]}).json()
    assert out["tokens"] == oracle.tokenize(PROMPTS[0]) and out["count"] == len(out["tokens"])
    assert out["max_model_len"] == 256
    chat = client.post("/tokenize", json={"messages": MESSAGES}).json()["tokens"]
    rendered = oracle.render_chat(MESSAGES)
    assert chat == oracle.tokenizer.encode(rendered, add_special=False, parse_special=True)
    back = client.post("/detokenize", json={"tokens": out["tokens"]}).json()
    assert back["prompt"] == oracle.detokenize(out["tokens"])
    assert client.post("/detokenize", json={"tokens": [10**6]}).status_code == 400
    body = {"model": "tiny-alias", "messages": MESSAGES, "max_tokens": 2}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200 and r.json()["model"] == "tiny"


@pytest.mark.parametrize(
    ("extra", "spec"),
    [
        ({"choice": ["sea", "sky", "sand"]}, {"choice": ["sea", "sky", "sand"]}),
        ({"guided_regex": "[a-z]{2,5}!"}, {"regex": "[a-z]{2,5}!"}),
        ({"grammar": 'root ::= "(" [a-e]+ ")"'}, {"grammar": 'root ::= "(" [a-e]+ ")"'}),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "w", "schema": {"enum": ["x", 7]}},
                }
            },
            {"json_schema": {"enum": ["x", 7]}},
        ),
    ],
)
def test_constraint_fields_shape_the_output(client, extra, spec):
    from jaxserve.grammar import matches

    body = {"messages": MESSAGES, "max_tokens": 40, "temperature": 1.0, **extra}
    for seed in range(3):
        out = client.post("/v1/chat/completions", json={**body, "seed": seed}).json()
        choice = out["choices"][0]
        assert choice["finish_reason"] == "stop", out
        assert matches(spec, choice["message"]["content"]), choice
