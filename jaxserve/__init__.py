"""jaxserve: a JAX/XLA-compiled LLM serving framework."""

from jaxserve.outputs import RequestOutput, TokenLogprob
from jaxserve.sampling_params import SamplingParams


def __getattr__(name: str):
    # LLM pulls in jax; load it on first use so host-only imports stay light.
    if name == "LLM":
        from jaxserve.llm import LLM

        return LLM
    raise AttributeError(name)


__all__ = ["LLM", "RequestOutput", "SamplingParams", "TokenLogprob"]
