"""The draft model of speculative decoding: a second runner whose KV cache has the target's
page layout (the engine's pages index both caches; `engine/drafter.py` keeps them in step)."""

from __future__ import annotations

import dataclasses

from jaxserve.config import ModelConfig, WeightFormat
from jaxserve.loading.loader import open_model
from jaxserve.loading.pull import resolve_model
from jaxserve.models.build import build_model
from jaxserve.runtime.kv_cache import kv_format_for
from jaxserve.runtime.parallel import prepare
from jaxserve.runtime.runner import ModelRunner
from jaxserve.text.tokenizer import Tokenizer


def draft_runner(
    model: str,
    *,
    weights: WeightFormat,
    kernels: str,
    target: ModelConfig,
    tokenizer: Tokenizer,
    num_pages: int,
    page_size: int,
    max_pages_per_row: int,
    quiet: bool = True,
) -> ModelRunner:
    """A runner for the draft `model` (a name `jaxserve pull` knows, or a path), which must
    share the target's tokenizer; raises ValueError naming what differs."""
    model_file = open_model(resolve_model(model, quiet=quiet))
    config = dataclasses.replace(
        model_file.config, kernels=kernels, kv_format=kv_format_for(weights, kernels)
    )
    theirs = model_file.tokenizer()
    same = theirs.vocab_size == tokenizer.vocab_size and all(
        theirs.token_bytes(i) == tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)
    )
    if not same or theirs.eos_ids != tokenizer.eos_ids:
        raise ValueError(f"speculative_model: {model} does not share the target's tokenizer")
    if config.vocab_size != target.vocab_size:
        raise ValueError(
            f"speculative_model: {model} has {config.vocab_size} logits, the target "
            f"{target.vocab_size}"
        )
    config, loaded = prepare(config, model_file.load_weights(weights), 1)
    return ModelRunner(
        build_model(config, loaded),
        config,
        num_pages=num_pages,
        page_size=page_size,
        max_pages_per_row=max_pages_per_row,
    )
