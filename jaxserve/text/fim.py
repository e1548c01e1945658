"""Fill-in-the-middle prompts: a completion's `suffix` for models trained with FIM tokens.

A model that fills in the middle was trained on `<prefix token> prefix <suffix token> suffix
<middle token>` (the "PSM" order of StarCoder, Qwen2.5-Coder, CodeLlama...) and continues with the
middle. Its three tokens are found by their texts, in the spellings those families use; a
vocabulary without them has no FIM (the front refuses `suffix` then).
"""

from __future__ import annotations

from collections.abc import Sequence

from jaxserve.text.tokenizer import Tokenizer, TokenType, encode_prompt

SPELLINGS = (
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder, SmolLM-style vocabularies
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder
    ("<PRE>", "<SUF>", "<MID>"),  # CodeLlama
)


def fim_tokens(tokenizer: Tokenizer) -> tuple[int, int, int] | None:
    """(prefix, suffix, middle) token ids, or None when the vocabulary has no FIM tokens."""
    for spelling in SPELLINGS:
        ids = [_special_id(tokenizer, text) for text in spelling]
        if all(i is not None for i in ids):
            return ids[0], ids[1], ids[2]  # type: ignore[return-value]
    return None


def _special_id(tokenizer: Tokenizer, text: str) -> int | None:
    ids = encode_prompt(tokenizer, text, add_special=False)
    if len(ids) != 1 or tokenizer.token_type(ids[0]) == TokenType.NORMAL:
        return None
    return ids[0]


def fim_prompt(
    tokenizer: Tokenizer, prefix_ids: Sequence[int], suffix: str, tokens: tuple[int, int, int]
) -> list[int]:
    """`[BOS] <prefix> prefix <suffix> suffix <middle>`: the BOS, when the prefix starts with
    one, stays first."""
    pre, suf, mid = tokens
    lead = list(prefix_ids[:1]) if prefix_ids[:1] == [tokenizer.bos_id] else []
    body = list(prefix_ids[len(lead) :])
    suffix_ids = tokenizer.encode(suffix, add_special=False)
    return [*lead, pre, *body, suf, *suffix_ids, mid]
