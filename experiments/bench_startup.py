"""Start to first token, cold (empty XLA compilation cache) and warm (cache filled by the cold run).

    .venv/bin/python experiments/bench_startup.py [--write experiments/RESULTS.md]

Each run is a fresh process: import, load the GGUF (int8), compile or load the prefill and decode
programs, and stream the first token of a short prompt. Wall time is measured by this parent
process from spawn to the child's report. The model file is already pulled.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import sys
from jaxserve import LLM, SamplingParams
llm = LLM(sys.argv[1], compilation_cache_dir=sys.argv[2])
next(iter(llm.stream("The capital of France is", SamplingParams(max_tokens=2, temperature=0.0))))
print("first-token", flush=True)
"""


def start_to_first_token(model: str, cache: str) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, model, cache], stdout=subprocess.PIPE, text=True
    )
    for line in proc.stdout:
        if line.strip() == "first-token":
            elapsed = time.perf_counter() - start
            proc.wait()
            return elapsed
    raise RuntimeError(f"child exited with {proc.wait()}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jaxserve-xla-") as cache:
        cold = start_to_first_token(args.model, cache)
        warm = start_to_first_token(args.model, cache)
    table = "\n".join(
        [
            f"### Start to first token, {args.model} int8, {time.strftime('%Y-%m-%d')}",
            "",
            "| start | seconds |",
            "|---|---:|",
            f"| cold (empty compilation cache) | {cold:.1f} |",
            f"| warm (persistent cache filled) | {warm:.1f} |",
        ]
    )
    print(table)
    if args.write:
        with args.write.open("a", encoding="utf-8") as f:
            f.write("\n" + table + "\n")


if __name__ == "__main__":
    main()
