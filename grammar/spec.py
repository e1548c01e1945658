"""Constraint specs -> grammars, compiled per vocabulary with a cache and a time budget.

A spec is a mapping with exactly one of `json_schema`, `grammar` (GBNF), `regex`, `choice`
(list of strings) or `json_object` (true: any JSON value), plus for the JSON kinds an optional
`whitespace` ("compact", the default, or "bounded") and `unbounded_numbers` (true: numbers
without bounds of their own are not capped to the signed 64-bit range / 20 digits). A `grammar`
spec may carry `triggers` (non-empty strings): the matcher then lets text through freely until
one appears (`grammar/lazy.py`); they do not change the compiled grammar, so they are not part
of its key.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from .automaton import DEAD, Automaton
from .compiled import CompiledGrammar
from .gbnf import parse_gbnf
from .ir import ConstraintBudgetError, Grammar, UnsupportedConstraintError, choice
from .regex import regex_node
from .vocab import TokenVocab

log = logging.getLogger(__name__)
KINDS = ("json_schema", "grammar", "regex", "choice", "json_object")


def spec_kind(spec: Mapping[str, Any]) -> str:
    """Which constraint `spec` names; ValueError for none, several or unknown keys."""
    kinds = [k for k in KINDS if k in spec]
    unknown = sorted(set(spec) - set(KINDS) - {"whitespace", "triggers", "unbounded_numbers"})
    if unknown:
        raise UnsupportedConstraintError(f"unknown constraint field(s): {unknown}")
    if len(kinds) != 1:
        raise UnsupportedConstraintError(f"a constraint names exactly one of {list(KINDS)}")
    if "triggers" in spec:
        triggers = spec["triggers"]
        if kinds[0] != "grammar":
            raise UnsupportedConstraintError("triggers apply to grammar only")
        if not isinstance(triggers, list | tuple) or not all(
            isinstance(t, str) and t for t in triggers
        ):
            raise UnsupportedConstraintError("triggers must be a list of non-empty strings")
    return kinds[0]


def build_grammar(spec: Mapping[str, Any]) -> Grammar:
    """The grammar IR of a spec; `UnsupportedConstraintError` names what it cannot honour."""
    kind = spec_kind(spec)
    value = spec[kind]
    whitespace = spec.get("whitespace", "compact")
    unbounded = spec.get("unbounded_numbers", False)
    for option in ("whitespace", "unbounded_numbers"):
        if kind != "json_schema" and kind != "json_object" and option in spec:
            raise UnsupportedConstraintError(
                f"{option} applies to json_schema and json_object only"
            )
    if not isinstance(unbounded, bool):
        raise UnsupportedConstraintError("unbounded_numbers must be a boolean")
    if kind == "grammar":
        if not isinstance(value, str):
            raise UnsupportedConstraintError("grammar must be a GBNF string")
        return parse_gbnf(value)
    if kind == "regex":
        if not isinstance(value, str):
            raise UnsupportedConstraintError("regex must be a string")
        return Grammar({"root": regex_node(value)})
    if kind == "choice":
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise UnsupportedConstraintError("choice must be a list of strings")
        return Grammar({"root": choice(value)})
    from .json_schema import json_value_grammar, schema_grammar

    if kind == "json_object":
        if value is not True:
            raise UnsupportedConstraintError("json_object must be true")
        return json_value_grammar(whitespace=whitespace, unbounded_numbers=unbounded)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise UnsupportedConstraintError(f"json_schema is not valid JSON: {e}") from None
    if not isinstance(value, dict | bool):
        raise UnsupportedConstraintError("json_schema must be an object or a boolean")
    return schema_grammar(value, whitespace=whitespace, unbounded_numbers=unbounded)


def spec_key(spec: Mapping[str, Any]) -> str:
    spec = {k: v for k, v in spec.items() if k != "triggers"}  # they leave the grammar alone
    return json.dumps(spec, sort_keys=True, separators=(",", ":"), default=list)


def matches(spec: Mapping[str, Any], text: str) -> bool:
    """Is `text` a complete string of the constraint's language? (No tokenizer involved.)"""
    return Automaton(build_grammar(spec)).accepts(text)


def is_prefix(spec: Mapping[str, Any], text: str) -> bool:
    """Can `text` be continued into a complete string of the language (or is it one)?"""
    automaton = Automaton(build_grammar(spec))
    return automaton.walk(automaton.start, text.encode()) != DEAD


class GrammarCompiler:
    """Compiles specs against one vocabulary; LRU-caches results by spec.

    `budget_s` bounds the compile (the grammar, its first states and first mask); a spec that
    exceeds it raises `ConstraintBudgetError` and is not cached.
    """

    def __init__(self, vocab: TokenVocab, *, budget_s: float = 5.0, cache_size: int = 64) -> None:
        self.vocab = vocab
        self.budget_s = budget_s
        self.cache_size = cache_size
        self._cache: OrderedDict[str, CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()  # compiles may run on several threads; the cache is shared

    def compile(self, spec: Mapping[str, Any]) -> CompiledGrammar:
        key = spec_key(spec)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        deadline = time.monotonic() + self.budget_s
        grammar = build_grammar(spec)
        automaton = Automaton(grammar, deadline=deadline)
        compiled = CompiledGrammar(automaton, self.vocab, grammar.ignored)
        if grammar.ignored:
            log.debug("constraint: ignored JSON Schema annotations %s", ", ".join(grammar.ignored))
        compiled.mask(automaton.start)
        automaton.deadline = None
        if time.monotonic() > deadline:
            raise ConstraintBudgetError(f"constraint took longer than {self.budget_s} s to compile")
        with self._lock:
            self._cache[key] = compiled
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return compiled
