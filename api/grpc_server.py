"""The gRPC front (`jaxserve.v1.Generation`, proto in api/proto/): the same state, validation
and engine as the HTTP front, plus `grpc.health.v1` and server reflection.

HTTP statuses map onto gRPC codes: 400 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 404 NOT_FOUND,
429 RESOURCE_EXHAUSTED, 503 UNAVAILABLE. Cancelling a call aborts its request.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from jaxserve.api import jaxserve_v1_pb2 as pb
from jaxserve.api import jaxserve_v1_pb2_grpc as pb_grpc
from jaxserve.api.async_engine import StreamOutput
from jaxserve.api.errors import APIError, bad_request
from jaxserve.api.generation import Job, submit
from jaxserve.api.grpc_health import SERVICE, HealthServicer
from jaxserve.api.grpc_research import add_research
from jaxserve.api.middleware import key_matches
from jaxserve.api.reasoning import ReasoningFormat, ReasoningParser, reasoning_format
from jaxserve.api.responses import token_text
from jaxserve.api.sampling import params_from_values
from jaxserve.api.server_state import Served, ServerState
from jaxserve.api.serving_embedding import MAX_INPUTS, embed
from jaxserve.api.tool_calls import ToolUse, chat_prompt, history_tool_calls, tool_use
from jaxserve.errors import JaxserveError
from jaxserve.grammar.tool_parser import parse_tool_calls
from jaxserve.text.tokenizer import encode_prompt

log = logging.getLogger("jaxserve.api")
CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
FINISH = {
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "abort": pb.FINISH_REASON_ABORT,
    "tool_calls": pb.FINISH_REASON_TOOL_CALLS,
}
ROLES = ("system", "developer", "user", "assistant", "tool")


def _code(error: APIError) -> grpc.StatusCode:
    return CODES.get(error.status, grpc.StatusCode.INTERNAL)


def _details(error: APIError) -> str:
    return f"{error.param}: {error.message}" if error.param else error.message


def sampling_values(msg: pb.SamplingParams) -> dict[str, Any]:
    """Set fields by name, plus `extra` (integral JSON numbers become ints)."""
    values: dict[str, Any] = {}
    for field, value in msg.ListFields():
        if field.name == "extra":
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            values[field.name] = dict(value)
        elif field.is_repeated:
            values[field.name] = list(value)
        else:
            values[field.name] = value
    for name, value in json_format.MessageToDict(msg.extra).items():
        if name in values:
            raise bad_request(f"{name} is given twice (a field and in extra)", name)
        values[name] = _integral(value)
    return values


def _integral(value: Any) -> Any:
    """JSON numbers arrive as doubles: whole ones become ints (token ids, counts)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral(v) for v in value]
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    return value


