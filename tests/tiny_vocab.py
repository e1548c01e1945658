"""Tiny tokenizer vocabularies as GGUF metadata dicts, for fast tests and the tiny GGUF model.

Values are plain str/int/float/bool/lists, so `tests.tiny_gguf` can write them with a GGUF writer.
"""

from __future__ import annotations

from typing import Any

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) }}"
    "{{ '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

# Merges of the tiny byte-level BPE vocabulary, in rank order (GPT-2 byte-level spelling:
# "Ġ" is a space, "Ċ" a newline).
GPT2_MERGES = (
    "Ġ t|h e|Ġt he|i n|Ġ a|e r|o n|Ġ s|r e|a t|Ġ Ġ|Ċ Ċ|e n|Ġ o|o r|Ġ w|i s|Ġ c|e s|"
    "l l|Ġa n|n d|Ġan d|Ġ f|i t|Ġ i|Ġs t|o u|h i|Ġ he|Ġhe ll|Ġhell o|Ġw or|Ġwor l|Ġworl d|"
    "Ġ 1|. .|.. .|Ġ 2"
).split("|")
SPM_PIECES = (  # (piece, score): SentencePiece merges the highest-scoring pair first
    ("▁", -1.0), ("▁t", -2.0), ("he", -3.0), ("▁the", -4.0), ("in", -5.0), ("▁a", -6.0),
    ("er", -7.0), ("on", -8.0), ("re", -9.0), ("at", -10.0), ("ll", -11.0), ("▁h", -12.0),
    ("▁he", -13.0), ("▁hell", -14.0), ("▁hello", -15.0), ("or", -16.0), ("▁w", -17.0),
    ("▁wor", -18.0), ("ld", -19.0), ("▁world", -20.0), ("an", -21.0), ("▁an", -22.0),
    ("nd", -23.0), ("▁and", -24.0),
) + tuple((chr(c), -100.0) for c in range(ord("a"), ord("z") + 1))  # fmt: skip


def gpt2_bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (the reference `bytes_to_unicode`)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    kept += range(ord("®"), ord("ÿ") + 1)
    codes = list(kept)
    n = 0
    for b in range(256):
        if b not in kept:
            kept.append(b)
            codes.append(256 + n)
            n += 1
    return dict(zip(kept, map(chr, codes), strict=True))


def gpt2_tokenizer_metadata(
    *, pre: str = "smollm", add_bos: bool = False, chat_template: str | None = CHATML_TEMPLATE
) -> dict[str, Any]:
    """A ~300-token byte-level BPE vocabulary in GGUF form (`tokenizer.ggml.*` keys).

    Ids 0, 1, 2 are the control tokens `<|endoftext|>`, `<|im_start|>` (BOS) and `<|im_end|>`
    (EOS); ids 3..258 are the 256 byte tokens in byte order (id = 3 + byte); then one token per
    merge in `GPT2_MERGES`, in order.
    """
    byte_chars = gpt2_bytes_to_unicode()
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens += [byte_chars[b] for b in range(256)]
    tokens += [merge.replace(" ", "") for merge in GPT2_MERGES]
    meta: dict[str, Any] = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [3, 3, 3] + [1] * (len(tokens) - 3),
        "tokenizer.ggml.merges": list(GPT2_MERGES),
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.padding_token_id": 2,
        "tokenizer.ggml.add_bos_token": add_bos,
        "tokenizer.ggml.add_space_prefix": False,
    }
    if chat_template is not None:
        meta["tokenizer.chat_template"] = chat_template
    return meta


def spm_tokenizer_metadata(
    *, add_space_prefix: bool = False, chat_template: str | None = GEMMA_TEMPLATE
) -> dict[str, Any]:
    """A Gemma-style SentencePiece vocabulary in GGUF form.

    Ids: 0 `<pad>`, 1 `<eos>`, 2 `<bos>`, 3 `<unk>`, 4 `<start_of_turn>`, 5 `<end_of_turn>`
    (control); 6 "\\n" and 7 "  " (two raw spaces; user-defined, stored unescaped as Gemma does);
    8..263 the byte tokens `<0x00>`..`<0xFF>`; then `SPM_PIECES` in order.
    """
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "\n", "  "]
    types = [3, 3, 3, 2, 3, 3, 4, 4]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [6] * 256
    tokens += [piece for piece, _ in SPM_PIECES]
    types += [1] * len(SPM_PIECES)
    scores = [0.0] * (len(tokens) - len(SPM_PIECES)) + [score for _, score in SPM_PIECES]
    meta: dict[str, Any] = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 2,
        "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.unknown_token_id": 3,
        "tokenizer.ggml.padding_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
        "tokenizer.ggml.add_space_prefix": add_space_prefix,
    }
    if chat_template is not None:
        meta["tokenizer.chat_template"] = chat_template
    return meta
