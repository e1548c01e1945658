"""Merging schemas keyword by keyword (`allOf`, `$ref` siblings), and proving `oneOf` disjoint.

A merge is a schema whose instances are those valid under both inputs, or a refusal naming the
keyword that cannot be merged exactly. Merged `properties` keep the first schema's order first.
"""

from __future__ import annotations

import itertools
from typing import Any

from .json_dialects import Dialect
from .json_keywords import (
    ALL_KINDS,
    ANNOTATIONS,
    MAX_DEPTH,
    UNEVALUATED,
    anchors,
    canonical,
    negation,
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
_OBJECT = _JOINT_OBJECT | {"patternProperties"}
MAX_DEPENDENCIES = 6  # dependentRequired/dependentSchemas names: 2^n branches


class SchemaMerger:
    """Merges within one schema document (`$ref` targets resolve inside `schema`)."""

    def __init__(self, schema: Any, dialect: Dialect) -> None:
        self.schema = schema
        self.dialect = dialect
        self.id_keys = dialect.id_keys
        self.anchors = anchors(schema, self.id_keys)
        base = next((schema.get(k) for k in self.id_keys if isinstance(schema, dict)
                     and isinstance(schema.get(k), str)), None)  # fmt: skip
        self.base = base.split("#")[0] if base else None

    def local(self, ref: Any) -> Any:
        """`ref` as a reference inside the document (the root's own URI stripped)."""
        if isinstance(ref, str) and self.base and ref.startswith(self.base):
            rest = ref[len(self.base) :]
            if rest == "" or rest.startswith("#"):
                return rest or "#"
        return ref

    def resolve(self, ref: Any) -> Any:
        tokens = pointer(self.local(ref))
        if isinstance(tokens, str):
            if tokens not in self.anchors:
                raise refuse(f"$ref {ref!r}: no such anchor in the document")
            return self.anchors[tokens]
        target = self.schema
        for token in tokens:
            if isinstance(target, dict) and token in target:
                target = target[token]
            elif isinstance(target, list) and token.isdigit() and int(token) < len(target):
                target = target[int(token)]
            else:
                raise refuse(f"$ref {ref!r} does not resolve inside the document")
        return target

    def inline(self, s: Any) -> Any:
        """A schema that is only a `$ref`, replaced by its target (one level)."""
        s = self.dialect.prepare(s)
        if isinstance(s, dict) and "$ref" in s and not set(s) - ANNOTATIONS - {"$ref"}:
            return self.resolve(s["$ref"])
        return s

    # ---- merging (allOf, $ref siblings, anyOf/oneOf siblings) ----------------------------------

    def merge_all(self, s: dict, depth: int) -> dict | bool:
        branches = s["allOf"]
        if not isinstance(branches, list) or not branches:
            raise refuse("'allOf' must be a non-empty array")
        out: dict | bool = self.dialect.mark({k: v for k, v in s.items() if k != "allOf"})
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
        a, b = (unevaluated(nullable(self.dialect.prepare(x))) for x in (a, b))
        if any(k in x for x in (a, b) for k in UNEVALUATED):
            raise refuse("'unevaluatedProperties'/'unevaluatedItems' beside applicators")
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
        if all(_OBJECT & x.keys() for x in (a, b)) and "patternProperties" in a.keys() | b.keys():
            raise refuse("cannot merge 'patternProperties' with other property keywords")
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
        return self.dialect.mark(out)

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

    def dependent(self, s: dict) -> list[Any]:
        """`dependentRequired`/`dependentSchemas` as disjoint schemas, one per choice of which
        named properties are present (objects), plus one for the non-object values."""
        req = s.get("dependentRequired", {})
        sub = s.get("dependentSchemas", {})
        names = list(dict.fromkeys([*req, *sub]))
        if len(names) > MAX_DEPENDENCIES:
            raise refuse(f"more than {MAX_DEPENDENCIES} 'dependentRequired'/'dependentSchemas'")
        base = {k: v for k, v in s.items() if k not in ("dependentRequired", "dependentSchemas")}
        kinds = schema_kinds(base)
        out: list[Any] = []
        if kinds - {"object"}:
            out.append(self.merge(base, {"type": type_names(kinds - {"object"})}, 0))
        if "object" not in kinds:
            return out
        for present in itertools.product((False, True), repeat=len(names)):
            x: Any = self.merge(base, {"type": "object"}, 0)
            for name, here in zip(names, present, strict=True):
                if not here:
                    x = self.merge(x, {"properties": {name: False}}, 0)
                    continue
                x = self.merge(x, {"required": [name, *string_list(req.get(name, []), name)]}, 0)
                x = self.merge(x, sub.get(name, True), 0)
            out.append(x)
        return out

    def exactly_one(self, branches: list[Any], rest: dict, overlap: tuple[int, int]) -> list:
        """`oneOf` whose branches may overlap, as disjoint branches: branch i and no other,
        when every branch's complement is expressible (`negation`); else refuse."""
        complements = [negation(self.inline(b)) for b in branches]
        if any(c is None for c in complements):
            i, j = overlap
            raise refuse(f"'oneOf' branches {i} and {j} may overlap (cannot prove not)")
        out = []
        for i, b in enumerate(branches):
            others = [{"anyOf": c} for j, c in enumerate(complements) if j != i]
            if any(not o["anyOf"] for o in others):
                continue  # another branch accepts everything: this one can never be alone
            out.append(self.merge(self.merge(rest, b, 0), {"allOf": others} if others else {}, 0))
        return out

    # ---- oneOf disjointness (a sufficient test) ------------------------------------------------

    def view(self, s: Any) -> Any:
        """`s` with top-level `$ref`/`allOf` merged in (True when that nests too deep)."""
        for _ in range(MAX_DEPTH):
            s = self.dialect.prepare(s)
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
