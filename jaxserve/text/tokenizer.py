"""Tokenizers built from GGUF metadata, matching llama.cpp's tokenization.

Two vocabulary kinds (`tokenizer.ggml.model`):

- `gpt2`: byte-level BPE built in memory with HF `tokenizers` from the GGUF tokens and merges; the
  pre-tokenizer regexes per `tokenizer.ggml.pre` are the ones in llama.cpp's `llama-vocab.cpp`.
- `llama`: SentencePiece (e.g. Gemma 3), a `ModelProto` built in memory from tokens, scores and
  types. Every piece except byte and unknown pieces is given type NORMAL there, because llama.cpp's
  SPM merge looks any token text up, whatever its type.

As in llama.cpp, user-defined tokens (type 4) are always cut out of the text first, and control
tokens (type 3) too when `parse_special=True`; the rest is tokenized fragment by fragment. Gemma's
whitespace-run user-defined tokens hold raw spaces, while SentencePiece matches escaped (U+2581)
text, so SentencePiece must never see them: cutting them out first takes care of that.

Checked against llama.cpp (llama-cpp-python 0.3.36) on SmolLM2 (`smollm`) and Gemma 3: identical
ids on ~25k random and real texts, except for characters new in Unicode 16 (the regex engine
knows them; llama.cpp's tables do not). Other `pre` types follow llama.cpp's regexes, unchecked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from enum import IntEnum
from types import MappingProxyType
from typing import Any, Protocol

import sentencepiece
import tokenizers
from sentencepiece import sentencepiece_model_pb2 as spm_pb2
from tokenizers import pre_tokenizers

from jaxserve.errors import GGUFError


class TokenType(IntEnum):
    """`tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`)."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3_TAIL = r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_LLAMA3 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|" + _LLAMA3_TAIL
_QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|" + _LLAMA3_TAIL
_DEFAULT = (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]")


