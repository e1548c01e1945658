"""The JSON-Schema-Test-Suite (draft 2020-12) against `schema_grammar`: no wrong answers.

Refusals are allowed; so are the by-design categories of experiments/conformance_json_schema.py
(asserted formats, key order). The runner lives there; this test only checks its verdict.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "../shared/conformance/json-schema-test-suite"

pytestmark = pytest.mark.skipif(
    not (SUITE / "tests/draft2020-12").is_dir(),
    reason=f"JSON-Schema-Test-Suite not found at {SUITE.resolve()}",
)


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
    assert total["passed"] >= 600, total  # a guard against silently refusing more
