"""Tool calls out of generated text, incrementally: text deltas in, content and call deltas out.

`ToolCallParser(format)` follows the call syntax of `grammar/tools.py` as text arrives. Text that
may be the start of a call is held back, so no call markup ever reaches the content; a call's
`arguments` are passed on character by character as the JSON value is written. Whitespace around
calls is dropped. `parse_tool_calls` runs it over a whole text, so streamed and whole responses
agree by construction. Text that turns out not to be a call is content after all.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from .tools import FORMATS, NAME_ARGS
from .tools_python import json_arguments

_WS = " \t\r\n"
_NAME = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


@dataclass
class CallDelta:
    """A piece of call `index`: the first carries `id` and `name`, later ones argument text."""

    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None


Event = str | CallDelta  # content text, or a piece of a call

# Patterns: ("lit", text) | ("alt", (texts...)) | ("ws",) | ("str",) (a JSON string, captured:
# the call's name) | ("name", stop) (a bare function name up to the text `stop`, captured).
_OBJECT_HEAD = [
    ("lit", "{"),
    ("ws",),
    ("lit", '"name"'),
    ("ws",),
    ("lit", ":"),
    ("ws",),
    ("str",),
    ("ws",),
    ("lit", ","),
    ("ws",),
    ("alt", ('"arguments"', '"parameters"')),
    ("ws",),
    ("lit", ":"),
    ("ws",),
]


def _match(pattern: list[tuple], text: str) -> tuple[str, int, list[Any]]:
    """("ok", end, captures) if `text` starts with the pattern, ("more", ...) if it may once
    more text arrives, else ("fail", ...)."""
    pos, captured = 0, []
    for element in pattern:
        kind = element[0]
        if kind == "ws":
            while pos < len(text) and text[pos] in _WS:
                pos += 1
            if pos == len(text):
                return "more", pos, captured
            continue
        if kind == "str":
            if pos == len(text):
                return "more", pos, captured
            if text[pos] != '"':
                return "fail", pos, captured
            end = _string_end(text, pos)
            if end is None:
                return "more", pos, captured
            try:
                captured.append(json.loads(text[pos:end]))
            except json.JSONDecodeError:
                return "fail", pos, captured
            pos = end
            continue
        if kind == "name":
            end = pos
            while end < len(text) and text[end] in _NAME:
                end += 1
            rest, stop = text[end:], element[1]
            if not rest.startswith(stop):
                return ("more" if stop.startswith(rest) else "fail"), pos, captured
            if end == pos:
                return "fail", pos, captured
            captured.append(text[pos:end])
            pos = end + len(stop)
            continue
        options = (element[1],) if kind == "lit" else element[1]
        rest = text[pos:]
        hit = next((o for o in options if rest.startswith(o)), None)
        if hit is None:
            if any(o.startswith(rest) for o in options):
                return "more", pos, captured
            return "fail", pos, captured
        pos += len(hit)
    return "ok", pos, captured


def _string_end(text: str, start: int) -> int | None:
    """The index after the JSON string starting at `start` (None: not closed yet)."""
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
        elif text[i] == '"':
            return i + 1
        else:
            i += 1
    return None


class _Value:
    """Finds where one JSON value ends, a character at a time."""

    def __init__(self) -> None:
        self.started = False
        self.depth = 0
        self.in_string = False
        self.escape = False
        self.scalar = False
        self.done = False

    def take(self, text: str) -> int:
        """How many leading characters of `text` belong to the value (the rest follows it)."""
        for i, c in enumerate(text):
            if not self.started:
                self.started = True
                if c == '"':
                    self.in_string = True
                elif c in "{[":
                    self.depth = 1
                else:
                    self.scalar = True
                continue
            if self.scalar:
                if c in _WS or c in ",}]":
                    self.done = True
                    return i
            elif self.in_string:
                if self.escape:
                    self.escape = False
                elif c == "\\":
                    self.escape = True
                elif c == '"':
                    self.in_string = False
                    if self.depth == 0:
                        self.done = True
                        return i + 1
            elif c == '"':
                self.in_string = True
            elif c in "{[":
                self.depth += 1
            elif c in "}]":
                self.depth -= 1
                if self.depth == 0:
                    self.done = True
                    return i + 1
        return len(text)


class _PythonArguments:
    """Finds where a Python call's arguments end (before its closing parenthesis); they are
    passed on as one JSON object once complete (`tools_python.json_arguments`)."""

    def __init__(self) -> None:
        self.depth = 0
        self.quote: str | None = None
        self.escape = False
        self.done = False
        self.text = ""

    def take(self, text: str) -> int:
        for i, c in enumerate(text):
            if self.quote:
                if self.escape:
                    self.escape = False
                elif c == "\\":
                    self.escape = True
                elif c == self.quote:
                    self.quote = None
            elif c in "\"'":
                self.quote = c
            elif c in "([{":
                self.depth += 1
            elif c in ")]}":
                if self.depth == 0:
                    self.done = True
                    self.text += text[:i]
                    return i
                self.depth -= 1
        self.text += text
        return len(text)

    def arguments(self) -> str:
        converted = json_arguments(self.text)
        return self.text if converted is None else converted


class ToolCallParser:
    """Splits generated text of one call `format` into content and call deltas."""

    def __init__(self, format: str) -> None:
        fmt = FORMATS[format]
        self.format = fmt
        self._lead = [("alt", (fmt.lead, "")), ("ws",)] if fmt.lead else []
        self._lead += [("lit", fmt.begin), ("ws",)] if fmt.begin else []
        self._triggers = [fmt.trigger, *((fmt.lead,) if fmt.lead else ())]
        open_ = [("lit", fmt.open.strip()), ("ws",)] if fmt.open.strip() else []
        if fmt.style == "python":
            self._head, self._close = [("ws",), *open_, ("name", "(")], [("lit", ")")]
        elif fmt.style == "name_args":
            self._head, self._close = [("lit", fmt.open), ("name", NAME_ARGS)], []
        else:
            self._head, self._close = open_ + _OBJECT_HEAD, [("ws",), ("lit", "}")]
        if fmt.close.strip():
            self._close += [("ws",), ("lit", fmt.close.strip())]
        self._sep = [("ws",), ("lit", fmt.sep.strip()), ("ws",)] if fmt.sep.strip() else []
        self._end = [("ws",), ("lit", fmt.end.strip())] if fmt.end.strip() else []
        # calls separated by whitespace inside one block (Gemma's tool_code lines)
        self._joined = bool(self._sep) or bool(fmt.sep and self._end)
        self.num_calls = 0
        self._trigger = fmt.trigger  # the one that started the current call
        self._buf = ""
        self._state = "text"
        self._value: _Value | _PythonArguments | None = None
        self._ws = ""  # whitespace held back after content
        self._open_text = False  # content was emitted and no call has started since

    def feed(self, text: str) -> list[Event]:
        self._buf += text
        out: list[Event] = []
        while self._step(out, final=False):
            pass
        return out

    def finish(self) -> list[Event]:
        """The end of the text: anything held back that is not a call is content."""
        out: list[Event] = []
        while self._step(out, final=True):
            pass
        if self._buf:
            self._content(self._buf, out)
            self._buf = ""
        return out

    def _step(self, out: list[Event], final: bool) -> bool:
        """Consume what can be decided now; True if it made progress."""
        buf, state = self._buf, self._state
        if not buf:
            return False
        if state == "text":
            found = [(buf.find(t), t) for t in self._triggers if t in buf]
            if not found:
                keep = 0 if final else max(_prefix_overlap(buf, t) for t in self._triggers)
                self._content(buf[: len(buf) - keep], out)
                self._buf = buf[len(buf) - keep :]
                return False
            at, self._trigger = min(found)
            self._content(buf[:at], out)
            self._buf, self._state = buf[at:], "first"
            return True
        if state == "args":
            value = self._value
            n = value.take(buf)
            python = isinstance(value, _PythonArguments)
            if n and not python:
                out.append(CallDelta(self.num_calls - 1, arguments=buf[:n]))
            self._buf = buf[n:]
            if value.done:
                self._state = "close"
                if python:
                    out.append(CallDelta(self.num_calls - 1, arguments=value.arguments()))
            return bool(n) or value.done
        if state == "sep" and self._end:  # after a call: the end, or a separator
            status, end, _ = _match(self._end, buf)
            if status == "more" and not final:
                return False
            if status == "ok":
                self._buf, self._state = buf[end:], "text"
                return True
        pattern = {
            "first": self._lead + self._head,
            "head": self._head,
            "close": self._close,
            "sep": self._sep,
            "end": self._end,
        }[state]
        status, end, captured = _match(pattern, buf)
        if status == "more" and not final:
            return False
        if status != "ok":
            return self._mismatch(out)
        self._buf = buf[end:]
        if state in ("first", "head"):
            self._start_call(captured, out)
        elif state == "close" and self._joined:
            self._state = "sep"
        elif state == "close":
            self._state = "end" if self._end else "text"
        else:  # a separator: another call follows; the end: back to text
            self._state = "head" if state == "sep" else "text"
        return True

    def _mismatch(self, out: list[Event]) -> bool:
        if self._state == "first":  # the trigger did not start a call: it is content
            self._content(self._buf[: len(self._trigger)], out)
            self._buf = self._buf[len(self._trigger) :]
        self._state = "end" if self._state == "sep" and self._end else "text"
        return True

    def _start_call(self, captured: list[Any], out: list[Event]) -> None:
        [name] = captured
        self.num_calls += 1
        python = self.format.style == "python"
        self._state, self._value = "args", _PythonArguments() if python else _Value()
        self._open_text, self._ws = False, ""
        call_id = "call_" + uuid.uuid4().hex[:24]
        out.append(CallDelta(self.num_calls - 1, id=call_id, name=name))

    def _content(self, text: str, out: list[Event]) -> None:
        body = text.rstrip(_WS)
        if not body:
            self._ws += text
            return
        out.append(self._ws + body if self._open_text else body.lstrip(_WS))
        self._ws = text[len(body) :]
        self._open_text = True


def _prefix_overlap(text: str, marker: str) -> int:
    """Length of the longest end of `text` that begins `marker`."""
    for k in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-k:]):
            return k
    return 0


def parse_tool_calls(text: str, format: str) -> tuple[str | None, list[dict[str, Any]]]:
    """(content or None, calls in OpenAI's shape) of a whole generated text."""
    parser = ToolCallParser(format)
    events = parser.feed(text) + parser.finish()
    content = "".join(e for e in events if isinstance(e, str))
    calls: list[dict[str, Any]] = []
    for event in events:
        if isinstance(event, str):
            continue
        if event.id is not None:
            function = {"name": event.name, "arguments": ""}
            calls.append({"id": event.id, "type": "function", "function": function})
        calls[event.index]["function"]["arguments"] += event.arguments
    return content or None, calls