# `tokenizer.ggml.pre` -> regexes applied in turn (each match isolated), as in llama-vocab.cpp.
_PRE_SPLITS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"default": _DEFAULT}
    | dict.fromkeys(("gpt-2", "gpt2", "phi-2", "mpt", "olmo", "jais", "exaone4"), (_GPT2,))
    | dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "dbrx", "smaug-bpe"), (_LLAMA3,))
    | dict.fromkeys(("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"), (_QWEN2,))
    | dict.fromkeys(("smollm", "starcoder", "refact", "command-r", "codeshell"), (r"\p{N}", _GPT2))
)
_MISSING = "\x00jaxserve-missing"  # never a byte-level character, so never in the text
_LLAMA3_FAMILY = frozenset({"llama3", "llama-v3", "llama-bpe", "falcon3"})  # ignore_merges, add BOS
# Token texts llama.cpp treats as end-of-generation (and forces to control) wherever they appear,
# FIM pad/repo/separator tokens included; "</s>" only without the Gemma 4 / PLaMo markers.
_EOG_TEXTS = frozenset(
    {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>"}
    | {"<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<end_of_utterance>", "</s>"}
    | {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", "<|file_sep|>"}
    | {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"}
)
_PLAIN_S_MARKERS = frozenset({"<|tool_response>", "<|plamo:eos|>"})


def gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's printable-character -> byte map (the inverse of `bytes_to_unicode`)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    moved = [b for b in range(256) if b not in kept]
    return {chr(b): b for b in kept} | {chr(256 + n): b for n, b in enumerate(moved)}


def _bpe_encoder(meta: Mapping[str, Any], tokens: list[str]) -> Callable[[str], list[int]]:
    pre = meta.get("tokenizer.ggml.pre") or "default"
    splits = _PRE_SPLITS.get(pre)
    if splits is None:
        raise GGUFError(f"unsupported BPE pre-tokenizer tokenizer.ggml.pre={pre!r}")
    vocab = {text: i for i, text in enumerate(tokens)}
    merges = []
    for merge in meta.get("tokenizer.ggml.merges") or ():
        pos = merge.find(" ", 1)
        left, right = merge[:pos], merge[pos + 1 :]
        if pos > 0 and left in vocab and right in vocab and left + right in vocab:
            merges.append((left, right))
    # A character missing from the vocabulary must stop merges and then vanish, as in llama.cpp:
    # map it to a sentinel id past the vocabulary and drop that id.
    missing = len(tokens)
    vocab[_MISSING] = missing
    model = tokenizers.models.BPE(
        vocab=vocab, merges=merges, unk_token=_MISSING, ignore_merges=pre in _LLAMA3_FAMILY
    )
    hf = tokenizers.Tokenizer(model)
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(tokenizers.Regex(r), behavior="isolated") for r in splits]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    return lambda text: [i for i in hf.encode(text, add_special_tokens=False).ids if i != missing]


def _spm_encoder(
    meta: Mapping[str, Any], tokens: list[str], types: list[int]
) -> Callable[[str], list[int]]:
    scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    unk = meta.get("tokenizer.ggml.unknown_token_id")
    if unk is None or not 0 <= unk < len(tokens):
        unk = next((i for i, t in enumerate(types) if t == TokenType.UNKNOWN), len(tokens))
    proto = spm_pb2.ModelProto()
    proto.trainer_spec.model_type = spm_pb2.TrainerSpec.BPE
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.unk_id = unk
    norm = proto.normalizer_spec
    norm.name, norm.add_dummy_prefix, norm.remove_extra_whitespaces = "identity", False, False
    norm.escape_whitespaces = True
    last = {text: i for i, text in enumerate(tokens)}  # llama.cpp: a repeated text -> last id
    piece_type = spm_pb2.ModelProto.SentencePiece
    for i, (text, score, kind) in enumerate(zip(tokens, scores, types, strict=True)):
        type_ = piece_type.BYTE if kind == TokenType.BYTE else piece_type.NORMAL
        piece = proto.pieces.add(piece=text, score=score, type=type_)
        if not text or last[text] != i:  # unreachable: a control piece is never matched
            piece.piece, piece.type = f"<jaxserve-hidden-{i}>", piece_type.CONTROL
        if i == unk:
            piece.type = piece_type.UNKNOWN
    if unk == len(tokens):  # SentencePiece needs one; its id is dropped from the output below
        proto.pieces.add(piece="<jaxserve-unk>", score=0.0, type=piece_type.UNKNOWN)
    try:
        sp = sentencepiece.SentencePieceProcessor(model_proto=proto.SerializeToString())
    except RuntimeError as exc:
        raise GGUFError(f"cannot build SentencePiece from the GGUF vocabulary: {exc}") from exc
    return lambda text: [i for i in sp.encode(text) if i != len(tokens)]


def _token_bytes(text: str, kind: int, is_bpe: bool, byte_decoder: Mapping[str, int]) -> bytes:
    """What a token stands for in text, for `special=False` (llama.cpp `token_to_piece`)."""
    if kind == TokenType.USER_DEFINED:
        return text.encode()
    if kind == TokenType.BYTE:
        return bytes([int(text[3:5], 16)])
    if kind != TokenType.NORMAL:
        return b""
    if not is_bpe:
        return text.replace("\u2581", " ").encode()
    return b"".join(bytes([byte_decoder[c]]) if c in byte_decoder else c.encode() for c in text)


def decode_ids(tokenizer: Tokenizer, ids: Sequence[int], *, skip_special: bool) -> str:
    """Join the tokens' bytes; with a space prefix, the first token after an optional leading
    BOS loses one leading space (the one `encode` added)."""
    pieces = [tokenizer.token_bytes(i, special=not skip_special) for i in ids]
    first = 1 if ids and ids[0] == tokenizer.bos_id else 0
    if tokenizer.add_space_prefix and len(pieces) > first and pieces[first][:1] == b" ":
        pieces[first] = pieces[first][1:]
    return b"".join(pieces).decode("utf-8", errors="replace")


class Tokenizer(Protocol):
    """Text <-> token ids: what the engine, the grammar compiler and the front ends need of a
    vocabulary. `GGUFTokenizer` and `jaxserve.text.tokenizer_hf.HFTokenizer` implement it."""

    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    eos_ids: frozenset[int]  # every id that ends generation
    bos_text: str
    eos_text: str
    chat_template: str | None
    add_space_prefix: bool

    def id_to_piece(self, token_id: int) -> str: ...
    def token_type(self, token_id: int) -> TokenType: ...
    def token_bytes(self, token_id: int, *, special: bool = False) -> bytes: ...
    def encode(
        self, text: str, *, add_special: bool = True, parse_special: bool = False
    ) -> list[int]: ...
    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str: ...


def encode_prompt(tokenizer: Tokenizer, text: str, *, add_special: bool = True) -> list[int]:
    """A prompt text's ids as the servers users compare with tokenize one (llama-server and vLLM):
    special-token texts written in it (`<|im_start|>`, `<start_of_turn>`) become their ids."""
    return tokenizer.encode(text, add_special=add_special, parse_special=True)


class GGUFTokenizer:
    """Text <-> token ids for one GGUF vocabulary, matching llama.cpp; see `from_metadata`.

    Attributes (read-only by convention):
        vocab_size: number of tokens.
        bos_id, eos_id: BOS / EOS ids, None where the GGUF names none.
        eos_ids: every id that ends generation (llama.cpp's EOG set): EOS, EOT, EOM and tokens
            such as `<|im_end|>`, `<end_of_turn>`, `<|eot_id|>`, `<|endoftext|>`.
        bos_text, eos_text: their texts ("" if none), for chat templates.
        chat_template: `tokenizer.chat_template`, or None.
        add_space_prefix: SentencePiece only: a space is put before text that starts the input or
            follows a special token (`tokenizer.ggml.add_space_prefix`, default true).
    """

    def __init__(self, meta: Mapping[str, Any]) -> None:
        kind = meta.get("tokenizer.ggml.model")
        if kind not in ("gpt2", "llama"):
            raise GGUFError(f"unsupported tokenizer model tokenizer.ggml.model={kind!r}")
        self._is_bpe = kind == "gpt2"
        tokens: list[str] = list(meta.get("tokenizer.ggml.tokens") or ())
        types = list(meta.get("tokenizer.ggml.token_type") or [TokenType.NORMAL] * len(tokens))
        if not tokens or len(types) != len(tokens):
            raise GGUFError("tokenizer.ggml.tokens is missing or differs from token_type in length")

        def token_id(key: str) -> int | None:
            value = meta.get(f"tokenizer.ggml.{key}_token_id")
            return value if isinstance(value, int) and 0 <= value < len(tokens) else None

        self.vocab_size = len(tokens)
        self.bos_id, self.eos_id = token_id("bos"), token_id("eos")
        self.bos_text = tokens[self.bos_id] if self.bos_id is not None else ""
        self.eos_text = tokens[self.eos_id] if self.eos_id is not None else ""
        eog = {token_id("eos"), token_id("eot"), token_id("eom")}
        eog_texts = _EOG_TEXTS - ({"</s>"} if _PLAIN_S_MARKERS.intersection(tokens) else set())
        for i, text in enumerate(tokens):
            if text in eog_texts:
                eog.add(i)
                types[i] = TokenType.CONTROL  # llama.cpp forces these to control
        self.eos_ids = frozenset(i for i in eog if i is not None)
        pre = meta.get("tokenizer.ggml.pre")
        default_bos = not self._is_bpe or pre in _LLAMA3_FAMILY
        self._add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", default_bos))
        self._add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
        self.add_space_prefix = not self._is_bpe and bool(
            meta.get("tokenizer.ggml.add_space_prefix", True)
        )
        self.chat_template: str | None = meta.get("tokenizer.chat_template") or None
        self._tokens, self._types = tokens, types
        self._fragment_ids = (
            _bpe_encoder(meta, tokens) if self._is_bpe else _spm_encoder(meta, tokens, types)
        )
        decoder = gpt2_byte_decoder()
        self._bytes = [
            _token_bytes(t, k, self._is_bpe, decoder) for t, k in zip(tokens, types, strict=True)
        ]
        specials = [
            (text, i, k != TokenType.USER_DEFINED)
            for i, (text, k) in enumerate(zip(tokens, types, strict=True))
            if text and k in (TokenType.CONTROL, TokenType.UNKNOWN, TokenType.USER_DEFINED)
        ]
        specials.sort(key=lambda s: -len(s[0].encode()))  # longest first, as llama.cpp
        self._user_defined = [(text, i) for text, i, is_control in specials if not is_control]
        self._all_special = [(text, i) for text, i, _ in specials]

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> GGUFTokenizer:
        """Build from `read_metadata` output; `GGUFError` for an unsupported tokenizer model."""
        return cls(meta)

    def id_to_piece(self, token_id: int) -> str:
        """The token's text as stored in the vocabulary (byte-level or U+2581-escaped form)."""
        return self._tokens[self._check(token_id)]

    def token_type(self, token_id: int) -> TokenType:
        """The token's type (control tokens include llama.cpp's forced end-of-generation ones)."""
        return TokenType(self._types[self._check(token_id)])

    def token_bytes(self, token_id: int, *, special: bool = False) -> bytes:
        """The raw bytes a token stands for; control/unknown tokens give b"" unless `special`."""
        if special and self._types[self._check(token_id)] in (TokenType.CONTROL, TokenType.UNKNOWN):
            return self._tokens[token_id].encode()
        return self._bytes[self._check(token_id)]

    def encode(
        self, text: str, *, add_special: bool = True, parse_special: bool = False
    ) -> list[int]:
        """Tokenize like llama.cpp's `llama_tokenize(text, add_special, parse_special)`.

        `add_special` adds BOS/EOS as `tokenizer.ggml.add_bos_token`/`add_eos_token` say;
        `parse_special` turns control-token texts (e.g. `<|im_start|>`) into their ids instead
        of tokenizing them as plain text.
        """
        ids: list[int] = []
        if add_special and self._add_bos and self.bos_id is not None:
            ids.append(self.bos_id)
        prev_special = True
        for fragment in self._partition(text, parse_special):
            if isinstance(fragment, int):
                ids.append(fragment)
                prev_special = True
                continue
            if self.add_space_prefix and prev_special:
                fragment = " " + fragment
            ids += self._fragment_ids(fragment)
            prev_special = False
        if add_special and self._add_eos and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        """Token ids -> text; control tokens appear as their text unless `skip_special`.

        For SentencePiece vocabularies with a space prefix, the first token after an optional
        leading BOS loses one leading space (the one `encode` added).
        """
        return decode_ids(self, ids, skip_special=skip_special)

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """Cut special-token texts out of `text`, longest token first (llama.cpp's algorithm)."""
        specials = self._all_special if parse_special else self._user_defined
        fragments: list[str | int] = [text] if text else []
        for special, token_id in [s for s in specials if s[0] in text]:
            cut: list[str | int] = []
            for fragment in fragments:
                if isinstance(fragment, int) or special not in fragment:
                    cut.append(fragment)
                    continue
                for j, part in enumerate(fragment.split(special)):
                    if j:
                        cut.append(token_id)
                    if part:
                        cut.append(part)
            fragments = cut
        return fragments

    def _check(self, token_id: int) -> int:
        if not 0 <= token_id < len(self._tokens):
            raise ValueError(f"token id {token_id} is not in the vocabulary [0, {self.vocab_size})")
        return token_id
