"""Speculative decoding against plain decoding (SmolLM2, defaults, greedy): by prompt lookup,
or with `--method draft` by a draft model (`--draft-model`, default the target's own file, in
`--draft-weights`; `--weights` sets the target's format).

    .venv/bin/python experiments/bench_speculative.py [--streams 1 8] [--tokens 192] [--k 4]
    .venv/bin/python experiments/bench_speculative.py --method draft --weights f32 \\
        --draft-weights int8 --streams 1

Two workloads, chat-rendered: `editing` (the prompt holds code or text and asks for it back
renamed, corrected or extended, so the answer mostly repeats the prompt) and `prose` (a short
story: little to look up). For each, `--streams` concurrent requests run to `--tokens` tokens
(or their end), with and without speculation, alternating, `--repeats` times; the best wall
time of each is reported as tok/s, with the share of drafts accepted. The tokens are checked to
be the same.
"""

from __future__ import annotations

import argparse
import time

from jaxserve import LLM, SamplingParams
from jaxserve.loading.pull import resolve_model

CODE = """def load_rows(path):
    rows = []
    with open(path) as handle:
        for line in handle:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, value = line.split("=", 1)
            rows.append((name.strip(), value.strip()))
    return rows


def save_rows(path, rows):
    with open(path, "w") as handle:
        for name, value in rows:
            handle.write(f"{name} = {value}\\n")
"""
TEXT = (
    "The quick brown fox jumps over the lazy dog. The dog sleeps in the sun all day long, and "
    "the fox runs through the forest looking for food. In the evening, both animals rest near "
    "the old river, where the water is calm and cold."
)
EDITING = [
    f"Here is a Python file:\n\n```python\n{CODE}```\n\nRewrite the file with the function "
    "load_rows renamed to read_rows. Output only the code.",
    f"Repeat the following code exactly:\n\n{CODE}",
    f"Copy this text, then add one sentence at the end:\n\n{TEXT}",
    "Fix the spelling mistakes in this text and write out the full corrected text:\n\n"
    + TEXT.replace("jumps", "jumsp").replace("forest", "forrest"),
]
PROSE = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Describe a walk through a busy market in a city you imagine, in vivid detail.",
]


def run(llm: LLM, prompts: list[str], tokens: int) -> tuple[float, list]:
    params = SamplingParams(max_tokens=tokens, temperature=0.0)
    start = time.perf_counter()
    outs = llm.chat([[{"role": "user", "content": p}] for p in prompts], params)
    return time.perf_counter() - start, outs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, default=192)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--weights", default="auto", help="the target's weight format")
    parser.add_argument("--method", choices=("ngram", "draft"), default="ngram")
    parser.add_argument("--draft-model", default=None, help="with --method draft")
    parser.add_argument("--draft-weights", default="auto")
    args = parser.parse_args()
    path = str(resolve_model(args.model))
    common = dict(max_model_len=1024, max_num_seqs=max(args.streams), weights=args.weights)
    plain = LLM(path, **common)
    draft = {}
    if args.method == "draft":
        model = str(resolve_model(args.draft_model or args.model))
        draft = dict(speculative_model=model, speculative_weights=args.draft_weights)
    spec = LLM(path, speculative=args.method, num_speculative_tokens=args.k, **draft, **common)
    rows = []
    for name, pool in (("editing", EDITING), ("prose", PROSE)):
        for streams in args.streams:
            prompts = [pool[i % len(pool)] for i in range(streams)]
            run(plain, prompts, 16)  # compile
            run(spec, prompts, 16)
            best = {"off": float("inf"), "on": float("inf")}
            before = spec.engine.speculator.num_proposed, spec.engine.speculator.num_accepted
            for _ in range(args.repeats):
                for label, llm in (("off", plain), ("on", spec)):
                    seconds, outs = run(llm, prompts, args.tokens)
                    best[label] = min(best[label], seconds)
                    if label == "off":
                        expected = [o.token_ids for o in outs]
                    else:
                        assert [o.token_ids for o in outs] == expected, "tokens differ"
            n = sum(len(t) for t in expected)
            proposed = spec.engine.speculator.num_proposed - before[0]
            accepted = spec.engine.speculator.num_accepted - before[1]
            off, on = n / best["off"], n / best["on"]
            rows.append((name, streams, off, on, accepted / max(proposed, 1)))
            method = args.method
            print(f"{name} x{streams}: off {off:.1f} tok/s, {method} {on:.1f} tok/s", flush=True)
    head = f"| workload | streams | off tok/s | {args.method} tok/s | speed-up | drafts accepted |"
    print("\n" + head)
    print("|---|---|---|---|---|---|")
    for name, streams, off, on, rate in rows:
        print(f"| {name} | {streams} | {off:.1f} | {on:.1f} | {on / off:.2f}x | {rate:.0%} |")


if __name__ == "__main__":
    main()
