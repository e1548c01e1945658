"""Text (host only): tokenizers (GGUF and Hugging Face), incremental detokenizer, chat templates."""

from jaxserve.text.tokenizer import GGUFTokenizer, Tokenizer, TokenType

__all__ = ["GGUFTokenizer", "TokenType", "Tokenizer"]
