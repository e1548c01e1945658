"""Device step times of the default engine: one 512-token prefill and a k-step decode call at
several row counts, straight through the runner (no scheduler, no HTTP).

    .venv/bin/python experiments/bench_step.py [--rows 2 8 32 64] [--context 190]
        [--weights auto|int8|bf16|f32] [--kernels auto|reference|pallas] [--bandwidth BYTES_PER_S]

Decode rows continue `--context` cached tokens (greedy, 8 tokens per call); times are medians of
`--repeats` calls after one warm-up call per shape, reported per generated token step. With
`--bandwidth` (the device's memory bandwidth), each decode line also gives the step's floor (the
weights read once a step) and the measured step's ratio to it.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from jaxserve import LLM
from jaxserve.engine.rows import DecodeRow, PrefillRow
from jaxserve.loading.pull import resolve_model
from jaxserve.sampling.rows import SamplingRow


def median_ms(fn, repeats: int) -> float:
    fn()  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rows", type=int, nargs="+", default=[2, 8, 32, 64])
    parser.add_argument("--context", type=int, default=190)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--weights", default="auto")
    parser.add_argument("--kernels", default="auto")
    parser.add_argument("--bandwidth", type=float, default=None)
    args = parser.parse_args()
    llm = LLM(
        str(resolve_model(args.model)),
        max_num_seqs=max(args.rows),
        weights=args.weights,
        kernels=args.kernels,
    )
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(llm.engine.runner.params))
    features = ", ".join(llm.config.features())
    print(f"{llm.config.name} ({features}): {weight_bytes / 2**20:.0f} MiB of weights", flush=True)
    runner = llm.engine.runner
    rng = np.random.default_rng(0)
    ids = rng.integers(100, 40000, 512).tolist()
    prefill = median_ms(lambda: runner.prefill([PrefillRow(ids, 0, list(range(1, 33)))]), 3)
    print(f"prefill 512 tokens: {prefill:.0f} ms ({512e3 / prefill:.0f} tok/s)", flush=True)
    steps, pages = 8, -(-(args.context + 8) // 16)
    for b in args.rows:
        rows = [
            DecodeRow(
                int(rng.integers(100, 40000)),
                args.context,
                list(range(1 + pages * i, 1 + pages * (i + 1))),
                SamplingRow(),
                remaining=steps,
            )
            for i in range(b)
        ]
        ms = median_ms(lambda rows=rows: runner.decode(rows, num_steps=steps), args.repeats)
        ms /= steps
        line = f"decode {b} rows: {ms:.2f} ms/step ({b / ms * 1e3:.0f} tok/s)"
        if args.bandwidth:
            floor = weight_bytes / args.bandwidth * 1e3
            line += f"; weights-read floor {floor:.2f} ms, {floor / ms:.0%} of it"
        print(line, flush=True)


if __name__ == "__main__":
    main()
