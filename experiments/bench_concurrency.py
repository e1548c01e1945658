"""Aggregate throughput, TTFT and TPOT at 1/8/32/64 concurrent clients: `jaxserve serve` beside
llama-server, both over HTTP with the same streaming client, in one run.

    bash ../shared/peers/build_llama_server.sh   # once: ~/.cache/jaxserve-peers/bin/llama-server
    .venv/bin/python experiments/bench_concurrency.py [--write experiments/RESULTS.md]

Two workloads, every request distinct (no shared prefix), greedy, EOS ignored:
- `chat`: ~60-token prompts, 128 tokens out;
- `decode`: 16-token prompts, 256 tokens out.
Each client sends one streaming `/v1/completions` request (token-id prompts, so both servers see
the same tokens); all start together. Aggregate tok/s = output tokens / (last completion - first
submission). TTFT = first streamed token - submission; TPOT = (completion - first token) /
(tokens - 1). jaxserve runs with its defaults (int8, prefix caching on) and `--max-num-seqs`
(default: the largest concurrency); llama-server with `-np N -c N*(prompt+out+64) -t 2`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

LLAMA_SERVER = Path(
    os.environ.get("LLAMA_SERVER", "~/.cache/jaxserve-peers/bin/llama-server")
).expanduser()
WORKLOADS = {"chat": (60, 128), "decode": (16, 256)}
PORT = 8089


def prompts(n: int, length: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(300, 40000) for _ in range(length)] for _ in range(n)]


def stream_one(url: str, model: str, prompt: list[int], max_tokens: int, out: dict) -> None:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
    }
    request = urllib.request.Request(
        f"{url}/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    start = time.perf_counter()
    first, chunks = None, 0
    with urllib.request.urlopen(request, timeout=1800) as response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            data = json.loads(line[5:])
            if data.get("choices") and data["choices"][0].get("text"):
                first = first or time.perf_counter()
                chunks += 1
    end = time.perf_counter()
    out.update(start=start, first=first or end, end=end, chunks=chunks)


def run_clients(url: str, model: str, batch: list[list[int]], max_tokens: int) -> dict:
    logs: list[dict] = [{} for _ in batch]
    threads = [
        threading.Thread(target=stream_one, args=(url, model, p, max_tokens, logs[i]))
        for i, p in enumerate(batch)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    begin = min(x["start"] for x in logs)
    finish = max(x["end"] for x in logs)
    ttft = sorted(x["first"] - x["start"] for x in logs)
    tpot = sorted((x["end"] - x["first"]) / max(max_tokens - 1, 1) for x in logs)

    def pct(xs: list[float], q: float) -> float:
        return xs[min(len(xs) - 1, int(q * len(xs)))]

    return {
        "tok_s": len(batch) * max_tokens / (finish - begin),
        "ttft_p50": statistics.median(ttft),
        "ttft_p99": pct(ttft, 0.99),
        "tpot_p50": statistics.median(tpot),
        "tpot_p99": pct(tpot, 0.99),
    }


def wait_healthy(url: str, proc: subprocess.Popen, limit_s: float = 1800) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                warm = json.loads(r.read() or b"{}").get("warmup")
                # jaxserve serves at once and compiles its buckets in the background: measure
                # once every bucket is compiled, so that no compile competes with the clients
                if r.status == 200 and (not warm or warm["compiled"] >= warm["total"]):
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError("server did not become healthy")


def serve(cmd: list[str], url: str) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_healthy(url, proc)
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def measure(url: str, model: str, workload: str, n: int) -> dict:
    prompt_len, max_tokens = WORKLOADS[workload]
    run_clients(url, model, prompts(2, prompt_len, seed=-n), 4)  # warm the shapes in use
    return run_clients(url, model, prompts(n, prompt_len, seed=n), max_tokens)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS))
    parser.add_argument("--max-num-seqs", type=int, default=None)
    parser.add_argument("--max-prefill-rows", type=int, default=None)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()
    from jaxserve.loading.pull import resolve_model

    path = resolve_model(args.model)
    ours_url = "http://127.0.0.1:8088"
    peer_url = f"http://127.0.0.1:{PORT}"
    seqs = args.max_num_seqs or max(args.concurrency)
    jaxserve = [sys.executable, "-m", "jaxserve.cli", "serve", args.model, "--port", "8088"]
    rows = []
    if args.max_prefill_rows:
        jaxserve += ["--max-prefill-rows", str(args.max_prefill_rows)]
    proc = serve([*jaxserve, "--max-num-seqs", str(seqs)], ours_url)
    try:
        ours = {
            (w, n): measure(ours_url, args.model, w, n)
            for w in args.workloads
            for n in args.concurrency
        }
    finally:
        stop(proc)
    for w in args.workloads:
        prompt_len, max_tokens = WORKLOADS[w]
        for n in args.concurrency:
            peer = None
            if LLAMA_SERVER.exists():
                ctx = n * (prompt_len + max_tokens + 64)
                cmd = [str(LLAMA_SERVER), "-m", str(path), "-np", str(n), "-c", str(ctx), "-t", "2"]
                cmd += ["--port", str(PORT), "--host", "127.0.0.1", "--no-webui"]
                proc = serve(cmd, peer_url)
                try:
                    peer = measure(peer_url, args.model, w, n)
                finally:
                    stop(proc)
            rows.append((w, n, ours[(w, n)], peer))
            print(rows[-1], flush=True)
    lines = [
        f"### Concurrent clients over HTTP, {path.name}, {time.strftime('%Y-%m-%d')} "
        f"(jaxserve defaults, --max-num-seqs {seqs}; llama-server -np N -t 2)",
        "",
        "| workload | clients | jaxserve tok/s | llama-server tok/s | ratio "
        "| jaxserve TTFT p50 / p99 (s) | llama-server TTFT p50 / p99 (s) "
        "| jaxserve TPOT p50 / p99 (ms) | llama-server TPOT p50 / p99 (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for w, n, a, b in rows:
        nan = {k: float("nan") for k in a}
        b = b or nan
        lines.append(
            f"| {w} {WORKLOADS[w][0]}->{WORKLOADS[w][1]} | {n} "
            f"| {a['tok_s']:.1f} | {b['tok_s']:.1f} | {a['tok_s'] / b['tok_s']:.2f}x "
            f"| {a['ttft_p50']:.2f} / {a['ttft_p99']:.2f} "
            f"| {b['ttft_p50']:.2f} / {b['ttft_p99']:.2f} "
            f"| {1e3 * a['tpot_p50']:.0f} / {1e3 * a['tpot_p99']:.0f} "
            f"| {1e3 * b['tpot_p50']:.0f} / {1e3 * b['tpot_p99']:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.write:
        with args.write.open("a", encoding="utf-8") as f:
            f.write("\n" + table + "\n")


if __name__ == "__main__":
    main()