class GenerationServicer(pb_grpc.GenerationServicer):
    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def Generate(self, request: pb.GenerateRequest, context) -> AsyncIterator:  # noqa: N802
        async with self._guard(context):
            served = self._start(request.model, request.constraint)
            kind = request.WhichOneof("prompt")
            if kind == "text":
                ids, text = encode_prompt(served.tokenizer, request.text), request.text
            elif kind == "token_ids":
                ids, text = list(request.token_ids.ids), None
            else:
                raise bad_request("give a prompt: text or token_ids", "prompt")
            job = self._job(
                request.sampling,
                ids,
                text,
                request.priority,
                default_max=16,
                constraint=self._constraint(request.constraint),
                lora=served.lora,
            )
        async for response in self._run(served, job, "prompt", context):
            yield response

    async def Chat(self, request: pb.ChatRequest, context) -> AsyncIterator:  # noqa: N802
        async with self._guard(context):
            served = self._start(request.model, request.constraint)
            if not request.messages:
                raise bad_request("messages must not be empty", "messages")
            use = _tool_use(request, served)
            constraint = self._constraint(request.constraint)
            if use.active and constraint:
                message = 'constraint cannot be combined with tools (unless tool_choice is "none")'
                raise bad_request(message, "constraint")
            add = not request.HasField("add_generation_prompt") or request.add_generation_prompt
            text, ids = self._render(served, _messages(request), add, use)
            thinking = reasoning_format(self.state.config.reasoning_parser, text)
            default = max(1, served.max_model_len - len(ids))
            job = self._job(
                request.sampling,
                ids,
                None,
                request.priority,
                default_max=default,
                constraint=constraint | use.constraint(),
                lora=served.lora,
            )
        async for response in self._run(served, job, "messages", context, use, thinking):
            yield response

    async def Tokenize(self, request: pb.TokenizeRequest, context) -> pb.TokenizeResponse:  # noqa: N802
        async with self._guard(context):
            served = self._start(request.model, None)
            if request.messages:
                _, ids = self._render(served, _messages(request), True, ToolUse())
            else:
                add = not request.HasField("add_special_tokens") or request.add_special_tokens
                ids = encode_prompt(served.tokenizer, request.text, add_special=add)
            tokens = [served.tokenizer.id_to_piece(i) for i in ids]
            return pb.TokenizeResponse(
                token_ids=ids, tokens=tokens, max_model_len=served.max_model_len
            )

    async def Detokenize(self, request: pb.DetokenizeRequest, context) -> pb.DetokenizeResponse:  # noqa: N802
        async with self._guard(context):
            served = self._start(request.model, None)
            vocab = served.tokenizer.vocab_size
            if any(t >= vocab for t in request.token_ids):
                raise bad_request(f"token ids must be in [0, {vocab})", "token_ids")
            return pb.DetokenizeResponse(text=served.tokenizer.decode(list(request.token_ids)))

    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:  # noqa: N802
        models = [
            pb.Model(id=card["id"], created=card["created"], max_model_len=card["max_model_len"])
            for card in (e.card(name) for e in self.state.models.ready() for name in e.names)
        ]
        return pb.ListModelsResponse(models=models)

    async def Embed(self, request: pb.EmbedRequest, context) -> pb.EmbedResponse:  # noqa: N802
        async with self._guard(context):
            served = self._start(request.model, None)
            if not request.inputs:
                raise bad_request("inputs must not be empty", "inputs")
            if len(request.inputs) > MAX_INPUTS:
                raise bad_request(f"at most {MAX_INPUTS} inputs per request", "inputs")
            ids = []
            for i, item in enumerate(request.inputs):
                where = f"inputs[{i}]"
                kind = item.WhichOneof("input")
                if kind == "text" and item.text:
                    ids.append(encode_prompt(served.tokenizer, item.text))
                elif kind == "token_ids" and item.token_ids.ids:
                    ids.append(list(item.token_ids.ids))
                else:
                    raise bad_request(f"{where} must be a non-empty text or token_ids", where)
            async with self.state.tracking():
                vectors = await embed(served, ids, param="inputs")
            embeddings = [pb.Embedding(values=v.tolist()) for v in vectors]
            return pb.EmbedResponse(embeddings=embeddings, prompt_tokens=sum(len(x) for x in ids))

    # -- helpers -----------------------------------------------------------------------------

    def _guard(self, context) -> _Guard:
        return _Guard(context)

    def _start(self, model: str, constraint: pb.Constraint | None) -> Served:
        """The model a request names, with `lora` set when the name selects an adapter."""
        entry, adapter = self.state.resolve(model or None)
        assert entry.served is not None
        return entry.served if adapter is None else replace(entry.served, lora=adapter)

    @staticmethod
    def _constraint(constraint: pb.Constraint) -> dict[str, Any]:
        """The proto's constraint oneof as SamplingParams fields."""
        kind = constraint.WhichOneof("kind")
        if kind is None:
            return {}
        if kind == "choice":
            return {"choice": tuple(constraint.choice.values)}
        return {kind: getattr(constraint, kind)}

    @staticmethod
    def _render(
        served: Served, messages: list[dict[str, Any]], add: bool, use: ToolUse
    ) -> tuple[str, list[int]]:
        try:
            text = chat_prompt(messages, use, served, add)
        except JaxserveError as error:
            raise bad_request(f"The chat template failed: {error}", "messages") from None
        return text, encode_prompt(served.tokenizer, text, add_special=False)

    @staticmethod
    def _job(
        sampling: pb.SamplingParams,
        ids,
        text,
        priority: int,
        *,
        default_max: int,
        constraint: dict[str, Any],
        lora: str | None = None,
    ) -> Job:
        values = sampling_values(sampling) | constraint
        if lora is not None:
            if "lora" in values:
                raise bad_request(f"lora: the model `{lora}` already selects an adapter", "lora")
            values["lora"] = lora
        fixed = {
            name: values.pop(name) for name in ("logprobs", "prompt_logprobs") if name in values
        }
        fixed["max_tokens"] = values.pop("max_tokens", default_max)
        return Job(ids, params_from_values(values, fixed), prompt=text, priority=priority)

    async def _run(
        self,
        served: Served,
        job: Job,
        prompt_param: str,
        context,
        use: ToolUse | None = None,
        thinking: ReasoningFormat | None = None,
    ) -> AsyncIterator:
        """Stream the job's responses; with `thinking`, each sequence's text is split into
        `reasoning` and `text` as HTTP chat splits it, and tool calls are read from the text."""
        async with self._guard(context):
            retry = self.state.config.retry_after_s
            [stream] = await submit(
                served.engine, [job], prompt_param=prompt_param, retry_after_s=retry
            )
        texts: dict[int, str] = {}
        parsers: dict[int, ReasoningParser] = {}
        async with self.state.tracking():
            try:
                async for out in stream:  # a cancelled call cancels this task: the stream aborts
                    response = self._response(served, out, job.prompt_token_ids)
                    if thinking is not None:
                        parser = parsers.setdefault(out.index, thinking.parser())
                        reasoning, content = parser.feed(out.delta)
                        if out.finish_reason is not None:
                            more_reasoning, more_content = parser.finish()
                            reasoning, content = reasoning + more_reasoning, content + more_content
                        response.reasoning, response.text = reasoning, content
                    if use is not None and use.active:
                        texts[out.index] = texts.get(out.index, "") + response.text
                        if out.finish_reason is not None:
                            _add_tool_calls(response, texts[out.index], use)
                    yield response
            except RuntimeError as error:  # the reason, as HTTP gives it (NaN logits, say)
                message = f"the engine failed while generating: {error}"
                await context.abort(grpc.StatusCode.INTERNAL, message)
            finally:
                await stream.aclose()

    @staticmethod
    def _response(served: Served, out: StreamOutput, prompt_ids: list[int]) -> pb.GenerateResponse:
        tok = served.tokenizer

        def entry(token_id: int, lp) -> pb.TokenLogprob:
            if lp is None:
                return pb.TokenLogprob(token_id=token_id, token=token_text(tok, token_id)[0])
            top = [
                pb.TopLogprob(token_id=i, token=token_text(tok, i)[0], logprob=v) for i, v in lp.top
            ]
            return pb.TokenLogprob(
                token_id=token_id,
                token=token_text(tok, token_id)[0],
                logprob=lp.logprob,
                has_logprob=True,
                top=top,
            )

        response = pb.GenerateResponse(index=out.index, text=out.delta, token_ids=out.new_token_ids)
        if out.logprobs:
            response.logprobs.extend(entry(lp.token_id, lp) for lp in out.logprobs)
        if out.prompt_logprobs is not None:
            pairs = zip(prompt_ids, out.prompt_logprobs, strict=True)
            response.prompt_logprobs.extend(entry(i, lp) for i, lp in pairs)
        add_research(response, tok, out)
        if out.finish_reason is not None:
            response.finish_reason = FINISH[out.finish_reason]
            response.usage.CopyFrom(
                pb.Usage(
                    prompt_tokens=out.prompt_tokens,
                    completion_tokens=out.completion_tokens,
                    cached_tokens=out.cached_tokens,
                )
            )
        return response


