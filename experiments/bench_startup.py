"""Start to first token, cold (empty XLA compilation cache) and warm (cache filled by the cold run).

    .venv/bin/python experiments/bench_startup.py [--write experiments/RESULTS.md]

Two ways in: the Python API (`LLM(...).stream`) and the server (`jaxserve serve`, measured to
`/health` 200, to the first token of a completion sent right after, and to the end of its
background warm-up as `/health` reports it).

Each run is a fresh process: import, load the GGUF (int8), compile or load the prefill and decode
programs, and stream the first token of a short prompt. Wall time is measured by this parent
process from spawn to the child's report. Both runs use a fresh model cache holding only a copy of
the pulled GGUF, so the cold run also converts the weights (as on a fresh machine, after `pull`)
and the warm run finds both the converted weights and the compiled programs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from jaxserve.loading.pull import pull

CHILD = """
import sys
from jaxserve import LLM, SamplingParams
llm = LLM(sys.argv[1], compilation_cache_dir=sys.argv[2])
next(iter(llm.stream("The capital of France is", SamplingParams(max_tokens=2, temperature=0.0))))
print("first-token", flush=True)
"""


def start_to_first_token(model: str, cache: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, model, cache], stdout=subprocess.PIPE, text=True, env=env
    )
    for line in proc.stdout:
        if line.strip() == "first-token":
            elapsed = time.perf_counter() - start
            proc.wait()
            return elapsed
    raise RuntimeError(f"child exited with {proc.wait()}")


def _get(url: str, body: dict | None = None, timeout: float = 600) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {}
    except (urllib.error.URLError, ConnectionError):
        return 0, {}


def serve_start(model: str, env: dict[str, str]) -> tuple[float, float, float]:
    """Seconds from spawning `jaxserve serve` to /health 200, to the first token of a completion
    sent then, and to the end of the background warm-up."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    jaxserve = str(Path(sys.executable).parent / "jaxserve")
    start = time.perf_counter()
    proc = subprocess.Popen(
        [jaxserve, "serve", model, "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        while _get(url + "/health", timeout=5)[0] != 200:
            if proc.poll() is not None:
                raise RuntimeError(f"serve exited with {proc.returncode}")
            time.sleep(0.1)
        healthy = time.perf_counter() - start
        body = {"model": model, "prompt": "The capital of France is", "max_tokens": 1}
        status, _ = _get(url + "/v1/completions", {**body, "temperature": 0})
        if status != 200:
            raise RuntimeError(f"completion answered {status}")
        first = time.perf_counter() - start
        while True:
            progress = _get(url + "/health", timeout=5)[1].get("warmup", {})
            if progress.get("compiled") == progress.get("total"):
                break
            time.sleep(0.5)
        return healthy, first, time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()
    source = pull(args.model, quiet=True)
    with tempfile.TemporaryDirectory(prefix="jaxserve-start-") as root:
        models = Path(root) / "models"
        (models / args.model).mkdir(parents=True)
        shutil.copy(source, models / args.model / source.name)
        env = {**os.environ, "JAXSERVE_CACHE": str(models)}
        xla = str(Path(root) / "xla")
        cold = start_to_first_token(args.model, xla, env)
        warm = start_to_first_token(args.model, xla, env)
        shutil.rmtree(models / "xla", ignore_errors=True)  # serve caches XLA here
        shutil.rmtree(models / args.model / "converted", ignore_errors=True)  # weights too
        serve_cold = serve_start(args.model, env)
        serve_warm = serve_start(args.model, env)
    table = "\n".join(
        [
            f"### Start-up, {args.model} int8, {time.strftime('%Y-%m-%d')}",
            "",
            "| start | seconds |",
            "|---|---:|",
            f"| `LLM` first token, cold (no converted weights, empty XLA cache) | {cold:.1f} |",
            f"| `LLM` first token, warm (both caches filled by the cold run) | {warm:.1f} |",
            f"| `serve` /health 200, cold | {serve_cold[0]:.1f} |",
            f"| `serve` first token (a completion sent at /health 200), cold "
            f"| {serve_cold[1]:.1f} |",
            f"| `serve` background warm-up done, cold | {serve_cold[2]:.1f} |",
            f"| `serve` /health 200, warm | {serve_warm[0]:.1f} |",
            f"| `serve` first token, warm | {serve_warm[1]:.1f} |",
            f"| `serve` background warm-up done, warm | {serve_warm[2]:.1f} |",
        ]
    )
    print(table)
    if args.write:
        with args.write.open("a", encoding="utf-8") as f:
            f.write("\n" + table + "\n")


if __name__ == "__main__":
    main()
