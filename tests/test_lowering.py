"""Cross-lowering on this CPU machine: every Pallas kernel, and the whole jitted prefill and decode
steps of SmolLM2-135M and Gemma 3 270M (their real shapes, zero weights), export with `jax.export`
for TPU v5e and v6e and for CUDA, and the kernels refuse blocks that overflow the target's VMEM or
shared memory, naming the budget."""

from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export
from jax.sharding import AbstractDevice, AbstractMesh, use_abstract_mesh

from jaxserve.config import ModelConfig
from jaxserve.kernels import (
    apply_bitmask,
    paged_attention,
    prefill_attention,
    quant_matmul,
    resolve_mode,
    resolve_weights,
)
from jaxserve.kernels.targets import KernelBudgetError
from jaxserve.runtime.lowering import (
    TPU_KINDS,
    TRITON_CALL,
    export_steps,
    inputs_split_by_model,
    kernel_calls_outside_shard_map,
    kernels_in,
    lowering_runner,
)

SMOLLM2 = ModelConfig(
    architecture="llama", name="SmolLM2-135M", num_layers=30, hidden_size=576,
    intermediate_size=1536, num_heads=9, num_kv_heads=3, head_dim=64, vocab_size=49152,
    max_position=8192, rope_theta=100000.0, rope_style="interleaved", norm_eps=1e-5,
    tie_embeddings=True,
)  # fmt: skip
GEMMA3 = ModelConfig(
    architecture="gemma3", name="Gemma 3 270M", num_layers=18, hidden_size=640,
    intermediate_size=2048, num_heads=4, num_kv_heads=1, head_dim=256, vocab_size=262144,
    max_position=32768, rope_theta=1e6, rope_style="neox", norm_eps=1e-6, tie_embeddings=True,
    sliding_window=512, sliding_window_pattern=6, rope_theta_local=10000.0, qk_norm=True,
    attention_scale=0.0625, embedding_scale=640**0.5,
)  # fmt: skip
TARGETS = [("tpu", "v5e"), ("tpu", "v6e"), ("cuda", None)]
S = jax.ShapeDtypeStruct


def _export(fn, platform, chip, *args):
    exporter = export.export(
        jax.jit(fn),
        platforms=[platform],
        disabled_checks=[export.DisabledSafetyCheck.custom_call(TRITON_CALL)],
    )
    if platform != "tpu":
        return exporter(*args)
    device = AbstractDevice(device_kind=TPU_KINDS[chip], num_cores=1, platform="tpu")
    with use_abstract_mesh(AbstractMesh((1,), ("x",), abstract_device=device)):
        return exporter(*args)


def _cache(config, dtype=jnp.bfloat16, pages=512):
    return S((config.num_layers, config.num_kv_heads, pages, 16, config.head_dim), dtype)


@pytest.mark.parametrize(("platform", "chip"), TARGETS)
@pytest.mark.parametrize("config", [SMOLLM2, GEMMA3], ids=["smollm2", "gemma3"])
def test_attention_kernels_lower_at_serving_shapes(platform, chip, config):
    """32 decode rows / 4 prefill rows of 512 tokens over 512 pages of 16, bf16 cache."""
    h, d = config.num_heads, config.head_dim
    cache = _cache(config)
    table, lengths = S((32, 64), jnp.int32), S((32,), jnp.int32)

    def decode(q, k, v, t, n):
        return paged_attention(q, k, v, layer=jnp.int32(3), page_table=t, lengths=n)

    def prefill(q, k, v, t, pos, n):
        return prefill_attention(
            q, k, v, layer=jnp.int32(3), page_table=t, q_positions=pos, kv_lens=n,
            window=jnp.int32(512),
        )  # fmt: skip

    got = _export(decode, platform, chip, S((32, h, d), jnp.float32), cache, cache, table, lengths)
    suffix = "_tpu" if platform == "tpu" else ""
    assert kernels_in(got) == {"paged_decode_attention" + suffix}
    args = (S((4, 512, h, d), jnp.float32), cache, cache, S((4, 64), jnp.int32))
    got = _export(prefill, platform, chip, *args, S((4, 512), jnp.int32), S((4,), jnp.int32))
    assert kernels_in(got) == {"paged_prefill_attention" + suffix}


