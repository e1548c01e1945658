"""JSON Schema dialects and unknown keywords: each subschema in the 2020-12 form the compiler reads.

`Dialect.prepare(s)` is applied to every subschema before it is compiled or merged:

- keywords of earlier drafts become their 2020-12 equivalents, told apart by their values where
  that is unambiguous (boolean `exclusiveMinimum`/`exclusiveMaximum`, `dependencies`, `items` as
  an array with `additionalItems`) and by `$schema` where it is not (draft-04/06/07: `id` is an
  identifier and `$ref` siblings are ignored, as those drafts say);
- unknown keywords are annotations (JSON Schema: they never make an instance invalid), and so
  are `format` values the compiler does not implement (2020-12: `format` is an annotation unless
  a validator opts in); both are dropped and listed in `ignored`. Formats JSON Schema defines
  but this compiler does not implement are refused instead.

Known assertion keywords are kept; the compiler refuses the ones it cannot enforce exactly.
"""

from __future__ import annotations

import re
from typing import Any

from .json_formats import FORMATS
from .json_keywords import ANNOTATIONS, HANDLED, refuse

# formats JSON Schema defines that are not implemented here: refused rather than ignored, since
# a schema naming them expects them checked
UNIMPLEMENTED = frozenset(
    {"idn-email", "idn-hostname", "iri", "iri-reference", "uri-template", "regex"}
)
REFUSED = frozenset({"$dynamicRef", "$recursiveRef", "disallow"})  # known, not compiled
_URI = re.compile(r"^https?://json-schema\.org/(draft-0(\d)|draft/(\d{4}-\d{2}))/schema#?$")
_LEGACY_ASSERTIONS = {"divisibleBy": "multipleOf", "extends": "allOf"}  # draft-03


class Dialect:
    """The dialect of one schema document (its root `$schema`) and what it ignored."""

    def __init__(self, uri: Any) -> None:
        self.legacy = False  # draft-04/06/07
        self.ignored: list[str] = []  # unknown keywords and formats, each once, in order seen
        self._done: dict[int, dict] = {}  # schemas already in 2020-12 form (kept alive by id)
        # `id` names a schema (its base URI or, "#name", an anchor) in draft-04, and in
        # documents that name no dialect (most of those are draft-04 era); elsewhere an annotation
        self.id_keys: tuple[str, ...] = ("$id", "id")
        if uri is None:
            return
        self.id_keys = ("$id",)
        match = _URI.match(uri) if isinstance(uri, str) else None
        if match is None:  # a custom meta-schema may turn vocabularies off: not guessed at
            raise refuse(f"$schema {uri!r} is not a dialect this compiler knows")
        if match.group(2) is not None:
            if int(match.group(2)) < 4:
                raise refuse(f"$schema {uri!r}: draft-03 and earlier are not supported")
            self.legacy = True
            self.id_keys = ("$id", "id")

    def note(self, what: str) -> None:
        if what not in self.ignored:
            self.ignored.append(what)

    def mark(self, s: Any) -> Any:
        """Record `s` (a merge's result) as already in 2020-12 form; returns it."""
        if isinstance(s, dict):
            self._done[id(s)] = s
        return s

    def prepare(self, s: Any) -> Any:
        """`s` as a 2020-12 subschema with only handled keywords and annotations."""
        if not isinstance(s, dict) or self._done.get(id(s)) is s:
            return s
        if self.legacy and "$ref" in s:
            return self.mark({"$ref": s["$ref"]})  # draft-04..07: $ref siblings are ignored
        out: dict[str, Any] = {}
        for k, v in s.items():
            if k in HANDLED or k in ANNOTATIONS:
                out[k] = v
            elif k in _LEGACY_ASSERTIONS:
                out[_LEGACY_ASSERTIONS[k]] = [v] if k == "extends" and isinstance(v, dict) else v
            elif k in ("id", "dependencies", "additionalItems"):
                continue  # read below
            elif k in REFUSED:
                raise refuse(f"{k!r} is not supported")
            else:
                self.note(k)
        if isinstance(s.get("id"), str) and "id" not in self.id_keys:
            self.note("id")
        _bounds(out)
        _dependencies(out, s.get("dependencies"))
        _items(out, s)
        fmt = out.get("format")
        if isinstance(fmt, str) and fmt in UNIMPLEMENTED:
            raise refuse(f"'format' {fmt!r} is not supported")
        if isinstance(fmt, str) and fmt not in FORMATS:
            self.note(f"format {fmt!r}")
            del out["format"]
        return self.mark(out)


def _bounds(out: dict) -> None:
    """draft-04's boolean `exclusiveMinimum`/`exclusiveMaximum` modify `minimum`/`maximum`."""
    for flag, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(flag), bool):
            if out.pop(flag) and bound in out:
                out[flag] = out.pop(bound)


def _dependencies(out: dict, deps: Any) -> None:
    """draft-04..07 `dependencies`: arrays are `dependentRequired`, schemas `dependentSchemas`."""
    if deps is None:
        return
    if not isinstance(deps, dict):
        raise refuse("'dependencies' must be an object")
    for name, v in deps.items():
        key = "dependentRequired" if isinstance(v, list) else "dependentSchemas"
        merged = dict(out.get(key, {}))
        if name in merged:
            raise refuse(f"'dependencies' and {key!r} both name {name!r}")
        merged[name] = v
        out[key] = merged


def _items(out: dict, s: dict) -> None:
    """Tuple `items` (an array) is `prefixItems`; `additionalItems` then is `items`."""
    if isinstance(s.get("items"), list):
        if "prefixItems" in s:
            raise refuse("'items' as an array beside 'prefixItems'")
        out["prefixItems"] = s["items"]
        out["items"] = s.get("additionalItems", True)
    # `additionalItems` without tuple `items` has no effect in any draft
