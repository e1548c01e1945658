"""Model files: GGUF metadata and tensors, Hugging Face folders, weight conversion, `pull`."""
