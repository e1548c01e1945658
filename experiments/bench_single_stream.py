"""Single-stream decode and prefill throughput: jaxserve (int8, f32) beside llama.cpp, one run.

    .venv/bin/python experiments/bench_single_stream.py [--model smollm2-135m] \
        [--write experiments/RESULTS.md]

llama.cpp runs through llama-cpp-python (the `bench` extra) with 2 threads on the same GGUF. Every
engine gets the same prompt token ids; decode is greedy and ignores EOS. Timings include one host
round trip per token.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np

from jaxserve import LLM, SamplingParams
from jaxserve.loading.pull import resolve_model

CORPUS = Path(__file__).parent.parent / "tests" / "fixtures" / "corpus.txt"


def bench_jaxserve(model: str, weights: str, prompt: list[int], short: list[int], n: int) -> dict:
    # No prefix caching: each repeat of the prompt must be computed, not found in the cache.
    llm = LLM(model, weights=weights, enable_prefix_caching=False)
    greedy = dict(temperature=0.0, ignore_eos=True)

    def timed(ids: list[int], max_tokens: int) -> float:
        start = time.perf_counter()
        llm.generate(ids, SamplingParams(max_tokens=max_tokens, **greedy))
        return time.perf_counter() - start

    # Warm-up compiles every shape measured below (the page-table width follows max_tokens).
    timed(prompt, 1)
    timed(short, 1)
    timed(short, n + 1)
    prefill = min(timed(prompt, 1) for _ in range(3))
    first = min(timed(short, 1) for _ in range(3))
    total = timed(short, n + 1)
    return {"prefill": len(prompt) / prefill, "decode": n / (total - first)}


def bench_llama_cpp(path: Path, prompt: list[int], short: list[int], n: int) -> dict:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_threads=2, n_ctx=2048, n_batch=512, verbose=False)
    llm.eval(prompt)  # warm-up
    prefill = []
    for _ in range(3):
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        prefill.append(time.perf_counter() - start)
    llm.reset()
    llm.eval(short)
    start = time.perf_counter()
    for _ in range(n):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        llm.eval([token])
    decode = time.perf_counter() - start
    return {"prefill": len(prompt) / min(prefill), "decode": n / decode}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--write", type=Path, default=None, help="append the table to this file")
    parser.add_argument(
        "--dequantize-decode",
        action="store_true",
        help="int8 decode dequantizes weights to f32 instead of the W8A8 int32 dots",
    )
    args = parser.parse_args()
    if args.dequantize_decode:
        import jaxserve.models.layers

        jaxserve.models.layers.W8A8_MAX_ROWS = 0

    path = resolve_model(args.model)
    probe = LLM(args.model, weights="int8")
    ids = probe.tokenize(CORPUS.read_text(encoding="utf-8"))
    del probe
    prompt, short = ids[: args.prompt_tokens], ids[:8]
    rows = {
        "jaxserve int8": bench_jaxserve(args.model, "int8", prompt, short, args.decode_tokens),
        "jaxserve f32": bench_jaxserve(args.model, "f32", prompt, short, args.decode_tokens),
    }
    try:
        rows["llama.cpp (2 threads)"] = bench_llama_cpp(path, prompt, short, args.decode_tokens)
    except ImportError:
        print("llama-cpp-python is not installed (pip install -e '.[bench]'): no reference row")
    ref = rows.get("llama.cpp (2 threads)")
    lines = [
        f"### Single stream, {path.name}, {time.strftime('%Y-%m-%d')}, "
        f"{platform.machine()} ({args.prompt_tokens}-token prefill, {args.decode_tokens} decoded)",
        "",
        "| engine | decode tok/s | prefill tok/s | decode vs llama.cpp | prefill vs llama.cpp |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        ratio_d = f"{r['decode'] / ref['decode']:.2f}x" if ref else "-"
        ratio_p = f"{r['prefill'] / ref['prefill']:.2f}x" if ref else "-"
        lines.append(f"| {name} | {r['decode']:.1f} | {r['prefill']:.1f} | {ratio_d} | {ratio_p} |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        with args.write.open("a", encoding="utf-8") as f:
            f.write("\n" + table + "\n")


if __name__ == "__main__":
    main()
