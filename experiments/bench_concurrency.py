"""Aggregate output throughput at 1, 8, 32 and 64 concurrent requests: jaxserve beside llama-server.

    .venv/bin/python experiments/bench_concurrency.py [--write experiments/RESULTS.md]

Every request has a 128-token prompt (distinct per request, so no prefix is shared) and asks for
128 greedy tokens with EOS ignored. jaxserve runs the batching engine in-process (`LLM.generate`
over all prompts at once, after warm-up); llama-server (built by
../shared/peers/build_llama_server.sh, run with `-np N -c N*320 -t 2`) gets N concurrent HTTP
clients on localhost. Aggregate tok/s =
all output tokens / wall time from first submission to last completion.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from jaxserve import LLM, SamplingParams
from jaxserve.loading.pull import resolve_model

LLAMA_SERVER = Path(
    os.environ.get("LLAMA_SERVER", "~/.cache/jaxserve-peers/bin/llama-server")
).expanduser()
PROMPT_TOKENS, OUTPUT_TOKENS, PORT = 128, 128, 8089


def prompts(n: int, vocab: int) -> list[list[int]]:
    rng = random.Random(n)
    return [[rng.randrange(200, vocab - 200) for _ in range(PROMPT_TOKENS)] for _ in range(n)]


def bench_jaxserve(llm: LLM, n: int) -> float:
    params = SamplingParams(max_tokens=OUTPUT_TOKENS, temperature=0.0, ignore_eos=True)
    batch = prompts(n, llm.tokenizer.vocab_size)
    llm.generate(batch, params)  # compiles whatever this mix needs
    batch = [[t + 1 for t in p] for p in batch]  # fresh prompts: no prefix-cache hits
    start = time.perf_counter()
    outs = llm.generate(batch, params)
    elapsed = time.perf_counter() - start
    return sum(len(o.token_ids) for o in outs) / elapsed


def _post(body: dict) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{PORT}/completion",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=600) as resp:
        return json.loads(resp.read())


def bench_llama_server(model: Path, n: int, vocab: int) -> float:
    cmd = [
        str(LLAMA_SERVER),
        "-m",
        str(model),
        "-np",
        str(n),
        "-c",
        str(n * 320),
        "-t",
        "2",
        "--port",
        str(PORT),
        "--host",
        "127.0.0.1",
        "--no-webui",
    ]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        body = dict(n_predict=OUTPUT_TOKENS, temperature=0.0, ignore_eos=True, cache_prompt=False)
        _post({**body, "prompt": prompts(1, vocab)[0], "n_predict": 4})  # warm-up
        batch = prompts(n, vocab)
        start = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(lambda p: _post({**body, "prompt": p}), batch))
        elapsed = time.perf_counter() - start
        return sum(r["tokens_predicted"] for r in results) / elapsed
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--max-prefill-rows", type=int, default=1)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()
    path = resolve_model(args.model)
    llm = LLM(
        args.model, weights="int8", max_num_seqs=64, max_model_len=512, kv_cache_bytes=1536 * 2**20
    )
    vocab = llm.tokenizer.vocab_size
    lines = [
        f"### Aggregate output tok/s, {path.name}, {time.strftime('%Y-%m-%d')} "
        f"({PROMPT_TOKENS}-token prompts, {OUTPUT_TOKENS} greedy tokens each)",
        "",
        "| concurrent | jaxserve int8 | llama-server -np N | ratio |",
        "|---:|---:|---:|---:|",
    ]
    for n in args.concurrency:
        ours = bench_jaxserve(llm, n)
        peer = bench_llama_server(path, n, vocab) if LLAMA_SERVER.exists() else float("nan")
        lines.append(f"| {n} | {ours:.1f} | {peer:.1f} | {ours / peer:.2f}x |")
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    if args.write:
        with args.write.open("a", encoding="utf-8") as f:
            f.write("\n" + table + "\n")


if __name__ == "__main__":
    main()
