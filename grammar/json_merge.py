"""Merging schemas keyword by keyword (`allOf`, `$ref` siblings), and proving `oneOf` disjoint.

A merge is a schema whose instances are those valid under both inputs, or a refusal naming the
keyword that cannot be merged exactly. Merged `properties` keep the first schema's order first.
"""

from __future__ import annotations

from typing import Any

from .json_keywords import (
    ALL_KINDS,
    ANNOTATIONS,
    MAX_DEPTH,
    UNEVALUATED,
    canonical,
    nullable,
    number_value,
    pointer,
    refuse,
    schema_kinds,
    string_list,
    string_tuple,
    type_names,
    unevaluated,
    value_kind,
)

# Keywords merged together (a property or item missing on one side meets its additional schema)
_JOINT_OBJECT = frozenset({"properties", "additionalProperties"})
_JOINT_ARRAY = frozenset({"prefixItems", "items"})
_JOINT = _JOINT_OBJECT | _JOINT_ARRAY


class SchemaMerger:
    """Merges within one schema document (`$ref` targets resolve inside `schema`)."""

    def __init__(self, schema: Any, *, legacy: bool) -> None:
        self.schema = schema
        self.legacy = legacy  # a pre-2019 `$schema`: `$ref` siblings are refused

    def resolve(self, ref: Any) -> Any:
        target = self.schema
        for token in pointer(ref):
            if isinstance(target, dict) and token in target:
                target = target[token]
            elif isinstance(target, list) and token.isdigit() and int(token) < len(target):
                target = target[int(token)]
            else:
                raise refuse(f"$ref {ref!r} does not resolve inside the document")
        return target

    # ---- merging (allOf, $ref siblings, anyOf/oneOf siblings) ----------------------------------

    def merge_all(self, s: dict, depth: int) -> dict | bool:
        branches = s["allOf"]
        if not isinstance(branches, list) or not branches:
            raise refuse("'allOf' must be a non-empty array")
        out: dict | bool = {k: v for k, v in s.items() if k != "allOf"}
        for b in branches:
            out = self.merge(out, b, depth + 1)
        return out

    def merge(self, a: Any, b: Any, depth: int) -> dict | bool:
        """A schema whose instances are those valid under both, or refuse the keyword."""
        if depth > MAX_DEPTH:
            raise refuse("$ref/allOf nest too deeply to merge")
        if a is False or b is False:
            return False
        if a is True or b is True:
            return b if a is True else a
        if not isinstance(a, dict) or not isinstance(b, dict):
            raise refuse("a schema must be an object or a boolean")
        a, b = unevaluated(nullable(a)), unevaluated(nullable(b))
        if any(k in x for x in (a, b) for k in UNEVALUATED):
            raise refuse("'unevaluatedProperties'/'unevaluatedItems' beside applicators")
        if self.legacy and any("$ref" in x and len(set(x) - ANNOTATIONS) > 1 for x in (a, b)):
            raise refuse("$ref with sibling keywords under a pre-2019 $schema")
        if "allOf" in a or "allOf" in b:
            x = self.merge_all(a, depth) if "allOf" in a else a
            y = self.merge_all(b, depth) if "allOf" in b else b
            return self.merge(x, y, depth + 1)
        if "$ref" in a and "$ref" in b and a["$ref"] != b["$ref"]:
            rest = {k: v for k, v in b.items() if k != "$ref"}
            return self.merge(a, self.merge(self.resolve(b["$ref"]), rest, depth + 1), depth + 1)
        out = {k: v for k, v in a.items() if k not in ANNOTATIONS}
        for k, v in b.items():
            if k in ANNOTATIONS or k in _JOINT:
                continue
            if k not in out:
                out[k] = v
            elif k == "const" and canonical(out[k]) != canonical(v):
                return False
            else:
                out[k] = self._merge_keyword(k, out[k], v, depth)
        if {"type"} & out.keys() and not schema_kinds(out):
            return False
        if _JOINT_OBJECT & (a.keys() | b.keys()):
            pa, pb = a.get("properties", {}), b.get("properties", {})
            xa, xb = a.get("additionalProperties", True), b.get("additionalProperties", True)
            if not isinstance(pa, dict) or not isinstance(pb, dict):
                raise refuse("'properties' must be an object")
            names = [*pa, *(k for k in pb if k not in pa)]
            out["properties"] = {
                k: self.merge(pa.get(k, xa), pb.get(k, xb), depth + 1) for k in names
            }
            out["additionalProperties"] = self.merge(xa, xb, depth + 1)
        if _JOINT_ARRAY & (a.keys() | b.keys()):
            pa, pb = a.get("prefixItems", []), b.get("prefixItems", [])
            xa, xb = a.get("items", True), b.get("items", True)
            if not all(isinstance(x, list) for x in (pa, pb)) or isinstance(xa, list | tuple):
                raise refuse("'prefixItems' must be an array and 'items' a schema")
            out["prefixItems"] = [
                self.merge(pa[i] if i < len(pa) else xa, pb[i] if i < len(pb) else xb, depth + 1)
                for i in range(max(len(pa), len(pb)))
            ]
            out["items"] = self.merge(xa, xb, depth + 1)
        return out

    def _merge_keyword(self, k: str, u: Any, v: Any, depth: int) -> Any:
        if k == "type":
            return type_names(schema_kinds({"type": u}) & schema_kinds({"type": v}))
        if k in ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties"):
            return max(number_value(u, k), number_value(v, k))
        if k in ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties"):
            return min(number_value(u, k), number_value(v, k))
        if k == "required":
            return list(dict.fromkeys([*string_list(u, k), *string_list(v, k)]))
        if k == "enum":
            allowed = {canonical(x) for x in v}
            return [x for x in u if canonical(x) in allowed]
        if k in ("pattern", "format"):
            return tuple(dict.fromkeys([*string_tuple(u, k), *string_tuple(v, k)]))
        if k == "uniqueItems":
            return bool(u) or bool(v)
        if k == "anyOf" and isinstance(u, list) and isinstance(v, list):
            if len(u) * len(v) > 64:
                raise refuse("too many 'anyOf' combinations to merge")
            return [self.merge(x, y, depth + 1) for x in u for y in v]
        if canonical(u) == canonical(v):
            return u
        raise refuse(f"cannot merge two different {k!r} (allOf/$ref siblings)")

    # ---- oneOf disjointness (a sufficient test) ------------------------------------------------

    def view(self, s: Any) -> Any:
        """`s` with top-level `$ref`/`allOf` merged in (True when that nests too deep)."""
        for _ in range(MAX_DEPTH):
            if not isinstance(s, dict) or ("$ref" not in s and "allOf" not in s):
                return s
            if "$ref" in s:
                rest = {k: v for k, v in s.items() if k != "$ref"}
                s = self.merge(self.resolve(s["$ref"]), rest, 0)
            else:
                s = self.merge_all(s, 0)
        return True

    def kinds_of(self, s: Any, depth: int = 0) -> set[str]:
        """A superset of the kinds of values valid under `s`."""
        s = self.view(s)
        if depth > MAX_DEPTH:
            return set(ALL_KINDS)
        if not isinstance(s, dict):
            return set() if s is False else set(ALL_KINDS)
        s = nullable(s)
        kinds = schema_kinds(s)
        if "const" in s:
            kinds &= {value_kind(s["const"])}
        if isinstance(s.get("enum"), list):
            kinds &= {value_kind(v) for v in s["enum"]}
        for key in ("anyOf", "oneOf"):
            if isinstance(s.get(key), list):
                kinds &= set().union(*(self.kinds_of(b, depth + 1) for b in s[key]))
        return kinds

    def values_of(self, s: Any) -> set[str] | None:
        s = self.view(s)
        if not isinstance(s, dict) or ("const" not in s and "enum" not in s):
            return set() if s is False else None
        out = {canonical(v) for v in s.get("enum", [s.get("const")])}
        return out & {canonical(s["const"])} if "const" in s else out

    def disjoint(self, x: Any, y: Any) -> bool:
        vx, vy = self.values_of(x), self.values_of(y)
        if vx is not None and vy is not None:
            return not vx & vy
        common = self.kinds_of(x) & self.kinds_of(y)
        if not common:
            return True
        if common != {"object"}:
            return False
        x, y = self.view(x), self.view(y)
        if not isinstance(x, dict) or not isinstance(y, dict):
            return False  # `true` overlaps every non-empty schema
        for a, b in ((x, y), (y, x)):
            for name in string_list(a.get("required", []), "required"):
                other = b.get("properties", {}).get(name, b.get("additionalProperties", True))
                if self.view(other) is False:
                    return True
                if name in b.get("required", []):
                    va = self.values_of(a.get("properties", {}).get(name, True))
                    vb = self.values_of(other)
                    if va is not None and vb is not None and not va & vb:
                        return True
        return False
