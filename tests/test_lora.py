"""LoRA adapters: against `transformers` + `peft` with the adapter merged (f32), the same adapter
as a llama.cpp LoRA GGUF, and many adapters in one batch (int8: each row bit-identical to the
row run alone), the prefix cache keyed by adapter, loads that never recompile."""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from jaxserve import LLM, SamplingParams
from jaxserve.engine.rows import ProbeRow
from jaxserve.errors import GGUFError
from jaxserve.loading.hf_checkpoint import HFModelFile
from jaxserve.loading.loader import GGUFModelFile
from jaxserve.loading.lora import convert_peft_to_gguf, load_gguf_lora, load_lora
from jaxserve.runtime.hooks import DeviceHooks
from tests.forward import full_logits
from tests.tiny_hf import transformers, write_gguf_twin, write_tiny_hf
from tests.tiny_lora import write_random_peft

PROMPT = [1, 77, 120, 3, 250, 18, 42, 42, 9, 101, 64, 200, 297, 33]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _lora_logits(model_file, adapter, scale: float = 1.0) -> np.ndarray:
    config = model_file.config
    hooks = DeviceHooks(
        config,
        capture_slots=0,
        steering_slots=0,
        lora_slots=1,
        lora_rank=adapter.rank,
        put_rows=jnp.asarray,
        put_shared=jnp.asarray,
    )
    hooks.load_lora(1, adapter.pairs)
    probe = hooks.probe([ProbeRow(lora_slot=1, lora_scale=scale)], 1)
    return full_logits(model_file.build_model("f32"), config, PROMPT, probe=probe)


def _assert_close(ours: np.ndarray, theirs: np.ndarray, rtol: float = 1e-4) -> None:
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * np.abs(theirs).max())


@pytest.fixture(scope="module")
def peft_case(tmp_path_factory):
    """A tiny random Llama 3 (GQA) checkpoint, a random PEFT adapter on all seven projections,
    and `transformers`' logits with the adapter merged."""
    import peft
    import torch

    root = tmp_path_factory.mktemp("lora")
    folder = write_tiny_hf(root / "base", "llama3-gqa")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0)
    with warnings.catch_warnings():  # peft reads a deprecated transformers property
        warnings.simplefilter("ignore", FutureWarning)
        wrapped = peft.get_peft_model(model, config)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_" in name:
                param.copy_(0.2 * torch.randn_like(param))
    wrapped.save_pretrained(root / "adapter")
    with torch.no_grad():
        merged = wrapped.merge_and_unload()
        want = merged(torch.tensor([PROMPT]), use_cache=False).logits[0].numpy()
    return folder, root / "adapter", want, root


def test_peft_adapter_matches_transformers_merged(peft_case):
    folder, adapter_dir, want, _ = peft_case
    model_file = HFModelFile.open(folder)
    adapter = load_lora(adapter_dir, model_file.config)
    assert adapter.rank == 4 and len(adapter.pairs) == 7 * model_file.config.num_layers
    base = full_logits(model_file.build_model("f32"), model_file.config, PROMPT)
    assert np.abs(base - want).max() > 0.1  # the adapter moves the logits
    _assert_close(_lora_logits(model_file, adapter), want)


def test_the_adapter_as_a_gguf_lora_on_the_gguf_twin(peft_case):
    """llama.cpp's layout: q/k rows permuted in the base and in lora_b alike."""
    folder, adapter_dir, want, root = peft_case
    twin = GGUFModelFile.open(write_gguf_twin(folder, root / "twin.gguf"))
    assert twin.config.rope_style == "interleaved"
    converted = convert_peft_to_gguf(adapter_dir, root / "adapter.gguf", twin.config)
    from_gguf = load_gguf_lora(converted, twin.config)
    _assert_close(_lora_logits(twin, from_gguf), want)
    from_peft = load_lora(adapter_dir, twin.config)  # PEFT onto a GGUF base: permuted on load
    np.testing.assert_array_equal(_lora_logits(twin, from_peft), _lora_logits(twin, from_gguf))


def test_a_scale_of_zero_is_the_base_model(peft_case):
    folder, adapter_dir, _, _ = peft_case
    model_file = HFModelFile.open(folder)
    adapter = load_lora(adapter_dir, model_file.config)
    base = full_logits(model_file.build_model("f32"), model_file.config, PROMPT)
    np.testing.assert_array_equal(_lora_logits(model_file, adapter, scale=0.0), base)


@pytest.fixture(scope="module")
def adapters(tiny_gguf, tmp_path_factory):
    """Three random adapters of different ranks and modules for the tiny GGUF."""
    config = GGUFModelFile.open(tiny_gguf).config
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a": write_random_peft(root / "a", config, rank=2, seed=1),
        "b": write_random_peft(root / "b", config, rank=4, seed=2, modules=["q_proj", "v_proj"]),
        "c": write_random_peft(root / "c", config, rank=3, seed=3, modules=["down_proj"]),
    }


@pytest.fixture(scope="module")
def llm(tiny_gguf, adapters):
    return LLM(
        str(tiny_gguf),
        weights="int8",
        max_model_len=128,
        max_num_seqs=8,
        max_loras=3,
        max_lora_rank=4,
        lora_adapters=adapters,
    )


def _params(lora=None, **kw) -> SamplingParams:
    base = dict(max_tokens=10, temperature=0.0, ignore_eos=True, logprobs=2)
    if lora is not None:
        base.update(lora=lora)
    return SamplingParams(**{**base, **kw})