def _tool_use(request: pb.ChatRequest, served: Served) -> ToolUse:
    tools = []
    for i, tool in enumerate(request.tools):
        function: dict[str, Any] = {"name": tool.name}
        if tool.description:
            function["description"] = tool.description
        if tool.parameters_json_schema:
            try:
                function["parameters"] = json.loads(tool.parameters_json_schema)
            except json.JSONDecodeError as error:
                where = f"tools[{i}].parameters_json_schema"
                raise bad_request(f"{where} is not valid JSON: {error}", where) from None
        tools.append({"type": "function", "function": function})
    choice: Any = request.tool_choice or None
    if choice not in (None, "none", "auto", "required"):
        choice = {"type": "function", "function": {"name": choice}}
    parallel = request.parallel_tool_calls if request.HasField("parallel_tool_calls") else None
    try:
        return tool_use(tools, choice, parallel, served)
    except APIError as error:  # the HTTP front's field names -> this message's
        if error.param and ".function." in error.param:
            error.param = error.param.replace(".function.parameters", ".parameters_json_schema")
            error.param = error.param.replace(".function.", ".")
        raise


def _messages(request: pb.ChatRequest | pb.TokenizeRequest) -> list[dict[str, Any]]:
    """The proto's messages as the chat template wants them."""
    messages = []
    for i, m in enumerate(request.messages):
        if m.role not in ROLES:
            raise bad_request(f"unknown role {m.role!r}", f"messages[{i}].role")
        entry: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role}
        entry["content"] = m.content
        if m.name:
            entry["name"] = m.name
        if m.tool_call_id:
            entry["tool_call_id"] = m.tool_call_id
        if m.tool_calls:
            where = f"messages[{i}].tool_calls"
            if m.role != "assistant":
                raise bad_request(f"{where}: only assistant messages have tool calls", where)
            calls = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in m.tool_calls
            ]
            entry["tool_calls"] = history_tool_calls(calls, where)
        messages.append(entry)
    return messages