@pytest.mark.parametrize(("platform", "chip"), TARGETS)
@pytest.mark.parametrize("rows", [2, 512])
def test_quant_matmul_lowers_for_every_projection(platform, chip, rows):
    for k, n in [(576, 1536), (1536, 576), (576, 192), (576, 49152), (640, 262144), (2048, 640)]:
        args = (S((rows, k), jnp.float32), S((k, n), jnp.int8), S((k // 32, n), jnp.float32))
        assert kernels_in(_export(quant_matmul, platform, chip, *args)) == {"int8_kernel"}


@pytest.mark.parametrize(("platform", "chip"), TARGETS)
def test_bitmask_is_a_kernel_on_gpu_and_xla_on_tpu(platform, chip):
    args = (S((32, 262144), jnp.float32), S((32, 8192), jnp.int32))
    got = kernels_in(_export(apply_bitmask, platform, chip, *args))
    assert got == (set() if platform == "tpu" else {"apply_bitmask"})


@pytest.fixture(
    scope="module", params=["smollm2-int8", "smollm2-bf16", "gemma3-int8", "gemma3-bf16"]
)
def runner(request):
    model, weights = request.param.split("-")
    config, source = (SMOLLM2, "Q4_1") if model == "smollm2" else (GEMMA3, "Q4_K")  # 64 / 32
    return lowering_runner(config, weights=weights, source_type=source), weights


@pytest.mark.parametrize(("platform", "chip"), TARGETS)
def test_whole_steps_export_with_pallas_kernels(runner, platform, chip):
    """The jitted prefill (512 tokens) and decode (32 rows, 64 pages, 4 tokens a call) steps,
    sampler and grammar mask included, lower for the target and call the kernels."""
    runner, weights = runner
    steps = export_steps(runner, platform, chip=chip or "v5e")
    suffix = "_tpu" if platform == "tpu" else ""
    matmul = {"int8_kernel"} if weights == "int8" else set()
    mask = set() if platform == "tpu" else {"apply_bitmask"}
    assert kernels_in(steps["prefill"]) == {"paged_prefill_attention" + suffix} | matmul | mask
    assert kernels_in(steps["decode"]) == {"paged_decode_attention" + suffix} | matmul | mask
    assert steps["decode"].platforms == (platform,)


@pytest.mark.parametrize(("platform", "chip"), TARGETS)
def test_steps_with_lora_adapters_and_research_hooks_export(platform, chip):
    """The accelerator default (bf16 weights, Pallas kernels) with 4 LoRA slots of rank 16,
    capture and steering slots: the adapter and steering tables are step inputs, and the
    steps still call the attention kernels."""
    runner = lowering_runner(
        SMOLLM2, weights="bf16", capture_slots=2, steering_slots=2, lora_slots=4, lora_rank=16
    )
    steps = export_steps(runner, platform, chip=chip or "v5e")
    suffix = "_tpu" if platform == "tpu" else ""
    for name in ("prefill", "decode"):
        shapes = {tuple(a.shape) for a in steps[name].in_avals}
        assert (30, 5, 576, 16) in shapes and (30, 5, 16, 1536) in shapes  # q's A, up's B
        assert (3, 30, 576) in shapes  # the steering table
        assert f"paged_{name}_attention{suffix}" in kernels_in(steps[name])


@pytest.fixture(
    scope="module", params=["gemma3-tp2-int8", "gemma3-tp2-bf16", "smollm2-tp3-int8",
                            "smollm2-tp3-bf16"]
)  # fmt: skip
def tp_runner(request):
    """Gemma 3 split two ways (its one kv head repeated), SmolLM2 three ways (9 query heads)."""
    model, tp, weights = request.param.split("-")
    config, source = (SMOLLM2, "Q4_1") if model == "smollm2" else (GEMMA3, "Q4_K")
    tp = int(tp[2:])
    return lowering_runner(config, weights=weights, source_type=source, tensor_parallel=tp), tp


@pytest.mark.parametrize(("platform", "chip"), TARGETS)
def test_whole_steps_export_under_tensor_parallel(tp_runner, platform, chip):
    """With parameters and cache split over a (1, tp) mesh, every attention and matmul kernel
    runs inside `shard_map` on its own device's heads, columns or rows; only the grammar mask
    (a GPU kernel) reads the whole logits rows, which the sampler gathers anyway."""
    runner, tp = tp_runner
    steps = export_steps(runner, platform, chip=chip or "v5e", tensor_parallel=tp)
    suffix = "_tpu" if platform == "tpu" else ""
    for name, attention in (("prefill", "paged_prefill_attention"),
                            ("decode", "paged_decode_attention")):  # fmt: skip
        assert attention + suffix in kernels_in(steps[name])
        outside = kernel_calls_outside_shard_map(steps[name])
        assert outside == ([] if platform == "tpu" else ["apply_bitmask"])
    # q/k/v/o, gate/up/down (and their scales in int8), the table and K/V come in split
    assert inputs_split_by_model(steps["decode"]) >= 7 + 2


def test_kernels_name_the_budget_they_break():
    cache = _cache(GEMMA3)
    q = S((4, 512, 4, 256), jnp.float32)

    def too_wide(q, k, v, t, pos, n):  # 256 queries x 4 heads of 256 dims in one Triton program
        return prefill_attention(
            q, k, v, layer=jnp.int32(0), page_table=t, q_positions=pos, kv_lens=n, block_q=256
        )

    args = (q, cache, cache, S((4, 64), jnp.int32), S((4, 512), jnp.int32), S((4,), jnp.int32))
    with pytest.raises(KernelBudgetError, match="shared memory.*CUDA H100 allows"):
        _export(too_wide, "cuda", None, *args)

    def huge_rows(x, w, s):  # a [128, 262144 x 8] weight block cannot sit in VMEM
        return quant_matmul(x, w, s, blocks=(128, 262144, 512))

    args = (S((128, 8192), jnp.float32), S((8192, 262144), jnp.int8), S((256, 262144), jnp.float32))
    with pytest.raises(KernelBudgetError, match="scoped VMEM.*TPU v5e allows"):
        _export(huge_rows, "tpu", "v5e", *args)


def test_auto_picks_kernels_only_where_they_lower(caplog):
    with caplog.at_level(logging.INFO, logger="jaxserve.kernels"):
        assert resolve_mode("auto", "cpu") == "reference"
    assert "XLA reference path on cpu" in caplog.text
    assert resolve_mode("auto", "tpu") == resolve_mode("auto", "gpu") == "pallas"
    with pytest.raises(ValueError, match="'interpret' runs the kernels on CPU"):
        resolve_mode("pallas", "cpu")
    assert resolve_weights("auto", "tpu") == resolve_weights("auto", "gpu") == "bf16"
    assert resolve_weights("auto", "cpu") == "int8"
    with pytest.raises(ValueError, match="weights must be one of"):
        resolve_weights("fp8", "cpu")


def test_lowering_runner_keeps_the_engine_cache_format():
    small = dataclasses.replace(SMOLLM2, num_layers=1)
    assert lowering_runner(small, weights="bf16").kv.k.dtype == jnp.bfloat16
    assert lowering_runner(small, weights="int8", kernels="reference").kv.is_quantized


def test_bf16_weights_generate_like_f32(tiny_gguf):
    """bf16 weights (the accelerator default) with a bf16 KV cache, through the XLA path and the
    kernels (interpreted): the same greedy tokens as f32, logprobs within bf16 rounding."""
    from jaxserve import LLM, SamplingParams

    params = SamplingParams(max_tokens=6, temperature=0.0, logprobs=1)
    runs = {}
    for weights, kernels in [("f32", "reference"), ("bf16", "reference"), ("bf16", "interpret")]:
        llm = LLM(str(tiny_gguf), weights=weights, kernels=kernels, compilation_cache_dir="")
        assert llm.config.kv_format == weights
        runs[weights, kernels] = llm.generate(["hello world"], params)[0]
    exact = runs["f32", "reference"]
    for out in (runs["bf16", "reference"], runs["bf16", "interpret"]):
        assert out.token_ids == exact.token_ids
        got = [lp.logprob for lp in out.logprobs]
        want = [lp.logprob for lp in exact.logprobs]
        np.testing.assert_allclose(got, want, atol=0.05)
