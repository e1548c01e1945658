"""Sampler inputs (host only): per-request values prepared once at admission, and the
`SamplingRow` a request contributes each time it draws a token."""

from __future__ import annotations

import numpy as np

from jaxserve.engine.request import Request
from jaxserve.sampling.rows import SamplingRow, token_bitmask
from jaxserve.sampling_params import MAX_BAD_WORD_TOKENS, SamplingParams
from jaxserve.text.tokenizer import Tokenizer


class SamplingInputs:
    """Builds each request's sampler view over one tokenizer and one (padded) vocabulary."""

    def __init__(self, tokenizer: Tokenizer, vocab: int) -> None:
        self.tokenizer = tokenizer
        self.vocab = vocab  # the model's logits width (>= the tokenizer's size)
        self._breaker_masks: dict[tuple[str, ...], np.ndarray] = {}

    def prepare(self, request: Request) -> None:
        """Per-request inputs that never change: bitmask, bad words, DRY breakers."""
        params = request.params
        if params.allowed_token_ids is not None:
            request.allowed_mask = token_bitmask(params.allowed_token_ids, self.vocab)
        words = []
        for word in params.bad_words:
            for text in (word, " " + word):  # as a word of its own and mid-sentence
                ids = tuple(self.tokenizer.encode(text, add_special=False))
                if len(ids) > MAX_BAD_WORD_TOKENS:
                    raise ValueError(
                        f"bad_words: {word!r} is longer than {MAX_BAD_WORD_TOKENS} tokens"
                    )
                if ids and ids not in words:
                    words.append(ids)
        request.bad_word_ids = words  # at most 2 per word: fits BAD_WORD_SEQUENCES
        if params.dry_multiplier > 0:
            request.breaker_mask = self._breaker_mask(params.dry_sequence_breakers)
        request.mirostat_mu = 2.0 * params.mirostat_tau

    def _breaker_mask(self, breakers: tuple[str, ...]) -> np.ndarray:
        """Tokens whose text contains a DRY sequence breaker (cached per breaker set)."""
        mask = self._breaker_masks.get(breakers)
        if mask is None:
            needles = [b.encode() for b in breakers]
            ids = [
                i
                for i in range(self.tokenizer.vocab_size)
                if any(n in self.tokenizer.token_bytes(i) for n in needles)
            ]
            mask = token_bitmask(ids, self.vocab)
            self._breaker_masks[breakers] = mask
        return mask

    def row(self, request: Request, length: int, *, host_mask: bool = True) -> SamplingRow:
        """The sampler's view of `request` when drawing the token at position `length`;
        `host_mask` adds the constraint's mask (off when the device applies it)."""
        params = request.params
        allowed = request.allowed_mask
        if request.matcher is not None and host_mask:
            grammar_mask = request.matcher.bitmask()
            allowed = grammar_mask if allowed is None else allowed & grammar_mask
        return SamplingRow(
            params=params,
            seed=request.seed,
            prompt_len=len(request.prompt_token_ids),
            num_generated=len(request.output.token_ids),
            mirostat_mu=request.mirostat_mu,
            stop_ids=self.stop_ids(params),
            history=request.all_token_ids[:length] if params.uses_history else None,
            allowed_mask=allowed,
            breaker_mask=request.breaker_mask,
            bad_word_ids=request.bad_word_ids,
        )

    def stop_ids(self, params: SamplingParams) -> list[int]:
        stop_ids = set(params.stop_token_ids)
        if not params.ignore_eos:
            stop_ids |= self.tokenizer.eos_ids
        return sorted(stop_ids)
