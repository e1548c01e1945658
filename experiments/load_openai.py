"""Load test of the OpenAI HTTP front: N concurrent streaming clients for a fixed time.

    python experiments/load_openai.py --clients 64 --duration 120 --write experiments/LOAD.md

Serves the model in-process (uvicorn on a thread, every bucket compiled first), then each client
streams chat completions in a loop with its own prompt and seed. Reports p50/p99 time to first
token, aggregate generated tokens per second, and lost, crossed or diverged responses: a request
that fails or ends without `[DONE]` is lost; a seeded output that differs from the client's first
one is crossed if it equals another client's output (someone else's tokens), else diverged (the
same request sampled differently in another batch).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TOPICS = ["the ocean", "volcanoes", "bread", "the moon", "bees", "rivers", "glass", "chess"]


@dataclass
class ClientLog:
    ttft_s: list[float] = field(default_factory=list)
    tokens: int = 0
    requests: int = 0
    lost: int = 0
    reference: str | None = None
    others: list[str] = field(default_factory=list)  # outputs that differ from the reference


async def run_client(c: int, url: str, args: argparse.Namespace, stop_at: float) -> ClientLog:
    log = ClientLog()
    body = {
        "messages": [
            {"role": "user", "content": f"Client {c}: write two sentences about {TOPICS[c % 8]}."}
        ],
        "max_tokens": args.max_tokens,
        "temperature": 0.8,
        "seed": 1000 + c,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        while time.monotonic() < stop_at:
            started = time.monotonic()
            text, first, done, usage, ids = "", None, False, None, set()
            try:
                async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                    if r.status_code != 200:
                        raise RuntimeError(r.status_code)
                    async for line in r.aiter_lines():
                        if not line:
                            continue
                        if line == "data: [DONE]":
                            done = True
                            break
                        event = json.loads(line[6:])
                        ids.add(event["id"])
                        if event.get("usage"):
                            usage = event["usage"]
                        for choice in event["choices"]:
                            delta = choice["delta"].get("content") or ""
                            if delta and first is None:
                                first = time.monotonic() - started
                            text += delta
            except (httpx.HTTPError, RuntimeError):
                done = False
            log.requests += 1
            if not done or usage is None or len(ids) != 1:
                log.lost += 1
                continue
            if first is not None:
                log.ttft_s.append(first)
            log.tokens += usage["completion_tokens"]
            if log.reference is None:
                log.reference = text
            elif text != log.reference:
                log.others.append(text)
    return log


async def load(url: str, args: argparse.Namespace) -> tuple[list[ClientLog], float]:
    started = time.monotonic()
    stop_at = started + args.duration
    logs = await asyncio.gather(*(run_client(c, url, args, stop_at) for c in range(args.clients)))
    return list(logs), time.monotonic() - started


def percentile(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1] if len(xs) > 1 else xs[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-num-seqs", type=int, default=16)
    parser.add_argument(
        "--weights",
        default="f32",
        choices=("f32", "int8"),
        help="f32: a prompt continued from the prefix cache gives bit-identical tokens, so any "
        "difference between a client's runs is a crossed response (int8 can flip near-ties)",
    )
    parser.add_argument("--write", type=Path, default=None, help="append a Markdown table here")
    args = parser.parse_args()

    from jaxserve.api.async_engine import AsyncEngine
    from jaxserve.api.openai_server import Served, ServerConfig, create_app
    from jaxserve.llm import LLM
    from tests.http_server import running

    t0 = time.monotonic()
    llm = LLM(
        args.model,
        weights=args.weights,
        warmup=True,
        quiet=False,
        max_num_seqs=args.max_num_seqs,
    )
    load_s = time.monotonic() - t0
    engine = AsyncEngine(llm.engine)
    app = create_app(ServerConfig(model_names=(args.model,)), Served.from_llm(llm, engine))
    with running(app) as url:
        logs, elapsed = asyncio.run(load(url, args))
    engine.shutdown()

    ttft = sorted(t for log in logs for t in log.ttft_s)
    references = {log.reference for log in logs}
    crossed = sum(text in references for log in logs for text in log.others)
    diverged = sum(len(log.others) for log in logs) - crossed
    for c, log in enumerate(logs):
        for text in log.others:
            same = next(
                (i for i, (a, b) in enumerate(zip(text, log.reference, strict=False)) if a != b),
                None,
            )
            print(f"client {c}: differs from its first output at character {same}:")
            print(f"  first: {log.reference!r}\n  later: {text!r}")
    tokens = sum(log.tokens for log in logs)
    row = {
        "clients": args.clients,
        "duration (s)": f"{elapsed:.0f}",
        "requests": sum(log.requests for log in logs),
        "TTFT p50 (s)": f"{percentile(ttft, 50):.2f}",
        "TTFT p99 (s)": f"{percentile(ttft, 99):.2f}",
        "generated tok/s": f"{tokens / elapsed:.1f}",
        "lost": sum(log.lost for log in logs),
        "crossed": crossed,
        "diverged": diverged,
    }
    table = "| " + " | ".join(row) + " |\n|" + "---|" * len(row) + "\n"
    table += "| " + " | ".join(str(v) for v in row.values()) + " |\n"
    print(table)
    if args.write is not None:
        with args.write.open("a") as f:
            f.write(
                f"\n{args.model} ({args.weights}), max_num_seqs {args.max_num_seqs}, "
                f"{args.max_tokens} tokens per "
                f"request, temperature 0.8, seeded; {platform.processor() or platform.machine()}, "
                f"model load and warm-up {load_s:.0f} s.\n\n{table}"
            )


if __name__ == "__main__":
    main()
