"""The engine (host only, never imports jax): requests, scheduler, KV pages, rows for the device.

- `engine.py`: `Engine.step()` = schedule -> run -> postprocess.
- `admission.py`: prompt and parameter checks before a request is queued.
- `sampling_inputs.py`: per-request sampler inputs and each step's `SamplingRow`.
- `scheduler.py`, `page_allocator.py`: which requests run, in which KV pages.
- `rows.py`, `device.py`: the rows and buckets handed to a `Runner`, and its results.
- `postprocess.py`: tokens recorded, matchers advanced, logprobs shaped.
- `research.py`: research hooks (captured layers, logit lens, steering table, uncertainty).
- `speculation.py`, `verify.py`: speculative decoding (n-gram drafts, one forward pass to check).
- `config.py`, `request.py`, `stats.py`, `grammar_slots.py`, `embed.py`.
"""

from jaxserve.engine.config import EngineConfig
from jaxserve.engine.engine import Engine, StepEvent
from jaxserve.engine.scheduler import SchedulerConfig

__all__ = ["Engine", "EngineConfig", "SchedulerConfig", "StepEvent"]
