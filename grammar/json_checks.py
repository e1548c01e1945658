"""Whole-grammar checks on the compiled rules, and node size (when to share a node as a rule)."""

from __future__ import annotations

from .ir import Alt, Chars, Node, Ref, Repeat, Seq
from .json_keywords import refuse


def node_size(node: Node, limit: int) -> int:
    """Number of nodes in `node` (stops counting at `limit`)."""
    count, work = 0, [node]
    while work and count < limit:
        n = work.pop()
        count += 1
        if isinstance(n, Seq | Alt):
            work.extend(n.items)
        elif isinstance(n, Repeat):
            work.append(n.item)
            count += min(n.max or n.min, limit)  # expanded copies
    return count


def productive_rules(rules: dict[str, Node]) -> dict[str, bool]:
    """Which rules match at least one string."""
    done = dict.fromkeys(rules, False)

    def productive(node: Node) -> bool:
        if isinstance(node, Chars):
            return bool(node.ranges)
        if isinstance(node, Seq):
            return all(productive(i) for i in node.items)
        if isinstance(node, Alt):
            return any(productive(i) for i in node.items)
        if isinstance(node, Repeat):
            return node.min == 0 or productive(node.item)
        return done[node.name]

    changed = True
    while changed:
        changed = False
        for name, body in rules.items():
            if not done[name] and productive(body):
                done[name] = changed = True
    return done


def check_left_recursion(rules: dict[str, Node]) -> None:
    """Refuse grammars where a rule can reach itself without reading a character."""
    nullable = dict.fromkeys(rules, False)

    def can_be_empty(node: Node) -> bool:
        if isinstance(node, Chars):
            return False
        if isinstance(node, Seq):
            return all(can_be_empty(i) for i in node.items)
        if isinstance(node, Alt):
            return any(can_be_empty(i) for i in node.items)
        if isinstance(node, Repeat):
            return node.min == 0 or can_be_empty(node.item)
        return nullable[node.name]

    changed = True
    while changed:
        changed = False
        for name, body in rules.items():
            if not nullable[name] and can_be_empty(body):
                nullable[name] = changed = True

    def heads(node: Node, out: set[str]) -> None:
        if isinstance(node, Ref):
            out.add(node.name)
        elif isinstance(node, Seq):
            for item in node.items:
                heads(item, out)
                if not can_be_empty(item):
                    break
        elif isinstance(node, Alt):
            for item in node.items:
                heads(item, out)
        elif isinstance(node, Repeat) and node.max != 0:
            heads(node.item, out)

    graph = {}
    for name, body in rules.items():
        graph[name] = set()
        heads(body, graph[name])
    state: dict[str, int] = {}  # 1: on the DFS stack, 2: done
    for root in graph:
        if root in state:
            continue
        stack = [(root, iter(graph[root]))]
        state[root] = 1
        while stack:
            name, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[name] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                raise refuse("$ref: a schema refers to itself without consuming input")
            elif nxt not in state:
                state[nxt] = 1
                stack.append((nxt, iter(graph[nxt])))
