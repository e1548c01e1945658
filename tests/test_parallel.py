"""Tensor and data parallel serving on simulated CPU devices (8, from conftest's XLA_FLAGS).

A sharded engine must give the same greedy tokens as one device for a batch of requests (a
constrained one included); the compiled step must hold the collectives tensor parallelism needs
and keep weights split, not replicated; nothing recompiles after warm-up.
"""

from __future__ import annotations

import jax
import pytest

from jaxserve import LLM, SamplingParams
from jaxserve.engine.rows import PrefillRow
from tests.tiny_hf import write_tiny_hf

PROMPTS = ["hello world", "the and the", "say it:"]


def _params() -> list[SamplingParams]:
    return [
        SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True),
        SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True, logprobs=2),
        SamplingParams(max_tokens=12, temperature=0.0, regex=r"(the|and) (hello|world)"),
    ]


def _run(model: str, weights: str = "f32", **kwargs) -> list[list[int]]:
    llm = LLM(model, weights=weights, max_model_len=64, max_num_seqs=4, **kwargs)
    engine = llm.engine
    added = [
        engine.add_request(llm.tokenize(p), sp) for p, sp in zip(PROMPTS, _params(), strict=True)
    ]
    while engine.has_unfinished():
        engine.step()
    return [r.output.token_ids for r in added]


@pytest.fixture(scope="module")
def mqa8(tmp_path_factory):
    """8 query heads sharing 1 kv head: tensor parallel up to 8 repeats the kv head."""
    return str(write_tiny_hf(tmp_path_factory.mktemp("tp") / "mqa8", "qwen2-8h-mqa"))


@pytest.fixture(scope="module")
def single(tiny_gguf, mqa8):
    return {"gguf": _run(str(tiny_gguf)), "mqa8": _run(mqa8)}


def test_the_simulated_devices_are_there():
    assert len(jax.devices()) >= 8


@pytest.mark.parametrize(
    ("model", "tp", "dp"),
    [
        ("gguf", 2, 1),  # 4 q / 2 kv heads split evenly
        ("gguf", 4, 1),  # 2 kv heads < 4: each repeated twice
        ("mqa8", 8, 1),  # 1 kv head repeated 8 times
        ("gguf", 1, 2),  # data parallel only
        ("mqa8", 2, 2),  # tensor x data
    ],
)
def test_sharded_greedy_tokens_equal_one_device(model, tp, dp, single, tiny_gguf, mqa8):
    path = str(tiny_gguf) if model == "gguf" else mqa8
    ours = _run(path, tensor_parallel=tp, data_parallel=dp)
    assert ours == single[model]


@pytest.mark.parametrize("weights", ["f32", "int8"])
def test_kernels_split_over_devices_give_one_devices_tokens(weights, tiny_gguf):
    """The Pallas kernels (in interpret mode) under tensor parallel run inside `shard_map`, each
    device on its own heads and weight columns or rows: the same greedy tokens as one device."""
    one = _run(str(tiny_gguf), weights, kernels="interpret")
    assert _run(str(tiny_gguf), weights, kernels="interpret", tensor_parallel=2) == one
    llm = LLM(str(tiny_gguf), weights=weights, kernels="interpret", tensor_parallel=2,
              max_model_len=64)  # fmt: skip
    runner = llm.engine.runner
    batch = runner.prefill_batch([PrefillRow([3, 4, 5, 6], 0, [1])])
    text = runner.steps.prefill.lower(runner.params, runner.kv, batch, runner.key).as_text()
    regions = text.count("sdy.manual_computation")
    assert regions == (1 if weights == "f32" else 9)  # attention (+ 7 projections, the head)


