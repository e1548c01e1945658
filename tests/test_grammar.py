"""The grammar package on its own: front ends against references, soundness, token masks."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxserve.grammar import (
    Automaton,
    ConstraintBudgetError,
    GrammarCompiler,
    Matcher,
    TokenVocab,
    UnsupportedConstraintError,
    build_grammar,
    is_prefix,
    matches,
)
from jaxserve.grammar.automaton import DEAD
from jaxserve.testing import strings_from

GBNF_DIR = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "gbnf"
REGEXES = [
    r"[a-c]+",
    r"(ab|c)*d?",
    r"\d{3}-\d{2,4}",
    r"x{2,}y{0,3}",
    r"[^abc\n]{1,3}z",
    r"(a|b)(c|d)\.e",
    r"colou?r|grey|gray",
    r"\w+@\w+\.(com|org)",
    r"[\d.]+",
    r"a.c",
    r"(?:ab){2}(?P<tail>c+)",
    r"\s?[A-Z][a-z]*",
]
ALPHABET = "abcdxyzACZ0123.-@\n _é中"
# Self-written GBNF grammars, so the suite does not need the shared corpus.
GRAMMARS = {
    "list": 'root ::= ("- " item "\\n")+\nitem ::= [^\\n]+',
    "arith": 'root ::= expr\nexpr ::= expr [-+*/] term | term\nterm ::= [0-9]+ | "(" expr ")"',
    "nested": 'root ::= "[" (root ("," root)*)? "]"',
    "unicode": 'root ::= [\\u4e00-\\u9fff]{2,4} "\\x21"? [^\\x00-\\x7F]*',
    "comments": '# a comment\nroot ::= a | b # trailing\na ::= "x"{2} ( "y" |\n "z" )\nb ::= .',
}


@pytest.mark.parametrize("pattern", REGEXES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_regex_agrees_with_re_fullmatch(pattern, data):
    text = data.draw(st.text(ALPHABET, max_size=8) | strings_from({"regex": pattern}))
    assert matches({"regex": pattern}, text) == bool(re.fullmatch(pattern, text, re.ASCII))


@pytest.mark.parametrize("pattern", REGEXES)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_strings_from_a_regex_are_matches(pattern, data):
    text = data.draw(strings_from({"regex": pattern}))
    assert re.fullmatch(pattern, text)


@pytest.mark.parametrize("name", sorted(GRAMMARS))
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_strings_from_a_grammar_are_accepted_and_prefix_closed(name, data):
    spec = {"grammar": GRAMMARS[name]}
    text = data.draw(strings_from(spec))
    automaton = Automaton(build_grammar(spec))
    state = automaton.start
    for byte in text.encode():
        # Every live state can still reach a complete string.
        assert _can_complete(automaton, state)
        state = automaton.step(state, byte)
        assert state != DEAD
    assert automaton.accepting[state]


def _can_complete(automaton: Automaton, state: int, limit: int = 64) -> bool:
    frontier, seen = [state], {state}
    for _ in range(limit):
        if any(automaton.accepting[s] for s in frontier):
            return True
        automaton.fill_rows(frontier)
        nxt = {int(t) for s in frontier for t in automaton.table[s] if t != DEAD} - seen
        seen |= nxt
        frontier = sorted(nxt)[:256]
        if not frontier:
            return False
    return False


def test_left_recursion_is_rewritten_not_rejected():
    spec = {"grammar": GRAMMARS["arith"]}
    for text, ok in [("1", True), ("1+2*3", True), ("(1-2)/3", True), ("1+", False), ("+1", False)]:
        assert matches(spec, text) is ok, text


def test_gbnf_examples_and_escapes():
    assert matches({"grammar": GRAMMARS["unicode"]}, "中文!é")
    assert not matches({"grammar": GRAMMARS["unicode"]}, "中!")
    assert matches({"grammar": GRAMMARS["comments"]}, "xxz")
    assert matches({"grammar": GRAMMARS["comments"]}, "q")
    assert matches({"grammar": GRAMMARS["nested"]}, "[[],[[]]]")
    assert not matches({"grammar": GRAMMARS["nested"]}, "[[],[[]]")


CORPUS_SAMPLES = {
    "arithmetic": ["x=1\n", "(a+b)*2= 7\n"],
    "c": ["int main(){return 0;}", "int f(int x){x = x+1;}"],
    "chess": ["1. e4 e5\n2. Nf3 Nc6\n"],
    "english": ["Hello world."],
    "japanese": ["こんにちは"],
    "json": ['{"a": [1, 2, {"b": null}], "c": "d\\n"}'],
    "json_arr": ['[\n1,\n"a"]', "[\n]"],
    "list": ["- a\n- b\n"],
}


@pytest.mark.skipif(not GBNF_DIR.is_dir(), reason="../shared/conformance/gbnf is not present")
@pytest.mark.parametrize("name", sorted(CORPUS_SAMPLES))
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_llama_cpp_example_grammars_parse_and_accept_samples(name, data):
    spec = {"grammar": (GBNF_DIR / f"{name}.gbnf").read_text()}
    for text in CORPUS_SAMPLES[name]:
        assert matches(spec, text), text
    assert matches(spec, data.draw(strings_from(spec)))


@pytest.mark.parametrize(
    ("spec", "feature"),
    [
        ({"regex": "(?=a)a"}, "lookaround"),
        ({"regex": r"(a)\1"}, r"\1"),
        ({"regex": r"\bword"}, r"\b"),
        ({"regex": "a^b"}, "anchors"),
        ({"regex": "(?i)abc"}, "inline flags"),
        ({"grammar": "root ::= <think> [a-z]*"}, "token references"),
        ({"grammar": 'root ::= "a" ::='}, "syntax error"),
        ({"grammar": "root ::= undefined-rule"}, "undefined rules"),
        ({"grammar": 'start ::= "a"'}, "no start rule"),
        ({"choice": []}, "at least one"),
        ({"regex": "a", "choice": ["a"]}, "exactly one"),
        ({"regex": "a", "flavour": 1}, "unknown constraint field"),
    ],
)
def test_unsupported_constraints_are_refused_naming_the_feature(spec, feature):
    with pytest.raises(UnsupportedConstraintError, match=re.escape(feature)):
        build_grammar(spec)


def test_is_prefix():
    spec = {"choice": ["hello", "help"]}
    assert is_prefix(spec, "hel") and is_prefix(spec, "help") and not is_prefix(spec, "hex")


# -- token level -------------------------------------------------------------------------------

TOKENS = [b"", *(bytes([b]) for b in range(256)), b"ab", b"abc", b"cd", b" ", b'{"', b'":']
TOKENS += ["中".encode()[:1], "中".encode()[1:], "文".encode(), "中文".encode(), b"a\xe4"]
EOS = 0


@pytest.fixture(scope="module")
def compiler() -> GrammarCompiler:
    return GrammarCompiler(TokenVocab(TOKENS, [EOS], width=len(TOKENS) + 40))


def _allowed(row: np.ndarray) -> set[int]:
    bits = np.unpackbits(row.view(np.uint8), bitorder="little")
    return set(np.flatnonzero(bits).tolist())


@pytest.mark.parametrize(
    "spec",
    [{"regex": "(ab|cd)+c?"}, {"choice": ["中文", "中", "abc"]}, {"grammar": GRAMMARS["nested"]}],
    ids=["regex", "choice", "nested"],
)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_mask_allows_exactly_the_tokens_that_keep_the_text_alive(compiler, spec, data):
    compiled = compiler.compile(spec)
    matcher = Matcher(compiled)
    automaton = compiled.automaton
    text = data.draw(strings_from(spec)).encode()
    for _ in range(8):
        allowed = _allowed(matcher.bitmask())
        expected = {
            t for t, tb in enumerate(TOKENS) if tb and automaton.walk(matcher.state, tb) != DEAD
        }
        if matcher.is_accepting():
            expected.add(EOS)
        assert allowed == expected
        assert max(allowed) < len(TOKENS)  # padded ids are never allowed
        # Follow the drawn string by its longest allowed token, else stop.
        options = [t for t in allowed if t != EOS and text.startswith(TOKENS[t])]
        if not options:
            break
        token = max(options, key=lambda t: len(TOKENS[t]))
        assert matcher.accept_token(token)
        text = text[len(TOKENS[token]) :]


def test_a_code_point_split_across_tokens(compiler):
    matcher = Matcher(compiler.compile({"choice": ["中文"]}))
    first, second = TOKENS.index("中".encode()[:1]), TOKENS.index("中".encode()[1:])
    assert not matcher.accept_token(TOKENS.index(b"a"))
    assert matcher.accept_token(first) and matcher.accept_token(second)
    assert not matcher.is_accepting() and EOS not in _allowed(matcher.bitmask())
    assert matcher.accept_token(TOKENS.index("文".encode()))
    assert _allowed(matcher.bitmask()) == {EOS}  # complete: only end of generation
    assert matcher.is_complete() and matcher.accept_token(EOS) and matcher.is_terminated()
    assert not _allowed(matcher.bitmask())


def test_rollback_and_forced_bytes(compiler):
    matcher = Matcher(compiler.compile({"regex": "hello (world|there)"}))
    assert matcher.forced_bytes() == b"hello "
    for b in b"hello w":
        assert matcher.accept_token(TOKENS.index(bytes([b])))
    assert matcher.forced_bytes() == b"orld"
    matcher.rollback(1)
    assert matcher.forced_bytes() == b""  # "world" or "there"
    with pytest.raises(ValueError):
        matcher.rollback(7)


def test_compiles_are_cached_and_the_budget_fails_cleanly():
    vocab = TokenVocab(TOKENS, [EOS])
    compiler = GrammarCompiler(vocab)
    assert compiler.compile({"regex": "a+"}) is compiler.compile({"regex": "a+"})
    strict = GrammarCompiler(vocab, budget_s=0.0)
    with pytest.raises(ConstraintBudgetError):
        strict.compile({"grammar": GRAMMARS["arith"]})
    assert GrammarCompiler(vocab, budget_s=5.0).compile({"grammar": GRAMMARS["arith"]})