def _add_tool_calls(response: pb.GenerateResponse, text: str, use: ToolUse) -> None:
    """The calls in a finished sequence's whole text, on its last response."""
    _, calls = parse_tool_calls(text, use.format)
    for call in calls:
        function = call["function"]
        response.tool_calls.append(
            pb.ToolCall(id=call["id"], name=function["name"], arguments=function["arguments"])
        )
    if calls and response.finish_reason == pb.FINISH_REASON_STOP:
        response.finish_reason = pb.FINISH_REASON_TOOL_CALLS


class _Guard:
    """Turns an APIError raised inside the block into the matching gRPC status."""

    def __init__(self, context) -> None:
        self.context = context

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind, error, tb) -> bool:
        if isinstance(error, APIError):
            await self.context.abort(_code(error), _details(error))
        if isinstance(error, Exception) and not isinstance(error, grpc.aio.AbortError):
            log.exception("unhandled error in a gRPC call")  # a bug: no traceback to the client
            await self.context.abort(grpc.StatusCode.INTERNAL, "internal server error")
        return False


class _KeyInterceptor(grpc.aio.ServerInterceptor):
    """Every method but health checks needs `authorization: Bearer <key>` metadata."""

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        handler = await continuation(details)
        if handler is None or details.method.startswith("/grpc.health.v1.Health/"):
            return handler
        metadata = dict(details.invocation_metadata or ())
        if key_matches(str(metadata.get("authorization", "")), self.api_key):
            return handler
        return _denied(handler)


def _denied(handler: Any) -> Any:
    message = "missing or incorrect API key (send `authorization: Bearer <key>` metadata)"

    async def deny(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def deny_stream(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    io = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(deny_stream, **io)
    return grpc.unary_unary_rpc_method_handler(deny, **io)


def create_grpc_server(state: ServerState, address: str) -> grpc.aio.Server:
    """A grpc.aio server bound to `address` ("host:port"; not started). It must start on the
    event loop the engine's streams are consumed on (the HTTP server's)."""
    interceptors = [_KeyInterceptor(state.config.api_key)] if state.config.api_key else []
    server = grpc.aio.server(interceptors=interceptors)
    pb_grpc.add_GenerationServicer_to_server(GenerationServicer(state), server)
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(state), server)
    names = (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
    reflection.enable_server_reflection((*names, reflection.SERVICE_NAME), server)
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot bind gRPC to {address}")
    return server