def test_compiled_step_is_split_and_holds_collectives(tiny_gguf):
    llm = LLM(str(tiny_gguf), weights="int8", tensor_parallel=2, max_model_len=64)
    runner = llm.engine.runner
    assert llm.config.num_kv_heads == 2
    specs = {
        jax.tree_util.keystr(path): leaf.sharding.spec
        for path, leaf in jax.tree_util.tree_leaves_with_path(runner.params)
    }
    q_w = next(s for k, s in specs.items() if "'q'" in k and "'w'" in k)
    o_w = next(s for k, s in specs.items() if "'o'" in k and "'w'" in k)
    table = next(s for k, s in specs.items() if "'table'" in k and "'w'" in k)
    assert q_w[-1] == "model" and o_w[-2] == "model" and table[-1] == "model"
    # Every matrix of the layers is split: none is replicated whole on each device.
    layer_matrices = [s for k, s in specs.items() if "'layers'" in k and "'w'" in k]
    assert layer_matrices and all("model" in tuple(s) for s in layer_matrices)
    assert runner.kv.k.sharding.spec[1] == "model"
    batch = runner.prefill_batch([PrefillRow([3, 4, 5, 6], 0, [1])])
    text = (
        runner.steps.prefill.lower(runner.params, runner.kv, batch, runner.key).compile().as_text()
    )
    assert "all-reduce" in text  # row-split projections sum their partial products
    # The compiled program takes the weights split: each device holds half of a q projection.
    q_leaf = next(
        leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(runner.params)
        if "'q'" in jax.tree_util.keystr(path) and "'w'" in jax.tree_util.keystr(path)
    )
    shard = q_leaf.addressable_shards[0].data
    assert shard.shape[-1] * 2 == q_leaf.shape[-1]


def test_no_recompiles_after_warmup_when_sharded(tiny_gguf):
    llm = LLM(
        str(tiny_gguf),
        tensor_parallel=2,
        data_parallel=2,
        max_model_len=64,
        max_num_seqs=4,
        prefill_chunk=32,
        warmup=True,
    )
    runner = llm.engine.runner
    mixed = [
        SamplingParams(max_tokens=6, temperature=0.8, seed=1, top_p=0.9),
        SamplingParams(max_tokens=5, temperature=0.0, json_schema={"type": "boolean"}),
        SamplingParams(max_tokens=7, temperature=1.0, seed=2, repetition_penalty=1.2),
    ]
    outs = [llm.generate(PROMPTS, sp) for sp in mixed]
    assert all(len(o) == len(PROMPTS) for o in outs)
    assert runner.num_compiled() == runner.compiled_at_warmup


def test_unsplittable_heads_are_refused(tiny_gguf):
    with pytest.raises(ValueError, match="tensor_parallel=3 does not divide the model's 4 query"):
        LLM(str(tiny_gguf), tensor_parallel=3)
    with pytest.raises(ValueError, match="needs 16 devices"):
        LLM(str(tiny_gguf), tensor_parallel=4, data_parallel=4)


@pytest.mark.slow
def test_smollm2_tensor_parallel_3(smollm2_path):
    """SmolLM2's 9 query and 3 kv heads split three ways. The row-split projections sum their
    partial products in another order than one device does, so greedy runs are compared up to
    the first step where one device's own top two tokens are within `TIE` nats."""
    tie = 0.05
    params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True, logprobs=2)
    prompts = ["The capital of France is", "def fibonacci(n):", "Water boils at"]
    one = LLM(str(smollm2_path), max_model_len=128, max_num_seqs=4)
    three = LLM(str(smollm2_path), max_model_len=128, max_num_seqs=4, tensor_parallel=3)
    assert three.config.num_kv_heads == 3
    compared = 0
    for a, b in zip(one.generate(prompts, params), three.generate(prompts, params), strict=True):
        gaps = [lp.top[0][1] - lp.top[1][1] for lp in a.logprobs]
        n = next((i for i, g in enumerate(gaps) if g < tie), len(gaps))
        assert b.token_ids[:n] == a.token_ids[:n], (n, a.text, b.text)
        compared += n
    assert compared >= 24, compared  # most steps are compared
