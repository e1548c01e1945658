"""Constrained vs unconstrained decode throughput, SmolLM2-135M (int8), one batch of rows.

    .venv/bin/python experiments/bench_constrained.py [--rows 16] [--tokens 64] [--repeats 3]

Three engines over the same model generate `--tokens` tokens for each of `--rows` rows with the
same seeds (every row runs to its token limit, so each run does the same number of steps):
1. free: no constraint;
2. device: every row under a regular constraint whose tables run inside the k-token decode loop;
3. host: the same constraint masked from the host one token per step (`grammar_states=0`).
The constraint is a long free-text regex (one automaton state per character class run), so the
mask cost, not the output, is what differs. Runs are interleaved; medians are reported with the
overhead relative to free decoding.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

from jaxserve import LLM, SamplingParams

REGEX = r"[A-Za-z ,.'\n]{0,2000}"
PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


def run(llm: LLM, params: SamplingParams, rows: int) -> tuple[float, int]:
    """`rows` sequences of one request (n = rows): one prefill, then `rows` decode rows, each
    drawing from its own seed stream."""
    start = time.perf_counter()
    outs = llm.generate(PROMPT, replace(params, n=rows))
    elapsed = time.perf_counter() - start
    return elapsed, sum(len(o.token_ids) for o in outs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    common = {"max_num_seqs": args.rows, "decode_steps": 8, "quiet": False}
    engines = {
        "free": LLM("smollm2-135m", **common),
        "device": None,
        "host": LLM("smollm2-135m", grammar_states=0, **common),
    }
    engines["device"] = engines["free"]
    base = {"max_tokens": args.tokens, "min_tokens": args.tokens, "temperature": 0.8}
    params = {
        "free": SamplingParams(**base, seed=1),
        "device": SamplingParams(**base, seed=1, regex=REGEX),
        "host": SamplingParams(**base, seed=1, regex=REGEX),
    }
    for name, llm in engines.items():  # warm-up: compiles, grammar tables, masks
        run(llm, params[name], args.rows)
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(args.repeats):
        for name, llm in engines.items():
            elapsed, tokens = run(llm, params[name], args.rows)
            times[name].append(tokens / elapsed)
    free = statistics.median(times["free"])
    print(f"rows={args.rows} tokens/row={args.tokens} repeats={args.repeats}")
    print("| path | tok/s (median) | vs free |")
    print("|---|---|---|")
    for name in engines:
        tps = statistics.median(times[name])
        print(f"| {name} | {tps:.1f} | {100 * (tps / free - 1):+.1f}% |")


if __name__ == "__main__":
    main()
