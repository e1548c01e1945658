"""Cost of the sampler chain beside a decode step, at 32 rows of SmolLM2-135M (int8).

    .venv/bin/python experiments/bench_sampler.py [--rows 32] [--repeats 5]

Two measurements, interleaved so machine noise hits both alike:
1. the chain alone (jitted `sample` on [rows, V] logits): every row greedy with no stage, every
   row with typical settings (temperature, top-k, top-p, min-p, repetition penalty), and every
   row with every stage on (penalties, DRY, top-n-sigma, top-k, typical, top-p, min-p, XTC,
   dynamic temperature, Mirostat v2, logit bias, allowed ids, bad words, min_tokens);
2. a full decode call (8 tokens per row, `ModelRunner.decode`) with greedy rows, typical rows
   and every stage on.
Reported per generated token step; the chain's share = (full - greedy) / greedy decode time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from jaxserve import LLM, SamplingParams
from jaxserve.engine.rows import DecodeRow, PrefillRow
from jaxserve.sampling.rows import SamplingRow, token_bitmask
from jaxserve.testing.chain import run_chain
from jaxserve.testing.strategies import every_stage

PROMPT, STEPS = 128, 8
TYPICAL = SamplingParams(temperature=0.7, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.1)
EVERYTHING = every_stage(allowed=range(100, 40000), max_tokens=64, logprobs_mode="raw")


def timed(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    llm = LLM("smollm2-135m", max_num_seqs=64, quiet=False)
    runner, engine = llm.engine.runner, llm.engine
    vocab = runner.config.vocab_size
    rng = np.random.default_rng(0)
    history = rng.integers(200, vocab - 200, PROMPT).tolist()
    allowed = token_bitmask(EVERYTHING.allowed_token_ids, vocab)
    bad = [tuple(llm.tokenize(" the", add_special=False))]
    breakers = engine._breaker_mask(EVERYTHING.dry_sequence_breakers)

    def row(params: SamplingParams, seed: int) -> SamplingRow:
        full = params is EVERYTHING
        return SamplingRow(
            params,
            seed=seed,
            prompt_len=PROMPT - 8,
            num_generated=8,
            mirostat_mu=10.0,
            stop_ids=sorted(engine.tokenizer.eos_ids),
            history=history if params.uses_history else None,
            allowed_mask=allowed if full else None,
            breaker_mask=breakers if full else None,
            bad_word_ids=bad if full else (),
        )

    greedy = SamplingParams(temperature=0.0)
    kinds = {"greedy": greedy, "typical": TYPICAL, "everything": EVERYTHING}
    logits = rng.normal(size=(args.rows, vocab)).astype(np.float32) * 3
    chain = {k: [row(p, i) for i in range(args.rows)] for k, p in kinds.items()}
    lengths = [PROMPT] * args.rows

    # Decode rows over real cached prompts.
    pages_per_row = (PROMPT + STEPS) // runner.page_size + 1
    page_rows = []
    for i in range(args.rows):
        pages = list(range(1 + i * pages_per_row, 1 + (i + 1) * pages_per_row))
        runner.prefill([PrefillRow(history, 0, pages)])
        page_rows.append(pages)

    def decode(kind: str):
        rows = [
            DecodeRow(history[-1], PROMPT - 1, page_rows[i], chain[kind][i], remaining=STEPS)
            for i in range(args.rows)
        ]
        return runner.decode(rows, num_steps=STEPS).token_ids

    results = {}
    for kind in kinds:
        results[f"chain {kind}"] = timed(
            lambda kind=kind: run_chain(logits, chain[kind], lengths=lengths).token_ids,
            args.repeats,
        )
    for kind in ("greedy", "typical", "everything"):
        results[f"decode {kind}"] = timed(lambda kind=kind: decode(kind), args.repeats) / STEPS
    for name, seconds in results.items():
        print(f"{name:20s} {seconds * 1e3:8.2f} ms per token step ({args.rows} rows)")
    base = results["decode greedy"]
    for kind in ("typical", "everything"):
        share = (results[f"decode {kind}"] - base) / base
        print(f"in the decode loop, {kind} rows cost +{share:.1%} over greedy rows")
    print(f"chain alone, everything on: {results['chain everything'] / base:.1%} of a greedy step")


if __name__ == "__main__":
    main()
