"""What LoRA adapters cost: decode tok/s of 32 rows with and without them (SmolLM2, int8).

    .venv/bin/python experiments/bench_lora.py [--rows 32] [--tokens 96] [--repeats 3] [--rank 16]

Runs of the same 32 greedy requests (~60-token prompts, `--tokens` each, `ignore_eos`):
- `off`: an engine built without adapters (max_loras=0);
- `unused`: 4 adapter slots compiled in, no row uses one;
- `1 adapter`: every row uses the same adapter;
- `4 adapters`: rows spread over 4 different adapters (8 rows each);
- `4 adapters + base`: 16 rows on 4 adapters, 16 rows without.
Adapters are random rank-`--rank` LoRAs on all seven projections of every layer (PEFT folders).
Decode tok/s counts the tokens generated after every request's prefill, over that time; runs
alternate `--repeats` times and the best of each is reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.bench_research import compare, prompts  # noqa: E402
from jaxserve import LLM, SamplingParams  # noqa: E402
from jaxserve.loading.pull import resolve_model  # noqa: E402
from tests.tiny_lora import write_random_peft  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args()
    path = str(resolve_model(args.model))
    common = dict(max_num_seqs=args.rows, max_model_len=512, warmup=False)
    off = LLM(path, **common)
    with tempfile.TemporaryDirectory() as tmp:
        adapters = {
            f"lora{i}": write_random_peft(
                Path(tmp) / f"lora{i}", off.config, rank=args.rank, seed=i, std=0.02
            )
            for i in range(4)
        }
        lora = LLM(path, max_loras=4, max_lora_rank=args.rank, lora_adapters=adapters, **common)
    base = SamplingParams(max_tokens=args.tokens, temperature=0.0, ignore_eos=True)
    names = list(adapters)
    plain = [base] * args.rows
    one = [dataclasses.replace(base, lora=names[0])] * args.rows
    four = [dataclasses.replace(base, lora=names[i % 4]) for i in range(args.rows)]
    half = [p if i % 2 else base for i, p in enumerate(four)]
    texts = prompts(args.rows)
    runs = {
        "off": (off, plain),
        "unused": (lora, plain),
        "1 adapter": (lora, one),
        "4 adapters": (lora, four),
        "4 adapters + base": (lora, half),
    }
    compare(runs, texts, rows=args.rows, repeats=args.repeats)


if __name__ == "__main__":
    main()
