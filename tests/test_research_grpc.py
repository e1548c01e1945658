"""The research hooks over gRPC: the logit lens, uncertainty and hidden states of a Generate call
against offline `LLM` generation, refusals naming the field, and steering by an inline vector."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from google.protobuf import struct_pb2

from jaxserve import LLM, SamplingParams
from jaxserve.api import jaxserve_v1_pb2 as pb
from jaxserve.api import jaxserve_v1_pb2_grpc as pb_grpc
from jaxserve.api.async_engine import AsyncEngine
from jaxserve.api.openai_server import Served, ServerConfig, ServerState
from jaxserve.api.responses import token_text
from jaxserve.outputs import RequestOutput
from tests.http_server import grpc_running

PROMPT = "The ocean is deep."
GREEDY = {"max_tokens": 5, "temperature": 0, "ignore_eos": True}
HOOKS = {
    "return_hidden_states": [0, 1],
    "hidden_positions": "all",
    "logit_lens": [1],
    "return_uncertainty": True,
}


@pytest.fixture(scope="module")
def llm(tiny_gguf) -> LLM:
    return LLM(
        str(tiny_gguf),
        weights="int8",
        max_model_len=64,
        capture_layers=3,
        steering_slots=2,
        compilation_cache_dir="",
    )


@pytest.fixture(scope="module")
def expected(llm) -> RequestOutput:
    """The offline result, computed before the server's engine thread starts."""
    params = SamplingParams(**GREEDY, **HOOKS)
    return llm.generate(PROMPT, params)[0]


@pytest.fixture(scope="module")
def stub(llm, expected):
    engine = AsyncEngine(llm.engine)
    state = ServerState(ServerConfig(model_names=("tiny",)))
    state.served = Served.from_llm(llm, engine)
    try:
        with grpc_running(state) as address, grpc.insecure_channel(address) as channel:
            yield pb_grpc.GenerationStub(channel)
    finally:
        engine.shutdown()


def _generate(stub, **values) -> list[pb.GenerateResponse]:
    extra = struct_pb2.Struct()
    extra.update(GREEDY | values)
    request = pb.GenerateRequest(text=PROMPT, sampling=pb.SamplingParams(extra=extra))
    return list(stub.Generate(request))


def test_lens_uncertainty_and_hidden_states_match_offline_generation(stub, llm, expected):
    responses = _generate(stub, **HOOKS)
    tokens = [t for r in responses for t in r.token_ids]
    assert tokens == expected.token_ids
    for r in responses:  # one entry per new token, in the response that carries it
        assert len(r.logit_lens) == len(r.uncertainty) == len(r.token_ids)
    lens = [entry for r in responses for entry in r.logit_lens]
    for entry, want in zip(lens, expected.logit_lens, strict=True):
        assert [layer.layer for layer in entry.layers] == [1]
        top = entry.layers[0].top
        assert [t.token_id for t in top] == [t for t, _ in want[1]]
        assert [t.logprob for t in top] == [np.float32(x) for _, x in want[1]]
        assert [t.token for t in top] == [token_text(llm.tokenizer, t)[0] for t, _ in want[1]]
    uncertainty = [u for r in responses for u in r.uncertainty]
    assert len(uncertainty) == len(expected.uncertainty) == 5
    for got, want in zip(uncertainty, expected.uncertainty, strict=True):
        assert got.entropy == pytest.approx(want.entropy, abs=1e-6)
        assert got.processed_entropy == pytest.approx(want.processed_entropy, abs=1e-6)
        assert got.margin == pytest.approx(want.margin, abs=1e-6)

    assert [r.HasField("hidden_states") for r in responses][-1]
    assert not any(r.HasField("hidden_states") for r in responses[:-1])
    hidden = responses[-1].hidden_states
    assert list(hidden.positions) == expected.hidden_positions
    assert hidden.hidden_size == llm.config.hidden_size
    assert [layer.layer for layer in hidden.layers] == ["0", "1", "final"]
    shape = (len(hidden.positions), hidden.hidden_size)
    for layer in hidden.layers:
        key = "final" if layer.layer == "final" else int(layer.layer)
        rows = np.frombuffer(layer.data, "<f4").reshape(shape)
        np.testing.assert_array_equal(rows, expected.hidden_states[key])


def test_a_layer_out_of_range_is_invalid_argument(stub):
    with pytest.raises(grpc.RpcError) as error:
        _generate(stub, return_hidden_states=[7])
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "return_hidden_states" in error.value.details()


def test_a_zero_inline_steering_vector_changes_no_token(stub, llm, expected):
    plain = [t for r in _generate(stub) for t in r.token_ids]
    steered = _generate(stub, steering={"1": [0.0] * llm.config.hidden_size})
    assert [t for r in steered for t in r.token_ids] == plain == expected.token_ids
    assert not any(r.logit_lens or r.uncertainty or r.HasField("hidden_states") for r in steered)
