"""The JSON-Schema-Test-Suite (draft 2020-12) against `schema_grammar`: no wrong answers.

Refusals are allowed; so are the by-design categories of experiments/conformance_json_schema.py
(asserted formats, key order). The runner lives there; this test only checks its verdict. The
suite's top-level 2020-12 files are vendored in tests/data/json-schema-test-suite (MIT, its
LICENSE beside them).
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "tests/data/json-schema-test-suite"


def _runner():
    spec = importlib.util.spec_from_file_location(
        "conformance_json_schema", ROOT / "experiments/conformance_json_schema.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("whitespace", ["compact", "bounded"])
def test_no_wrong_answers(whitespace: str) -> None:
    counts, wrong = _runner().run_suite(SUITE, whitespace=whitespace)
    total = sum(counts.values(), Counter())
    assert wrong == [], "\n".join(wrong)
    assert total["passed"] >= 740, total  # a guard against silently refusing more
