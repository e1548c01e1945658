"""The tokenizer of a Hugging Face checkpoint folder, run by `tokenizers` from `tokenizer.json`.

It has the interface of `jaxserve.text.tokenizer.Tokenizer` (the GGUF one), so the engine, the
detokenizer and the grammar vocabulary take either. Special tokens, BOS/EOS and the chat template
come from `tokenizer_config.json`, `generation_config.json`, `config.json` and
`chat_template.jinja`, as `transformers` reads them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tokenizers

from jaxserve.errors import GGUFError
from jaxserve.text.tokenizer import _EOG_TEXTS, TokenType, decode_ids, gpt2_byte_decoder


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise GGUFError(f"{path} is not valid JSON: {e}") from e


def _token_text(value: Any) -> str | None:
    """`"<s>"` or `{"content": "<s>", ...}` (tokenizer_config.json) -> the text."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _ids(value: Any) -> list[int]:
    if isinstance(value, int):
        return [value]
    return [v for v in value or () if isinstance(v, int)]


def _components(node: Any, kind: str) -> list[dict[str, Any]]:
    """Every component of type `kind` in a tokenizer.json normalizer/pre-tokenizer/decoder tree."""
    if not isinstance(node, dict):
        return []
    found = [node] if node.get("type") == kind else []
    for child in node.get("normalizers") or node.get("pretokenizers") or node.get("decoders") or ():
        found += _components(child, kind)
    return found


def _chat_template(folder: Path, config: dict[str, Any]) -> str | None:
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: take the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if not template and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    return template or None


class HFTokenizer:
    """Text <-> token ids as `tokenizers` runs `tokenizer.json`; attributes as `Tokenizer`'s."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise GGUFError(f"{folder} has no tokenizer.json")
        spec = _read_json(path)
        try:
            self._hf = tokenizers.Tokenizer.from_str(json.dumps(spec))
            self._hf_plain = tokenizers.Tokenizer.from_str(json.dumps(spec))
        except Exception as e:  # tokenizers raises its own Exception subclass
            raise GGUFError(f"cannot load {path}: {e}") from e
        self._hf_plain.encode_special_tokens = True  # special-token texts stay plain text
        config = _read_json(folder / "tokenizer_config.json")
        model_config = _read_json(folder / "config.json")
        generation = _read_json(folder / "generation_config.json")

        added = self._hf.get_added_tokens_decoder()
        self.vocab_size = max(
            [self._hf.get_vocab_size(with_added_tokens=True), *(i + 1 for i in added)]
        )
        pieces = [self._hf.id_to_token(i) or "" for i in range(self.vocab_size)]
        byte_level = bool(_components(spec.get("decoder"), "ByteLevel"))
        byte_fallback = bool((spec.get("model") or {}).get("byte_fallback"))
        types = [TokenType.NORMAL] * self.vocab_size
        for i, text in enumerate(pieces):
            if byte_fallback and len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
                types[i] = TokenType.BYTE
        for i, token in added.items():
            types[i] = TokenType.CONTROL if token.special else TokenType.USER_DEFINED

        def token_id(text: str | None) -> int | None:
            return None if text is None else self._hf.token_to_id(text)

        self.bos_id = token_id(_token_text(config.get("bos_token")))
        if self.bos_id is None and _ids(model_config.get("bos_token_id")):
            self.bos_id = _ids(model_config.get("bos_token_id"))[0]
        eos = [token_id(_token_text(config.get("eos_token")))]
        eos += _ids(generation.get("eos_token_id")) + _ids(model_config.get("eos_token_id"))
        eos += [i for i in added if pieces[i] in _EOG_TEXTS and added[i].special]
        eos_ids = [i for i in eos if i is not None and 0 <= i < self.vocab_size]
        self.eos_id = eos_ids[0] if eos_ids else None
        self.eos_ids = frozenset(eos_ids)
        self.bos_text = pieces[self.bos_id] if self.bos_id is not None else ""
        self.eos_text = pieces[self.eos_id] if self.eos_id is not None else ""
        self.chat_template = _chat_template(folder, config)
        # SentencePiece-style vocabularies (Metaspace) put a space before the first word.
        metaspace = _components(spec.get("pre_tokenizer"), "Metaspace")
        prepend = _components(spec.get("normalizer"), "Prepend")
        self.add_space_prefix = not byte_level and (
            any(m.get("prepend_scheme", "always") != "never" for m in metaspace) or bool(prepend)
        )
        decoder = gpt2_byte_decoder()

        def to_bytes(text: str, kind: TokenType) -> bytes:
            if kind == TokenType.BYTE:
                return bytes([int(text[3:5], 16)])
            if kind == TokenType.CONTROL:
                return b""
            if kind == TokenType.USER_DEFINED or not byte_level:
                return text.replace("\u2581", " ").encode()
            return b"".join(bytes([decoder[c]]) if c in decoder else c.encode() for c in text)

        self._pieces, self._types = pieces, types
        self._bytes = [to_bytes(t, k) for t, k in zip(pieces, types, strict=True)]

    def id_to_piece(self, token_id: int) -> str:
        return self._pieces[self._check(token_id)]

    def token_type(self, token_id: int) -> TokenType:
        return self._types[self._check(token_id)]

    def token_bytes(self, token_id: int, *, special: bool = False) -> bytes:
        """The raw bytes a token stands for; special tokens give b"" unless `special`."""
        if special and self._types[self._check(token_id)] == TokenType.CONTROL:
            return self._pieces[token_id].encode()
        return self._bytes[self._check(token_id)]

    def encode(
        self, text: str, *, add_special: bool = True, parse_special: bool = False
    ) -> list[int]:
        """`add_special` runs tokenizer.json's post-processor (BOS where it adds one);
        `parse_special` turns special-token texts into their ids."""
        hf = self._hf if parse_special else self._hf_plain
        return hf.encode(text, add_special_tokens=add_special).ids

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        return decode_ids(self, ids, skip_special=skip_special)

    def _check(self, token_id: int) -> int:
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} is not in the vocabulary [0, {self.vocab_size})")
        return token_id
