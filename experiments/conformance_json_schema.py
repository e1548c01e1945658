"""Run the JSON-Schema-Test-Suite (draft 2020-12, top-level files) against `schema_grammar`.

Each schema group is compiled once (a refusal counts all its tests as "refused"); each test's data
is serialized compactly (`json.dumps(separators=(",", ":"), ensure_ascii=False)`) and `accepts` is
compared with the expected `valid`. Two by-design categories are kept apart from "wrong":

- "format asserted": format.json expects `format` to be annotation-only; we assert formats;
- "integer spelling": a valid instance rejected only because an integer value is written as a
  float (`1.0`; integers are spelled as integers by design);
- "key order": a valid object rejected only because its keys are not in declared order (some
  reordering of its keys is accepted).

Usage: python experiments/conformance_json_schema.py [SUITE_DIR]
"""

from __future__ import annotations

import itertools
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from jaxserve.grammar.automaton import Automaton
from jaxserve.grammar.ir import UnsupportedConstraintError
from jaxserve.grammar.json_schema import schema_grammar

SUITE = Path(__file__).resolve().parents[1] / "tests/data/json-schema-test-suite"
DRAFT = "tests/draft2020-12"
MAX_REORDERINGS = 200


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def reorderings(value: Any) -> list[Any]:
    """`value` with the keys of its objects permuted in every way (up to MAX_REORDERINGS)."""
    if isinstance(value, list):
        options = [reorderings(v) for v in value]
        return [list(c) for c in itertools.islice(itertools.product(*options), MAX_REORDERINGS)]
    if isinstance(value, dict):
        keys = list(value)
        inner = {k: reorderings(v) for k, v in value.items()}
        out = []
        for order in itertools.permutations(keys):
            for vals in itertools.product(*(inner[k] for k in order)):
                out.append(dict(zip(order, vals, strict=True)))
                if len(out) >= MAX_REORDERINGS:
                    return out
        return out
    return [value]


def as_integers(value: Any) -> Any:
    """`value` with integer-valued floats (1.0) as ints."""
    if isinstance(value, list):
        return [as_integers(v) for v in value]
    if isinstance(value, dict):
        return {k: as_integers(v) for k, v in value.items()}
    return int(value) if isinstance(value, float) and value.is_integer() else value


def classify(file: str, automaton: Automaton, data: Any, valid: bool) -> str:
    if automaton.accepts(dumps(data)) == valid:
        return "passed"
    if file == "format.json":
        return "format asserted"
    if valid:
        ints = as_integers(data)
        if dumps(ints) != dumps(data) and automaton.accepts(dumps(ints)):
            return "integer spelling"
        if any(automaton.accepts(dumps(v)) for v in reorderings(ints)[1:]):
            return "key order"
    return "wrong"


def run_suite(
    suite: Path = SUITE, *, whitespace: str = "compact"
) -> tuple[dict[str, Counter], list[str]]:
    """Counts per file and category, and a line per wrong case."""
    counts: dict[str, Counter] = {}
    wrong: list[str] = []
    for path in sorted((suite / DRAFT).glob("*.json")):
        tally = counts.setdefault(path.name, Counter())
        for group in json.loads(path.read_text()):
            try:
                automaton = Automaton(schema_grammar(group["schema"], whitespace=whitespace))
            except UnsupportedConstraintError:
                tally["refused"] += len(group["tests"])
                continue
            for test in group["tests"]:
                try:
                    kind = classify(path.name, automaton, test["data"], test["valid"])
                except UnsupportedConstraintError:  # e.g. an automaton budget
                    kind = "refused"
                tally[kind] += 1
                if kind == "wrong":
                    wrong.append(
                        f"{path.name}: {group['description']} / {test['description']}: "
                        f"expected valid={test['valid']}, schema={dumps(group['schema'])}, "
                        f"data={dumps(test['data'])}"
                    )
    return counts, wrong


def main() -> None:
    suite = Path(sys.argv[1]) if len(sys.argv) > 1 else SUITE
    counts, wrong = run_suite(suite)
    categories = ["passed", "refused", "wrong", "format asserted", "integer spelling", "key order"]
    print(f"{'file':30}" + "".join(f"{c:>18}" for c in categories))
    total: Counter = Counter()
    for name, tally in counts.items():
        total.update(tally)
        print(f"{name:30}" + "".join(f"{tally[c]:>18}" for c in categories))
    print(f"{'TOTAL':30}" + "".join(f"{total[c]:>18}" for c in categories))
    for line in wrong:
        print("WRONG", line)


if __name__ == "__main__":
    main()
