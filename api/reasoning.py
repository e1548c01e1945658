"""Reasoning parsers: a reply that opens with a `<think>` block is split into the block's text
(`reasoning_content`) and the text after it (`content`), whole or incrementally while streaming.

Parsers (`jaxserve serve --reasoning-parser`):
- "none": no split.
- "think": a reply whose first non-blank text is `<think>` thinks until the first `</think>`. When
  the prompt itself ends inside an open `<think>` (templates that start the block for the model),
  the reply starts inside it.
- "think-open": the reply always starts inside the block (for templates that open it in a way
  the prompt check does not see).

Whitespace around the block (before `<think>`, inside its edges, after `</think>`) belongs to
neither part; a block never closed is reasoning to the end. A reply that does not open a block is
content, unchanged. Host-only and pure: no jax, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

REASONING_PARSERS = ("none", "think", "think-open")
START = "<think>"
END = "</think>"


def split_reasoning(text: str, *, inside: bool = False) -> tuple[str, str]:
    """(reasoning, content) of a whole reply; `inside`: it starts inside the block."""
    if not inside:
        rest = text.lstrip()
        if not rest.startswith(START):
            return "", text
        text = rest[len(START) :]
    reasoning, closed, content = text.partition(END)
    return reasoning.strip(), content.lstrip() if closed else ""


def _tag_prefix_len(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for n in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


class ReasoningParser:
    """`split_reasoning` over a reply fed in pieces: `feed` and `finish` return (reasoning,
    content) deltas whose concatenations equal `split_reasoning` of the whole reply, however it
    was cut. Text that may still turn out to be (part of) a tag, or whitespace that may end up at
    an edge of the block, is held back until a later piece decides it."""

    def __init__(self, *, inside: bool = False) -> None:
        # start: nothing decided yet; think: inside the block (strip: its leading whitespace is
        # still being dropped); done: after the block; plain: no block, all content.
        self._state = "think_strip" if inside else "start"
        self._held = ""

    def feed(self, piece: str) -> tuple[str, str]:
        text, self._held = self._held + piece, ""
        reasoning = content = ""
        while text:
            state = self._state
            if state == "start":
                rest = text.lstrip()
                if rest.startswith(START):
                    self._state, text = "think_strip", rest[len(START) :]
                    continue
                if START.startswith(rest):  # blank so far, or part of the tag
                    self._held = text
                else:
                    self._state, content = "plain", content + text
                break
            if state in ("think_strip", "done_strip"):
                text = text.lstrip()
                if text:
                    self._state = state.removesuffix("_strip")
                continue
            if state == "think":
                at = text.find(END)
                if at >= 0:
                    reasoning += text[:at].rstrip()
                    self._state, text = "done_strip", text[at + len(END) :]
                    continue
                keep = _tag_prefix_len(text, END)
                body = text[: len(text) - keep]
                kept = len(body) - len(body.rstrip())  # may be trailing whitespace of the block
                cut = len(body) - kept
                reasoning, self._held = reasoning + text[:cut], text[cut:]
                break
            content += text  # done or plain
            break
        return reasoning, content

    def finish(self) -> tuple[str, str]:
        """The held-back text, once the reply has ended."""
        held, self._held = self._held, ""
        if self._state == "think":
            return held.rstrip(), ""
        if self._state == "start":
            return "", held
        return "", ""


@dataclass(frozen=True)
class ReasoningFormat:
    """How one reply is split: whether it starts inside the thinking block."""

    inside: bool

    def parser(self) -> ReasoningParser:
        return ReasoningParser(inside=self.inside)

    def split(self, text: str) -> tuple[str, str]:
        return split_reasoning(text, inside=self.inside)


def reasoning_format(name: str, prompt: str) -> ReasoningFormat | None:
    """The split for a reply to `prompt` under the parser `name` (None: "none")."""
    if name not in REASONING_PARSERS:
        raise ValueError(f"reasoning parser must be one of {REASONING_PARSERS}, got {name!r}")
    if name == "none":
        return None
    if name == "think-open":
        return ReasoningFormat(inside=True)
    return ReasoningFormat(inside=prompt.rfind(START) > prompt.rfind(END))
