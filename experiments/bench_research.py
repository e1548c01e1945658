"""What the research hooks cost: decode tok/s of 32 rows with and without them (SmolLM2, defaults).

    .venv/bin/python experiments/bench_research.py [--rows 32] [--tokens 96] [--repeats 3]

Four runs of the same 32 greedy requests (~60-token prompts, `--tokens` each, `ignore_eos`):
- `off`: an engine built without hooks (capture_layers=0, steering_slots=0);
- `unused`: hooks compiled in (capture_layers=4, steering_slots=8), no row uses them;
- `4 capture + 4 steered`: 4 rows return the hidden states of 4 layers at every generated
  position, 4 other rows carry their own steering vector;
- `+ 4 lens`: as above, and 4 more rows ask the logit lens of 4 layers.
Decode tok/s counts the tokens generated after every request's prefill, over that time. Runs
alternate (off, unused, hooked, lens) `--repeats` times; the best of each is reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from jaxserve import LLM, SamplingParams
from jaxserve.loading.pull import resolve_model

WORDS = "the quick brown fox jumps over a lazy dog while the sun sets slowly behind hills".split()


def prompts(n: int) -> list[str]:
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(WORDS, size=48)) + f" story {i}:" for i in range(n)]


def decode_rate(llm: LLM, texts: list[str], params: list[SamplingParams]) -> float:
    engine = llm.engine
    requests = [engine.add_request(llm.tokenize(t), p) for t, p in zip(texts, params, strict=True)]
    while any(not r.output.token_ids for r in requests):
        engine.step()
    done = sum(len(r.output.token_ids) for r in requests)
    start = time.perf_counter()
    while engine.has_unfinished():
        engine.step()
    elapsed = time.perf_counter() - start
    return (sum(len(r.output.token_ids) for r in requests) - done) / elapsed


def compare(
    runs: dict[str, tuple[LLM, list[SamplingParams]]], texts: list[str], *, rows: int, repeats: int
) -> None:
    """Warm every run's shapes, alternate the runs `repeats` times, print the best of each
    against the first run."""
    for llm, params in runs.values():  # compile every shape the runs use (page buckets grow)
        decode_rate(llm, texts[:2], params[:2])
        decode_rate(llm, texts, params)
    best: dict[str, float] = {}
    for _ in range(repeats):
        for name, (llm, params) in runs.items():
            rate = decode_rate(llm, texts, params)
            best[name] = max(best.get(name, 0.0), rate)
            print(f"{name:>24}: {rate:6.1f} tok/s", flush=True)
    first = next(iter(best.values()))
    print(f"\n| run | decode tok/s ({rows} rows) | vs {next(iter(best))} |\n|---|---|---|")
    for name, rate in best.items():
        print(f"| {name} | {rate:.1f} | {rate / first:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    path = str(resolve_model(args.model))
    common = dict(max_num_seqs=args.rows, max_model_len=512, warmup=False)
    off = LLM(path, **common)
    hooked = LLM(path, capture_layers=4, steering_slots=8, **common)
    e, layers = hooked.config.hidden_size, hooked.config.num_layers
    rng = np.random.default_rng(1)
    base = SamplingParams(max_tokens=args.tokens, temperature=0.0, ignore_eos=True)
    plain = [base] * args.rows
    capture = dataclasses.replace(
        base,
        return_hidden_states=tuple(range(3, layers, layers // 4))[:4],
        hidden_positions="generated",
    )
    mixed = list(plain)
    for i in range(4):
        mixed[i] = capture
        mixed[4 + i] = dataclasses.replace(base, steering={12: rng.normal(size=e) * 0.5})
    lens = list(mixed)
    for i in range(8, 12):
        lens[i] = dataclasses.replace(base, logit_lens=(6, 12, 18, 24))
    texts = prompts(args.rows)
    runs = {
        "off": (off, plain),
        "unused": (hooked, plain),
        "4 capture + 4 steered": (hooked, mixed),
        "+ 4 lens": (hooked, lens),
    }
    compare(runs, texts, rows=args.rows, repeats=args.repeats)


if __name__ == "__main__":
    main()
