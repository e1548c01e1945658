"""Real-world JSON Schemas with valid and invalid instances against `schema_grammar`.

Each corpus file is `{"schema": ..., "tests": [{"data": ..., "valid": bool}, ...]}` (the
jsonschemabench layout); files without tests are skipped. A schema is

- "passed" when it compiles and every instance is judged as its `valid` says;
- "refused" when `schema_grammar` raises `UnsupportedConstraintError` (the reasons are counted);
- "key order" when the only misjudged instances are valid ones whose members are not in declared
  order (checked by compiling with `property_order="sorted"` and sorting the instance's keys:
  the documented narrowing, never a wider language);
- "wrong" otherwise: an invalid instance accepted, or a valid one rejected for another reason.

Instances are written compactly (`json.dumps(separators=(",", ":"), ensure_ascii=False)`).

Usage: python experiments/corpus_json_schema.py [CORPUS_DIR] [--show-wrong]
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from jaxserve.grammar.automaton import Automaton
from jaxserve.grammar.ir import UnsupportedConstraintError
from jaxserve.grammar.json_schema import schema_grammar

CORPUS = Path(__file__).resolve().parents[1] / "../shared/corpora/json-schemas-dev"


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def sorted_value(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: sorted_value(v[k]) for k in sorted(v)}
    return [sorted_value(x) for x in v] if isinstance(v, list) else v


def judge(schema: Any, tests: list[dict]) -> tuple[str, str]:
    """(category, detail) for one schema and its instances."""
    try:
        automaton = Automaton(schema_grammar(schema))
        missed = [t for t in tests if automaton.accepts(dumps(t["data"])) != t["valid"]]
    except UnsupportedConstraintError as e:
        return "refused", str(e).removeprefix("JSON Schema: ")[:90]
    if not missed:
        return "passed", ""
    if all(t["valid"] for t in missed):
        resorted = Automaton(schema_grammar(schema, property_order="sorted"))
        if all(resorted.accepts(dumps(sorted_value(t["data"]))) for t in missed):
            return "key order", ""
    first = missed[0]
    return "wrong", f"valid={first['valid']} {dumps(first['data'])[:160]}"


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    corpus = Path(args[0]) if args else CORPUS
    counts: Counter = Counter()
    reasons: Counter = Counter()
    wrong: list[str] = []
    seconds: list[float] = []
    for path in sorted(corpus.glob("*.json")):
        item = json.loads(path.read_text())
        if not item.get("tests"):
            continue
        start = time.perf_counter()
        category, detail = judge(item["schema"], item["tests"])
        seconds.append(time.perf_counter() - start)
        counts[category] += 1
        if category == "refused":
            reasons[detail] += 1
        elif category == "wrong":
            wrong.append(f"{path.name}: {detail}")
    total = sum(counts.values())
    print("| schemas | passed | key order | refused | wrong |\n|---:|---:|---:|---:|---:|")
    print(f"| {total} | " + " | ".join(
        f"{counts[c]} ({100 * counts[c] / total:.1f}%)"
        for c in ("passed", "key order", "refused", "wrong")
    ) + " |")  # fmt: skip
    seconds.sort()
    print(f"\ncompile + judge per schema: p50 {1000 * seconds[len(seconds) // 2]:.1f} ms, "
          f"max {1000 * seconds[-1]:.0f} ms")  # fmt: skip
    print("\nrefusals:")
    for reason, n in reasons.most_common():
        print(f"  {n:4d}  {reason}")
    if "--show-wrong" in sys.argv:
        for line in wrong:
            print("WRONG", line)


if __name__ == "__main__":
    main()
