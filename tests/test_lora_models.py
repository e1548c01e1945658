"""LoRA adapters on the real models with the defaults users get (int8 weights, prefix caching):
rows with different adapters, and rows without, share batches bit-identically, and a prefix-cache
hit under an adapter gives the same tokens and logprobs as the first run."""

from __future__ import annotations

import pytest

from jaxserve import LLM, SamplingParams
from jaxserve.loading.loader import open_model
from tests.tiny_lora import write_random_peft

pytestmark = pytest.mark.slow

PROMPT = "Write a short poem about the sea, the wind and the gulls over the harbour at dawn."


def _params(**kw) -> SamplingParams:
    return SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True, logprobs=2, **kw)


def _key(out):
    return out.token_ids, [(e.token_id, e.logprob) for e in out.logprobs]


@pytest.mark.parametrize("model", ["smollm2_path", "gemma3_path"])
def test_adapters_share_batches_bit_identically(model, request, tmp_path):
    path = str(request.getfixturevalue(model))
    config = open_model(path).config
    adapters = {
        name: write_random_peft(tmp_path / name, config, rank=8, seed=seed, std=0.05)
        for seed, name in enumerate(("a", "b"), start=1)
    }
    llm = LLM(
        path, max_model_len=256, max_num_seqs=8, max_loras=2, max_lora_rank=8,
        lora_adapters=adapters,
    )  # fmt: skip
    variants = [dict(), dict(lora="a"), dict(lora="b"), dict(lora="a", lora_scale=0.5)]
    alone = [_key(llm.generate(PROMPT, _params(**v))[0]) for v in variants]
    assert len({str(k) for k in alone}) == len(variants)  # each adapter moves the logprobs
    batch = [_params(**v) for v in variants] * 2
    assert [_key(o) for o in llm.generate([PROMPT] * len(batch), batch)] == alone * 2
    cached = llm.generate(PROMPT, _params(lora="b"))[0]
    assert cached.num_cached_tokens > 0 and _key(cached) == alone[2]
