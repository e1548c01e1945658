"""Aggregate decode throughput split over simulated devices: one device, tensor parallel, data
parallel, both.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 \
        .venv/bin/python experiments/bench_parallel.py [--write experiments/RESULTS.md]

Simulated CPU devices share the same cores, so this measures the overhead the partitioning adds
(collectives, gathers, per-device dispatch), not the speed-up real devices give; it is the check
that data parallel as one engine (rows split, KV pool replicated over `data`) costs no more than
the alternatives before hardware is there to measure them properly.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from jaxserve import LLM, SamplingParams

LAYOUTS = ((1, 1), (1, 2), (3, 1), (3, 2))  # (tensor_parallel, data_parallel); SmolLM2: 9 heads


def bench(model: str, tp: int, dp: int, rows: int, tokens: int) -> float:
    llm = LLM(model, tensor_parallel=tp, data_parallel=dp, max_model_len=256, max_num_seqs=rows)
    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    prompts = [f"Story number {i}: once upon a time" for i in range(rows)]
    llm.generate(prompts, params)  # compiles every shape used below
    start = time.perf_counter()
    outs = llm.generate(prompts, params)
    return sum(len(o.token_ids) for o in outs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()
    results = {}
    for tp, dp in LAYOUTS:
        results[(tp, dp)] = bench(args.model, tp, dp, args.rows, args.tokens)
        print(f"tp={tp} dp={dp}: {results[(tp, dp)]:.1f} tok/s", flush=True)
    base = results[(1, 1)]
    lines = [
        f"### Split over simulated CPU devices, {args.model}, {time.strftime('%Y-%m-%d')} "
        f"({args.rows} concurrent greedy requests x {args.tokens} tokens, int8)",
        "",
        "| tensor parallel | data parallel | devices | output tok/s | vs one device |",
        "|---:|---:|---:|---:|---:|",
    ]
    for (tp, dp), rate in results.items():
        lines.append(f"| {tp} | {dp} | {tp * dp} | {rate:.1f} | {rate / base:.2f}x |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        with args.write.open("a", encoding="utf-8") as f:
            f.write("\n" + table + "\n")


if __name__ == "__main__":
    main()
