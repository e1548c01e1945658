"""Grammar benchmark: our constrained decoding vs xgrammar and llguidance, same schemas and vocab.

For each JSON Schema (tests/fixtures/grammar_schemas.json, plus with `--suite` a seeded sample of
the JSON-Schema-Test-Suite draft 2020-12 top-level schemas) and each engine, in one process and
one thread:

- compile: ours `GrammarCompiler(vocab, cache_size=0).compile(spec)`, a fresh compiler each time
  (lazy: builds the grammar and the first mask only); xgrammar `compile_json_schema` (cache off,
  `max_threads=1`; precomputes its adaptive token masks); llguidance `grammar_from_json_schema` +
  `LLMatcher(...)` (lazy: masks are computed on demand). "+1st mask" adds the first mask;
- mask: each valid instance is serialized compactly (`json.dumps(separators=(",", ":"),
  ensure_ascii=False)`), tokenized with our tokenizer and walked on a new matcher of the compiled
  grammar, timing each mask (ours `Matcher.bitmask()`, xgrammar `fill_next_token_bitmask`,
  llguidance `fill_next_token_bitmask` of `llguidance.numpy`) and then accepting the token, plus
  one mask after the last token. An instance is accepted when every token was and the final mask
  allows a stop id (ours also needs `is_accepting()`);
- agree: share of mask positions where the peer's mask equals ours (stop-id bits cleared).

Every engine gets the same token byte strings (control tokens empty, i.e. special) and stop ids.
JSON options: compact separators, no free whitespace, JSON Schema semantics (xgrammar
`strict_mode=False`, llguidance `whitespace_flexible=False`).

Setup (the peers pull torch, so they stay out of `.venv`):

    python -m venv .venv-bench
    .venv-bench/bin/pip install torch==2.13.0          # the CPU wheel
    .venv-bench/bin/pip install -e '.[grammar-bench]'  # xgrammar==0.2.8, llguidance==1.9.1
    .venv-bench/bin/python experiments/bench_grammar.py --vocab both --limit 15 --suite

Without the peers installed only ours runs. Models are pulled on first use (`jaxserve pull`).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from jaxserve.grammar import (
    ConstraintBudgetError,
    GrammarCompiler,
    Matcher,
    TokenVocab,
    UnsupportedConstraintError,
)
from jaxserve.loading.gguf_meta import open_gguf, read_metadata
from jaxserve.loading.pull import resolve_model
from jaxserve.text.tokenizer import GGUFTokenizer, Tokenizer

try:  # the peers live in .venv-bench only (see above)
    import xgrammar
except ImportError:
    xgrammar = None
try:
    import llguidance
    import llguidance.numpy as llnp
except ImportError:
    llguidance = llnp = None

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests/fixtures/grammar_schemas.json"
SUITE = ROOT / "tests/data/json-schema-test-suite/tests/draft2020-12"
MODELS = {"smollm2": "smollm2-135m", "gemma3": "gemma3-270m"}
now = time.perf_counter


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def load_cases(limit: int | None, suite: bool) -> list[tuple[str, str, Any, list[Any]]]:
    """(set, name, schema, valid instances): the fixture set, then a seeded sample of the suite."""
    fixtures = json.loads(FIXTURES.read_text())
    cases = [("fixtures", e["name"], e["schema"], e["valid"]) for e in fixtures][:limit]
    if suite:
        groups = []
        for path in sorted(SUITE.resolve().glob("*.json")):
            for group in json.loads(path.read_text()):
                valid = [t["data"] for t in group["tests"] if t["valid"]]
                name = f"{path.stem}: {group['description']}"
                groups += [("suite", name, group["schema"], valid)] if valid else []
        cases += random.Random(0).sample(groups, min(limit or len(groups), len(groups)))
    return cases


def timed_walk(fill: Callable[[], np.ndarray], accept: Callable[[int], bool], ids: list[int]):
    """Time `fill()` before each token and once after the last: (times, masks, all accepted)."""
    times, masks = [], []
    for i in [*ids, None]:
        t = now()
        row = fill()
        times.append(now() - t)
        masks.append(row.copy())
        if i is not None and not accept(i):
            return times, masks, False
    return times, masks, True


# ---- engines: compile(schema) -> handle, raising one of `refusals`; walk(handle, ids) ----------


class Ours:
    name = "ours"
    refusals = (UnsupportedConstraintError, ConstraintBudgetError)

    def __init__(self, token_bytes: list[bytes], eos: list[int], tok: Tokenizer) -> None:
        self.vocab = TokenVocab(token_bytes, eos)
        self.visits: list[tuple[bool, float]] = []  # (first visit of the state?, mask time)

    def compile(self, schema: Any) -> Any:
        return GrammarCompiler(self.vocab, cache_size=0).compile({"json_schema": schema})

    def walk(self, compiled: Any, ids: list[int]):
        m = Matcher(compiled)
        firsts = []

        def fill() -> np.ndarray:
            firsts.append(m.state not in compiled._masks)  # private: masks cached per state
            return m.bitmask()

        times, masks, ok = timed_walk(fill, m.accept_token, ids)
        self.visits += zip(firsts, times, strict=True)
        return times, masks, ok and m.is_accepting()


class XGrammar:
    name = "xgrammar"
    refusals = (RuntimeError, ValueError, TypeError)

    def __init__(self, token_bytes: list[bytes], eos: list[int], tok: Tokenizer) -> None:
        raw, size = xgrammar.VocabType.RAW, len(token_bytes)
        self.info = xgrammar.TokenizerInfo(token_bytes, raw, vocab_size=size, stop_token_ids=eos)
        self.compiler = xgrammar.GrammarCompiler(self.info, max_threads=1, cache_enabled=False)

    def compile(self, schema: Any) -> Any:
        return self.compiler.compile_json_schema(
            dumps(schema), any_whitespace=False, separators=(",", ":"), strict_mode=False
        )

    def walk(self, compiled: Any, ids: list[int]):
        m = xgrammar.GrammarMatcher(compiled)
        bitmask = xgrammar.allocate_token_bitmask(1, self.info.vocab_size)  # a CPU torch tensor
        view = bitmask.numpy()[0]

        def fill() -> np.ndarray:
            m.fill_next_token_bitmask(bitmask)
            return view

        return timed_walk(fill, m.accept_token, ids)


class LLGuidance:
    name = "llguidance"
    refusals = (RuntimeError, ValueError)

    def __init__(self, token_bytes: list[bytes], eos: list[int], tok: Tokenizer) -> None:
        class RawTokens:  # what llguidance.TokenizerWrapper reads from a tokenizer
            eos_token_id, bos_token_id = eos[0], tok.bos_id
            tokens = [b or tok.token_bytes(i, special=True) for i, b in enumerate(token_bytes)]
            special_token_ids = [i for i, b in enumerate(token_bytes) if not b]

            def __call__(self, s: str | bytes) -> list[int]:
                text = s.decode("utf-8", "replace") if isinstance(s, bytes) else s
                return tok.encode(text, add_special=False)

        wrapper = llguidance.TokenizerWrapper(RawTokens())
        self.tok = llguidance.LLTokenizer(wrapper, n_vocab=len(token_bytes), eos_token=eos)

    def compile(self, schema: Any) -> Any:
        options = {"whitespace_flexible": False}
        grammar = llguidance.LLMatcher.grammar_from_json_schema(dumps(schema), defaults=options)
        matcher = llguidance.LLMatcher(self.tok, grammar, log_level=0)
        if matcher.is_error():
            raise ValueError(matcher.get_error())
        return matcher

    def walk(self, compiled: Any, ids: list[int]):
        m = compiled.deep_copy()
        bitmask = llnp.allocate_token_bitmask(1, self.tok.vocab_size)

        def fill() -> np.ndarray:
            llnp.fill_next_token_bitmask(m, bitmask)
            return bitmask[0]

        times, masks, ok = timed_walk(fill, m.consume_token, ids)
        return times, masks, ok and not m.is_error()


ENGINES = {"ours": Ours, "xgrammar": XGrammar, "llguidance": LLGuidance}
INSTALLED = {"ours": True, "xgrammar": xgrammar is not None, "llguidance": llguidance is not None}


# ---- the run -----------------------------------------------------------------------------------


def new_stats() -> dict[str, Any]:
    return {"compile": [], "first": [], "mask": [], "refused": 0, "ok": 0, "n": 0,
            "ok_all": 0, "n_all": 0, "agree": [0, 0], "visits": []}  # fmt: skip


def bench_case(engines, schema, walks, eos: list[int], stop_clear, stats) -> str:
    """Compile `schema` and walk every tokenized instance on each engine; a progress note."""
    notes, ours_masks, accepted = [], [], {}
    for engine in engines:
        s = stats[engine.name]
        try:
            t = now()
            compiled = engine.compile(schema)
            s["compile"].append(now() - t)
        except engine.refusals:
            s["refused"] += 1
            notes.append(f"{engine.name} refused")
            continue
        accepted[engine.name] = 0
        for k, ids in enumerate(walks):
            times, masks, ok = engine.walk(compiled, ids)
            if k == 0:
                s["first"].append(s["compile"][-1] + times[0])
            s["mask"] += times
            final = masks[-1]
            accepted[engine.name] += ok and any(final[e // 32] >> (e % 32) & 1 for e in eos)
            if engine.name == "ours":
                ours_masks.append(masks)
            elif len(ours_masks) == len(walks):
                pairs = zip(ours_masks[k], masks, strict=False)
                same = [np.array_equal(a & stop_clear, b & stop_clear) for a, b in pairs]
                s["agree"][0] += sum(same)
                s["agree"][1] += len(same)
        s["ok"] += accepted[engine.name]
        s["n"] += len(walks)
        notes.append(f"{engine.name} {accepted[engine.name]}/{len(walks)}")
    if len(accepted) == len(engines):  # every engine compiled it
        for name, ok in accepted.items():
            stats[name]["ok_all"] += ok
            stats[name]["n_all"] += len(walks)
    for engine in engines:
        if engine.name == "ours":
            stats["ours"]["visits"] += engine.visits
            engine.visits = []
    return ", ".join(notes)


def run_vocab(key: str, cases, engine_names: list[str]) -> list[dict[str, Any]]:
    tok = GGUFTokenizer.from_metadata(read_metadata(open_gguf(resolve_model(MODELS[key]))))
    token_bytes = [tok.token_bytes(i) for i in range(tok.vocab_size)]
    eos = sorted(tok.eos_ids)
    print(f"{key}: {tok.vocab_size} tokens, stop ids {eos}")
    engines = []
    for name in engine_names:
        if not INSTALLED[name]:
            print(f"  {name}: not installed, skipped (see this script's docstring)")
            continue
        t = now()
        engines.append(ENGINES[name](token_bytes, eos, tok))
        print(f"  {name}: vocabulary setup {now() - t:.2f} s")
    keep = np.ones((len(token_bytes) + 31) // 32 * 32, bool)
    keep[eos] = False
    stop_clear = np.packbits(keep, bitorder="little").view("<u4").view(np.int32)
    sets = list(dict.fromkeys(source for source, *_ in cases))
    stats = {(src, e.name): new_stats() for src in sets for e in engines}
    for source, name, schema, instances in cases:
        walks = [tok.encode(dumps(v), add_special=False) for v in instances]
        by_engine = {e.name: stats[source, e.name] for e in engines}
        note = bench_case(engines, schema, walks, eos, stop_clear, by_engine)
        print(f"  [{source}] {name[:50]}: {note}", flush=True)
    count = {src: sum(c[0] == src for c in cases) for src in sets}
    return [
        {"vocab": key, "set": src, "engine": e.name, "schemas": count[src], **stats[src, e.name]}
        for src in sets
        for e in engines
    ]


def pct(values: list[float], scale: float) -> str:
    if not values:
        return "-"
    return " / ".join(f"{np.percentile(values, q) * scale:.1f}" for q in (50, 99))


def ratio(ok: int, n: int) -> str:
    return f"{ok}/{n} ({100 * ok / n:.0f}%)" if n else "-"


def table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| vocab | set | engine | schemas | refused | compile p50 / p99 (ms) "
        "| +1st mask p50 / p99 (ms) | mask p50 / p99 (µs) | masks | instances accepted "
        "| accepted, schemas all compile | mask = ours |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        agree = f"{100 * r['agree'][0] / r['agree'][1]:.1f}%" if r["agree"][1] else "-"
        out.append(
            f"| {r['vocab']} | {r['set']} | {r['engine']} | {r['schemas']} | {r['refused']} "
            f"| {pct(r['compile'], 1e3)} | {pct(r['first'], 1e3)} | {pct(r['mask'], 1e6)} "
            f"| {len(r['mask'])} | {ratio(r['ok'], r['n'])} | {ratio(r['ok_all'], r['n_all'])} "
            f"| {'' if r['engine'] == 'ours' else agree} |"
        )
    ours = [r for r in rows if r["engine"] == "ours"]
    if ours:
        out += ["", "Ours, masks by automaton state: first visit (computed) vs cached", ""]
        out.append("| vocab | set | first visits | p50 / p99 (µs) | cached | p50 / p99 (µs) |")
        out.append("|---|---|---:|---:|---:|---:|")
    for r in ours:
        first = [t for f, t in r["visits"] if f]
        cached = [t for f, t in r["visits"] if not f]
        out.append(
            f"| {r['vocab']} | {r['set']} | {len(first)} | {pct(first, 1e6)} "
            f"| {len(cached)} | {pct(cached, 1e6)} |"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", choices=["smollm2", "gemma3", "both"], default="smollm2")
    parser.add_argument("--limit", type=int, default=None, help="schemas per set")
    parser.add_argument("--suite", action="store_true", help="add JSON-Schema-Test-Suite schemas")
    parser.add_argument("--engines", default="ours,xgrammar,llguidance")
    args = parser.parse_args()
    cases = load_cases(args.limit, args.suite)
    rows = []
    for key in ["smollm2", "gemma3"] if args.vocab == "both" else [args.vocab]:
        rows += run_vocab(key, cases, args.engines.split(","))
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
