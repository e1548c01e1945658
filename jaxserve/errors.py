"""Errors the project raises for bad input, each naming what was wrong."""


class JaxserveError(Exception):
    """Base class for errors caused by bad input (a model, a file, a request)."""


class ModelNotFoundError(JaxserveError):
    """An unknown model name or a missing model file."""


class GGUFError(JaxserveError):
    """A GGUF file that is truncated, corrupt, or uses something this project does not support."""


class UnsupportedArchitectureError(GGUFError):
    """A GGUF whose `general.architecture` has no model class here."""


class ContextLengthError(JaxserveError):
    """A prompt that does not fit the model's context (or the KV cache)."""


class ChatTemplateError(JaxserveError):
    """A chat template that does not compile, or fails while rendering (`raise_exception`)."""


class QueueFullError(JaxserveError):
    """The waiting queue is at its limit; the caller should retry later."""


class OutOfPagesError(JaxserveError):
    """The KV page pool cannot hold what was asked for right now."""


class NonFiniteLogitsError(JaxserveError):
    """A request's logits held NaN or +inf (the model, or a logits hook, broke for that row):
    that request is failed alone; the rows beside it are unaffected."""
