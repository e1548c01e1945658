"""Start to first token, cold (empty XLA compilation cache) and warm (cache filled by the cold run).

    .venv/bin/python experiments/bench_startup.py [--write experiments/RESULTS.md]

Each run is a fresh process: import, load the GGUF (int8), compile or load the prefill and decode
programs, and stream the first token of a short prompt. Wall time is measured by this parent
process from spawn to the child's report. Both runs use a fresh model cache holding only a copy of
the pulled GGUF, so the cold run also converts the weights (as on a fresh machine, after `pull`)
and the warm run finds both the converted weights and the compiled programs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
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
    table = "\n".join(
        [
            f"### Start to first token, {args.model} int8, {time.strftime('%Y-%m-%d')}",
            "",
            "| start | seconds |",
            "|---|---:|",
            f"| cold (no converted weights, empty XLA cache) | {cold:.1f} |",
            f"| warm (both caches filled by the cold run) | {warm:.1f} |",
        ]
    )
    print(table)
    if args.write:
        with args.write.open("a", encoding="utf-8") as f:
            f.write("\n" + table + "\n")


if __name__ == "__main__":
    main()
