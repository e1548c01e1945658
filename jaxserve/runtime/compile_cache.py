"""The persistent XLA compilation cache (a restart skips compiling what it compiled before)."""

from __future__ import annotations

import os

import jax


def enable_compilation_cache(path: str | None) -> None:
    """Keep compiled programs on disk so a restart skips XLA compilation ("" or None: off).

    The directory holds executable code: it must be writable by its owner only.
    """
    if not path:
        return
    os.makedirs(path, mode=0o700, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def release_lowerings() -> None:
    """Drop the process-wide cache of lowered programs. It keeps every program lowered so far
    alive (an unloaded model's included); live jitted functions keep their own compiled
    executables, so the models still loaded recompile nothing."""
    from jax._src.interpreters import pxla  # no public API for this one cache

    clear = getattr(getattr(pxla, "_cached_lowering_to_hlo", None), "cache_clear", None)
    if clear is not None:
        clear()
