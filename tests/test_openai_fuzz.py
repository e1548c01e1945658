"""Schemathesis over the app's own /openapi.json: requests generated from the schema (valid and
invalid) never get a 5xx, and every error is OpenAI-shaped."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from jaxserve import LLM
from jaxserve.api.async_engine import AsyncEngine
from jaxserve.api.openai_server import Served, ServerConfig, create_app


@pytest.fixture(scope="module")
def app(tiny_gguf):
    llm = LLM(str(tiny_gguf), weights="f32", max_num_seqs=4, decode_steps=4, max_model_len=64)
    engine = AsyncEngine(llm.engine)
    yield create_app(ServerConfig(model_names=("tiny",)), Served.from_llm(llm, engine))
    engine.shutdown()


def _operations(app) -> list:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    return [result.ok() for result in schema.get_all_operations()]


def test_every_operation_is_in_the_schema(app):
    found = {(op.method.upper(), op.path) for op in _operations(app)}
    assert {
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/{model_id}"),
        ("POST", "/tokenize"),
        ("POST", "/detokenize"),
        ("GET", "/health"),
        ("GET", "/metrics"),
    } <= found


def test_generated_requests_never_get_a_server_error(app):
    """Both generation modes: schema-valid bodies (which reach the engine) and invalid ones."""
    for operation in _operations(app):
        modes = [GenerationMode.POSITIVE]
        if operation.method.upper() == "POST":  # a GET without a body has no invalid form
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
            def check(case) -> None:
                response = case.call()
                case.validate_response(response, checks=[not_a_server_error])
                if response.status_code >= 400:
                    error = response.json()["error"]
                    assert set(error) == {"message", "type", "param", "code"} and error["message"]

            check()
