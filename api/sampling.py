"""Request fields -> `SamplingParams`, generically: every field is applied or refused with a 400.

A field the front does not handle itself is looked up by name (after the vLLM / llama.cpp aliases
below) among `SamplingParams`' fields and passed to its constructor, which range-checks it. A
name with no counterpart is a 400 naming it. So new `SamplingParams` fields work here without
any change to this front.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from jaxserve.api.errors import APIError, bad_request, unknown_field, unsupported
from jaxserve.grammar import UnsupportedConstraintError, build_grammar
from jaxserve.sampling_params import SamplingParams

SAMPLING_FIELDS = frozenset(f.name for f in dataclasses.fields(SamplingParams))

# Other servers' names for SamplingParams fields.
ALIASES = {
    "n_predict": "max_tokens",
    "repeat_penalty": "repetition_penalty",
    "typ_p": "typical_p",
    "penalty_last_n": "repeat_last_n",
    "guided_json": "json_schema",
    "guided_regex": "regex",
    "guided_choice": "choice",
    "guided_grammar": "grammar",
}

# SamplingParams fields a request may not set by name: the response would have to carry what
# they compute, and the fronts return that only through their own fields (echo + logprobs).
FRONT_ONLY = frozenset({"prompt_logprobs", "logprobs", "max_tokens"})

# Accepted, with no effect on the output.
NO_OP = frozenset({"user", "metadata", "store", "service_tier", "cache_prompt"})

# Known features this server does not have yet: a clear 400 instead of "unrecognized".
NOT_YET = frozenset(
    {
        "structural_tag",
        "functions",
        "function_call",
        "prediction",
        "audio",
        "reasoning_effort",
        "web_search_options",
        "prompt_logprobs",
        "n_probs",
        "chat_template",
        "continue_final_message",
        "truncate_prompt_tokens",
    }
)


def check_stream_options(body: Any) -> bool:
    """Whether a usage chunk was asked for; stream_options without stream is refused."""
    if body.stream_options is None:
        return False
    if not body.stream:
        raise bad_request("stream_options is only allowed with stream: true", "stream_options")
    return bool(body.stream_options.include_usage)


def field_values(body: BaseModel, handled: Iterable[str]) -> dict[str, Any]:
    """The request's set, non-null fields (declared and extra) that the front did not handle."""
    skip = frozenset(handled)
    values = {name: getattr(body, name) for name in body.model_fields_set if name not in skip}
    values.update({k: v for k, v in (body.model_extra or {}).items() if k not in skip})
    return {k: v for k, v in values.items() if v is not None}


def build_params(
    body: BaseModel,
    *,
    handled: Iterable[str],
    fixed: Mapping[str, Any],
    adapters: Sequence[str] = (),
    routed: str | None = None,
) -> SamplingParams:
    """`fixed` holds the SamplingParams values the front computed itself (max_tokens, logprobs);
    `adapters`: the model's LoRA adapters in load order; `routed`: the adapter the request's
    `model` named."""
    values = field_values(body, handled)
    lora = values.get("lora")
    if isinstance(lora, list):  # llama.cpp: [{"id": i, "scale": s}, ...]
        values.pop("lora")
        values.update(llama_cpp_lora(lora, adapters))
    if routed is not None:
        if "lora" in values:
            message = f"lora: the model `{routed}` already selects an adapter"
            raise bad_request(message, "lora")
        values["lora"] = routed
    return params_from_values(values, fixed)


def llama_cpp_lora(entries: list, adapters: Sequence[str]) -> dict[str, Any]:
    """llama.cpp's per-request adapters as `lora` / `lora_scale`: entries with scale 0 are off,
    and one adapter at most may be on."""
    on = []
    for i, entry in enumerate(entries):
        where = f"lora[{i}]"
        if not isinstance(entry, dict) or set(entry) - {"id", "scale"} or "id" not in entry:
            raise bad_request(f'{where}: expected {{"id": int, "scale": number}}', "lora")
        index, scale = entry["id"], entry.get("scale", 1.0)
        if not isinstance(index, int) or isinstance(index, bool):
            raise bad_request(f"{where}.id: an adapter id (an integer)", "lora")
        if not 0 <= index < len(adapters):
            raise bad_request(f"{where}.id: no adapter {index} ({len(adapters)} loaded)", "lora")
        if not isinstance(scale, int | float) or isinstance(scale, bool):
            raise bad_request(f"{where}.scale: a number", "lora")
        if scale != 0:
            on.append((adapters[index], float(scale)))
    if len(on) > 1:
        raise unsupported("lora", "may enable one adapter per request (the others with scale 0)")
    return {"lora": on[0][0], "lora_scale": on[0][1]} if on else {}


def params_from_values(values: Mapping[str, Any], fixed: Mapping[str, Any]) -> SamplingParams:
    """SamplingParams from request fields by name; raises an APIError (400) naming the field."""
    kwargs: dict[str, Any] = {}
    names: dict[str, str] = {}  # SamplingParams field -> the request's name for it
    for name, value in values.items():
        if name in NO_OP:
            continue
        if name == "modalities":
            if value != ["text"]:
                raise unsupported("modalities", 'supports only ["text"]')
            continue
        if name in NOT_YET:
            raise unsupported(name)
        target = ALIASES.get(name, name)
        if target not in SAMPLING_FIELDS or target in FRONT_ONLY:
            raise unknown_field(name)
        if target == "seed" and value == -1:  # llama.cpp: -1 = a random seed
            continue
        kwargs[target] = _plain(value)
        names[target] = name
    kwargs.update(fixed)
    try:
        params = SamplingParams(**kwargs)
    except ValueError as error:
        raise param_error(error, names) from None
    except TypeError:  # a value of the wrong shape: find which one
        for target, value in kwargs.items():
            try:
                SamplingParams(**{target: value})
            except (ValueError, TypeError):
                name = names.get(target, target)
                raise bad_request(f"{name}: invalid value {value!r}", name) from None
        raise bad_request("invalid sampling parameters") from None
    check_constraint(params, names)
    return params


def check_constraint(params: SamplingParams, names: Mapping[str, str]) -> None:
    """Parse the constraint now, so a spec the compiler refuses is a 400 naming the field."""
    spec = params.constraint
    if spec is None:
        return
    kind = next(iter(spec))
    name = names.get(kind, kind)
    try:
        build_grammar(spec)
    except UnsupportedConstraintError as error:
        raise bad_request(f"{name}: {error}", name, "unsupported_constraint") from None


def param_error(error: Exception, names: Mapping[str, str] | None = None) -> APIError:
    """A ValueError from SamplingParams or the engine ("top_k must be ...") as a 400 whose `param`
    is the field it names (its leading identifier), in the request's own spelling."""
    message = str(error)
    match = re.match(r"[a-z_]+", message)
    field = match.group(0) if match else None
    if field is not None and field not in SAMPLING_FIELDS:
        field = None
    if field is not None and names and names.get(field, field) != field:
        sent = names[field]  # the request used another server's name for it
        message, field = sent + message[len(field) :], sent
    code = "unsupported_parameter" if "not supported" in message else "invalid_value"
    return bad_request(message, field, code)


def _plain(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_plain(v) for v in value)
    return value
