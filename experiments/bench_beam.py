"""What beam search costs against greedy decoding (SmolLM2, defaults): 64 tokens of one chat
prompt, greedy and beam widths 2 / 4 / 8, two rounds (the first compiles).

    .venv/bin/python experiments/bench_beam.py
"""

from __future__ import annotations

import time

from jaxserve import LLM, SamplingParams

WIDTHS = (2, 4, 8)
TOKENS = 64


def main() -> None:
    llm = LLM("smollm2-135m", max_model_len=512)
    text = llm.render_chat([{"role": "user", "content": "Write a short poem about the sea."}])
    prompt = llm.tokenizer.encode(text, add_special=False, parse_special=True)
    greedy = SamplingParams(max_tokens=TOKENS, temperature=0.0, ignore_eos=True)
    beams = SamplingParams(ignore_eos=True)
    for round_ in range(2):
        start = time.perf_counter()
        llm.generate([prompt], greedy)
        base = time.perf_counter() - start
        print(f"round {round_}: greedy {base:.2f} s", flush=True)
        for width in WIDTHS:
            start = time.perf_counter()
            llm.beam_search(prompt, beam_width=width, max_tokens=TOKENS, params=beams)
            took = time.perf_counter() - start
            print(f"round {round_}: width {width} {took:.2f} s ({took / base:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
