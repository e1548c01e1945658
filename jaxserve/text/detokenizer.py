"""Incremental detokenization: token ids in, finished text out, never half a UTF-8 character."""

from __future__ import annotations

import codecs

from jaxserve.text.tokenizer import Tokenizer


class IncrementalDetokenizer:
    """Turns a stream of token ids into text, one token at a time.

    Bytes of a multi-byte character split across tokens are held back until the character is
    complete. Everything `add` returns, followed by `flush()`, equals
    `tokenizer.decode(ids, skip_special=skip_special)` for the same ids (invalid UTF-8 becomes
    U+FFFD in both). By default control tokens are rendered as their text, as `decode` does;
    pass `skip_special=True` to drop them.
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special: bool = False) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._num_tokens = 0
        # SentencePiece: the first token after an optional leading BOS loses its prefix space.
        self._strip_space = tokenizer.add_space_prefix

    def add(self, token_id: int) -> str:
        """Append one token; returns the text completed by it (possibly "")."""
        piece = self._tokenizer.token_bytes(token_id, special=not self._skip_special)
        if self._strip_space and not (self._num_tokens == 0 and token_id == self._tokenizer.bos_id):
            self._strip_space = False
            if piece[:1] == b" ":
                piece = piece[1:]
        self._num_tokens += 1
        return self._decoder.decode(piece)

    def flush(self) -> str:
        """End the stream: held-back bytes of an unfinished character come out as U+FFFD."""
        return self._decoder.decode(b"", final=True)
