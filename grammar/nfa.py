"""Grammar IR -> a byte-level recursive transition network (one Thompson NFA per rule).

A state has byte-range edges, epsilon edges, and calls (enter a rule, resume at a return state);
a rule's end state is `final`. The automaton runs it with a stack of return states.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .ir import (
    Alt,
    Chars,
    ConstraintBudgetError,
    Grammar,
    Node,
    Ref,
    Repeat,
    Seq,
    UnsupportedConstraintError,
    alt,
    seq,
    star,
)
from .utf8 import utf8_sequences

MAX_NFA_STATES = 400_000


@dataclass
class Network:
    """Flat NFA arrays indexed by state id."""

    edges: list[list[tuple[int, int, int]]] = field(default_factory=list)  # (lo, hi, target)
    eps: list[list[int]] = field(default_factory=list)
    calls: list[list[tuple[int, int]]] = field(default_factory=list)  # (rule start, return)
    final: list[bool] = field(default_factory=list)
    tail: list[bool] = field(default_factory=list)  # returning here == returning from the rule
    start: int = 0

    def new(self) -> int:
        if len(self.final) >= MAX_NFA_STATES:
            raise ConstraintBudgetError(
                f"grammar needs more than {MAX_NFA_STATES} automaton states"
            )
        self.edges.append([])
        self.eps.append([])
        self.calls.append([])
        self.final.append(False)
        return len(self.final) - 1


def build_network(grammar: Grammar) -> Network:
    """Compile every rule reachable from the start rule."""
    rules = remove_direct_left_recursion(grammar.rules)
    net = Network()
    starts: dict[str, int] = {}
    pending: list[tuple[str, int]] = []

    def rule_start(name: str) -> int:
        if name not in starts:
            starts[name] = net.new()
            pending.append((name, starts[name]))
        return starts[name]

    def build(node: Node, start: int) -> int:
        """Wire `node` from `start`; return its end state."""
        if isinstance(node, Chars):
            end = net.new()
            for rng in node.ranges:
                for byte_seq in utf8_sequences(*rng):
                    q = start
                    for i, (lo, hi) in enumerate(byte_seq):
                        t = end if i == len(byte_seq) - 1 else net.new()
                        net.edges[q].append((lo, hi, t))
                        q = t
            return end
        if isinstance(node, Seq):
            q = start
            for item in node.items:
                q = build(item, q)
            return q
        if isinstance(node, Alt):
            end = net.new()
            for item in node.items:
                s = net.new()
                net.eps[start].append(s)
                net.eps[build(item, s)].append(end)
            return end
        if isinstance(node, Ref):
            end = net.new()
            net.calls[start].append((rule_start(node.name), end))
            return end
        if isinstance(node, Repeat):
            return build_repeat(node, start)
        raise TypeError(f"not a grammar node: {node!r}")

    def build_repeat(node: Repeat, start: int) -> int:
        q = start
        for _ in range(node.min):
            q = build(node.item, q)
        if node.max is None:
            loop = net.new()
            net.eps[q].append(loop)
            net.eps[build(node.item, loop)].append(loop)
            return loop
        end = net.new()
        for _ in range(node.max - node.min):
            net.eps[q].append(end)
            q = build(node.item, q)
        net.eps[q].append(end)
        return end

    net.start = rule_start(grammar.start)
    while pending:
        name, s = pending.pop()
        net.final[build(rules[name], s)] = True
    net.tail = _tail_states(net)
    return net


def _tail_states(net: Network) -> list[bool]:
    """States from which only epsilon moves to a rule end remain (safe to drop from a stack)."""
    n = len(net.final)
    plain = [not net.edges[q] and not net.calls[q] for q in range(n)]
    tail = [plain[q] and net.final[q] and not net.eps[q] for q in range(n)]
    changed = True
    while changed:
        changed = False
        for q in range(n):
            if not tail[q] and plain[q] and net.eps[q] and all(tail[t] for t in net.eps[q]):
                tail[q] = changed = True
    return tail


def remove_direct_left_recursion(rules: dict[str, Node]) -> dict[str, Node]:
    """Rewrite `A ::= A a | b` as `A ::= b a*` (llama.cpp rejects left recursion; we rewrite it)."""
    out = dict(rules)
    for name, body in rules.items():
        options = body.items if isinstance(body, Alt) else (body,)
        recursive, base = [], []
        for opt_ in options:
            head = opt_.items[0] if isinstance(opt_, Seq) and opt_.items else opt_
            if head == Ref(name):
                rest = opt_.items[1:] if isinstance(opt_, Seq) else ()
                if not rest:
                    continue  # A ::= A adds nothing
                recursive.append(seq(*rest))
            else:
                base.append(opt_)
        if recursive:
            if not base:
                raise UnsupportedConstraintError(
                    f"rule {name!r} is left-recursive with no base case"
                )
            out[name] = seq(alt(*base), star(alt(*recursive)))
    return out
