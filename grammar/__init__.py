"""Constrained decoding on the host: GBNF / JSON Schema / regex / choice -> token bitmask rows.

Imports numpy only. `GrammarCompiler(vocab).compile(spec)` gives a `CompiledGrammar` (cached);
each request gets a `Matcher` over it (a `LazyMatcher` when the spec has `triggers`).
`matches(spec, text)` checks a string without a tokenizer. Tool calling (OpenAI `tools`) lives in
`tools.py` (the constraint) and `tool_parser.py` (calls out of the generated text).
"""

from .automaton import Automaton
from .compiled import CompiledGrammar
from .gbnf import parse_gbnf
from .gbnf_print import to_gbnf
from .ir import ConstraintBudgetError, Grammar, UnsupportedConstraintError
from .lazy import LazyMatcher
from .matcher import Matcher
from .regex import regex_node
from .spec import KINDS, GrammarCompiler, build_grammar, is_prefix, matches, spec_kind
from .vocab import TokenVocab

__all__ = [
    "KINDS",
    "Automaton",
    "CompiledGrammar",
    "ConstraintBudgetError",
    "Grammar",
    "GrammarCompiler",
    "LazyMatcher",
    "Matcher",
    "TokenVocab",
    "UnsupportedConstraintError",
    "build_grammar",
    "is_prefix",
    "matches",
    "parse_gbnf",
    "regex_node",
    "spec_kind",
    "to_gbnf",
]
