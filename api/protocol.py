"""Request bodies of the OpenAI-compatible HTTP front (pydantic, strict types).

Standard OpenAI fields are declared here. Chat and completion bodies also accept extra fields:
`api/sampling.py` maps each one by name (vLLM and llama.cpp spellings) onto a `SamplingParams`
field or rejects it with a 400 naming it, so no field is ever accepted and ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

Role = Literal["system", "developer", "user", "assistant", "tool"]


def _text_error(value: object, path: str = "") -> tuple[str, str] | None:
    """(path, why) of the first string in a JSON value that is not valid Unicode text: JSON may
    spell lone UTF-16 surrogates (`"\\ud800"`), which no UTF-8 text (or tokenizer) can hold."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            bad = value[error.start]
            return path, f"contains a lone surrogate (U+{ord(bad):04X}), which is not valid text"
        return None
    if isinstance(value, dict):
        items = ((f"{path}.{k}" if path else str(k), k, v) for k, v in value.items())
        for where, key, item in items:
            found = _text_error(key, where) or _text_error(item, where)
            if found:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _text_error(item, f"{path}[{i}]")
            if found:
                return found
    return None


class _Body(BaseModel):
    @model_validator(mode="before")
    @classmethod
    def _valid_text(cls, data: Any) -> Any:
        found = _text_error(data)
        if found is not None:  # `errors.validation_error` names the field from `param`
            path, why = found
            raise PydanticCustomError("invalid_text", "{param}: " + why, {"param": path})
        return data


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _StrictBody(_Body):
    """Top-level bodies without extra fields (nested models are checked with their body)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class _Open(_Body):
    """Top-level bodies: extra fields are kept for `api/sampling.py` to map or reject."""

    model_config = ConfigDict(extra="allow", strict=True)


class ChatMessage(_Strict):
    role: Role
    # A string, or content parts ({"type": "text", "text": ...}; other part types are refused).
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None


class StreamOptions(_Strict):
    include_usage: bool | None = None


class SamplingExtensions(_Open):
    """vLLM / llama.cpp extensions, declared for the schema; any other `SamplingParams` field name
    (or known alias) is accepted as an extra field too."""

    top_k: int | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int | None = None
    ignore_eos: bool | None = None
    stop_token_ids: list[int] | None = None


class _Common(SamplingExtensions):
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    # Accepted and without effect on the output.
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    add_generation_prompt: bool | None = None  # vLLM's: False leaves out the assistant prefix


class CompletionRequest(_Common):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = None
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None


class TokenizeRequest(_StrictBody):
    """vLLM's /tokenize: either `prompt` or chat `messages`."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    return_token_strs: bool = False


class DetokenizeRequest(_StrictBody):
    model: str | None = None
    tokens: list[int]


class EmbeddingRequest(_StrictBody):
    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None  # accepted and without effect
