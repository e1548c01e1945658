"""Text (host only): tokenizers (GGUF and Hugging Face), incremental detokenizer, chat templates."""

from jaxserve.text.tokenizer import GGUFTokenizer, Tokenizer, TokenType, encode_prompt

__all__ = ["GGUFTokenizer", "TokenType", "Tokenizer", "encode_prompt"]