def _key(out):
    return out.token_ids, [(e.token_id, e.logprob) for e in out.logprobs]


def test_rows_with_different_adapters_share_a_batch_bit_identically(llm):
    prompt = "hello world, the quick brown fox"
    variants = [
        dict(),
        dict(lora="a"),
        dict(lora="b"),
        dict(lora="c"),
        dict(lora="a", lora_scale=0.5),
    ]
    alone = [_key(llm.generate(prompt, _params(**v))[0]) for v in variants]
    assert len({str(k) for k in alone}) == len(variants)  # every adapter changes the output
    seeded = [_params(**v, temperature=0.9, seed=7) for v in variants]
    seeded_alone = [_key(llm.generate(prompt, p)[0]) for p in seeded]
    batch = [_params(**v) for v in variants] * 2 + seeded
    outs = llm.generate([prompt] * len(batch), batch)
    got = [_key(o) for o in outs]
    assert got == alone + alone + seeded_alone


def test_prefix_cache_is_keyed_by_adapter(llm):
    prompt = "one two three four five six seven eight nine ten eleven twelve " * 2
    base = llm.generate(prompt, _params())[0]
    with_a = llm.generate(prompt, _params(lora="a"))[0]
    assert with_a.num_cached_tokens == 0  # the base's pages are not the adapter's
    again = llm.generate(prompt, _params(lora="a"))[0]
    assert again.num_cached_tokens > 0 and _key(again) == _key(with_a)
    half = llm.generate(prompt, _params(lora="a", lora_scale=0.5))[0]
    assert half.num_cached_tokens == 0  # another scale, other K/V
    assert _key(llm.generate(prompt, _params())[0]) == _key(base)


def test_loading_an_adapter_recompiles_nothing(llm, tiny_gguf, tmp_path):
    prompt = "hello world, the quick brown fox"
    llm.generate(prompt, _params(lora="c"))
    compiled = llm.engine.runner.num_compiled()
    llm.unload_lora("c")
    path = write_random_peft(tmp_path / "d", llm.config, rank=4, seed=9)
    llm.load_lora("d", path)
    out = llm.generate(prompt, _params(lora="d"))[0]
    assert llm.engine.runner.num_compiled() == compiled
    with pytest.raises(ValueError, match="lora: no LoRA adapter named 'c'"):
        llm.generate(prompt, _params(lora="c"))
    llm.unload_lora("d")
    llm.load_lora("c", path)  # the same file under the old name: d's output, no stale cache
    assert _key(llm.generate(prompt, _params(lora="c"))[0]) == _key(out)


def test_refusals(llm, tiny_gguf, tmp_path):
    config = llm.config
    with pytest.raises(ValueError, match="max_lora_rank 4"):
        llm.load_lora("big", write_random_peft(tmp_path / "big", config, rank=8, seed=4))
    with pytest.raises(GGUFError, match="maps"):
        wrong = write_random_peft(tmp_path / "w", config, rank=2, seed=5, hidden_size=7)
        llm.load_lora("wrong", wrong)
    with pytest.raises(ValueError, match="loaded already"):
        llm.load_lora("a", tmp_path / "big")
    with pytest.raises(ValueError, match="all 3 LoRA slots"):
        llm.load_lora("fourth", write_random_peft(tmp_path / "x", config, rank=2, seed=6))
    with pytest.raises(FileNotFoundError):
        llm.load_lora("missing", tmp_path / "nowhere")
    request = llm.engine.add_request([1, 2, 3], _params(lora="a"))
    with pytest.raises(ValueError, match="in use"):
        llm.unload_lora("a")
    llm.engine.abort(request)
    with pytest.raises(ValueError, match="lora_scale"):
        SamplingParams(lora_scale=0.5)
    plain = LLM(str(tiny_gguf), weights="f32", max_model_len=64, kv_cache_bytes=2**20)
    with pytest.raises(ValueError, match="max_loras"):
        plain.load_lora("a", tmp_path / "x")
    with pytest.raises(ValueError, match="lora: no LoRA adapter"):
        plain.generate("hi", _params(lora="a"))


def test_int8_tables_follow_the_float_ones(peft_case):
    """With int8 weights the adapter runs on int8 tables and tokens: its effect on the logits
    follows the f32 one closely."""
    import dataclasses

    from jaxserve.models.build import build_model

    folder, adapter_dir, _, root = peft_case
    twin = GGUFModelFile.open(write_gguf_twin(folder, root / "twin8.gguf"))
    config = dataclasses.replace(twin.config, kv_format="q8_0")
    adapter = load_lora(adapter_dir, config)
    model = build_model(config, twin.load_weights("int8"))
    hooks = DeviceHooks(
        config,
        capture_slots=0,
        steering_slots=0,
        lora_slots=1,
        lora_rank=4,
        put_rows=jnp.asarray,
        put_shared=jnp.asarray,
    )
    assert hooks.exact
    hooks.load_lora(1, adapter.pairs)
    on = hooks.probe([ProbeRow(lora_slot=1, lora_scale=1.0)], 1)
    off = hooks.probe([ProbeRow()], 1)
    effect8 = full_logits(model, config, PROMPT, probe=on) - full_logits(
        model, config, PROMPT, probe=off
    )
    effect32 = _lora_logits(twin, adapter) - full_logits(
        twin.build_model("f32"), twin.config, PROMPT
    )
    assert np.corrcoef(effect8.ravel(), effect32.ravel())[0, 1] > 0.99
    assert np.abs(effect8 - effect32).max() < 0.1 * np.abs(effect32).max()
