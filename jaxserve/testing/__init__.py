"""Building blocks for users' own (property-based) test suites.

- `strategies`: hypothesis strategies for valid `SamplingParams` and request batches.
- `chain`: run the sampler chain on given logits outside the engine (`run_chain`).
- `grammar_strings`: `strings_from(spec)`, strings of a constraint's language.
- `mock_model`: a model whose outputs are computable by hand, behind the real engine.
"""

from jaxserve.testing.grammar_strings import strings_from

__all__ = ["strings_from"]
