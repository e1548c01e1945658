"""Model families on one decoder skeleton; `registry` maps architecture names to them lazily."""

from __future__ import annotations

from jaxserve.models.registry import FAMILIES, Family, family, family_for_gguf, family_for_hf

__all__ = ["FAMILIES", "Family", "family", "family_for_gguf", "family_for_hf"]
