"""The jitted prefill and decode steps lowered for an accelerator, on any machine (`jax.export`).

Cross-lowering needs no accelerator: `jax.export` runs the Pallas TPU (Mosaic) and GPU (Triton)
lowerings, their block-shape rules, and each kernel's own VMEM / shared-memory budget check
(`jaxserve.kernels.targets`). A TPU is named through an abstract mesh whose abstract device is
that TPU, so the kernels see its generation. What lowering cannot check is left to the target's
compiler (Mosaic's layout passes in libtpu, Triton's PTX build): an export that passes here is
necessary, not sufficient, for a run on hardware.

Weights are zeros of the model's real shapes (`zero_weights`): lowering reads shapes only.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
from jax import export
from jax.sharding import AbstractDevice, AbstractMesh, use_abstract_mesh

from jaxserve.config import ModelConfig, WeightFormat
from jaxserve.engine.rows import DecodeRow, PrefillRow
from jaxserve.loading.weights import ModelWeights
from jaxserve.models.build import build_model, read_weights
from jaxserve.runtime.kv_cache import NULL_PAGE, kv_format_for
from jaxserve.runtime.runner import ModelRunner
from jaxserve.sampling.rows import SamplingRow

TRITON_CALL = "__gpu$xla.gpu.triton"
# TPU generations by the device kind their runtime reports
TPU_KINDS = {"v4": "TPU v4", "v5e": "TPU v5 lite", "v5p": "TPU v5p", "v6e": "TPU v6 lite"}


class ZeroTensors:
    """A `Tensors` source of zeros in the GGUF shapes of `config`'s tensors, its matrices
    declared as stored in `source_type` (which sets the int8 block size)."""

    def __init__(self, config: ModelConfig, source_type: str = "Q4_1") -> None:
        self.source_type = source_type
        e, f, hd = config.hidden_size, config.intermediate_size, config.head_dim
        q, kv = config.num_heads * hd, config.num_kv_heads * hd
        layer = {
            "attn_norm": (e,), "ffn_norm": (e,), "post_attention_norm": (e,),
            "post_ffw_norm": (e,), "attn_q_norm": (hd,), "attn_k_norm": (hd,),
            "attn_q": (q, e), "attn_k": (kv, e), "attn_v": (kv, e), "attn_output": (e, q),
            "ffn_gate": (f, e), "ffn_up": (f, e), "ffn_down": (e, f),
        }  # fmt: skip
        if config.qkv_bias:
            layer |= {"attn_q.bias": (q,), "attn_k.bias": (kv,), "attn_v.bias": (kv,)}
        self.shapes = {
            "token_embd.weight": (config.vocab_size, e),
            "output_norm.weight": (e,),
        }
        for i in range(config.num_layers):
            for name, shape in layer.items():
                full = name if "." in name else f"{name}.weight"
                self.shapes[f"blk.{i}.{full}"] = shape

    def __contains__(self, name: str) -> bool:
        return name in self.shapes

    def get(self, name: str) -> np.ndarray:
        return np.zeros(self.shapes[name], np.float32)

    def type_of(self, name: str) -> str:
        return self.source_type if len(self.shapes[name]) == 2 else "F32"


def zero_weights(config: ModelConfig, fmt: WeightFormat, source_type: str = "Q4_1") -> ModelWeights:
    return read_weights(ZeroTensors(config, source_type), config, fmt)


def lowering_runner(
    config: ModelConfig,
    *,
    weights: WeightFormat,
    kernels: str = "pallas",
    num_pages: int = 512,
    page_size: int = 16,
    max_pages_per_row: int = 256,
    source_type: str = "Q4_1",
) -> ModelRunner:
    """A runner over zero weights, with the cache format the engine picks for `weights`;
    `source_type`: the GGUF type the matrices are declared in (Q4_1: 64-value int8 blocks)."""
    config = dataclasses.replace(config, kernels=kernels, kv_format=kv_format_for(weights, kernels))
    return ModelRunner(
        build_model(config, zero_weights(config, weights, source_type)),
        config,
        num_pages=num_pages,
        page_size=page_size,
        max_pages_per_row=max_pages_per_row,
    )


def _mesh(platform: str, chip: str) -> AbstractMesh | None:
    if platform != "tpu":
        return None
    device = AbstractDevice(device_kind=TPU_KINDS[chip], num_cores=1, platform="tpu")
    return AbstractMesh((1,), ("x",), abstract_device=device)


def export_steps(
    runner: ModelRunner,
    platform: str,
    *,
    chip: str = "v5e",
    rows: int = 32,
    tokens: int = 512,
    pages: int = 64,
    num_steps: int = 4,
) -> dict[str, export.Exported]:
    """Export the prefill step (one row of `tokens` tokens) and the decode step (`rows` rows over
    `pages` pages each, `num_steps` tokens a call) for `platform`: "tpu" (generation `chip`) or
    "cuda"."""
    null = [NULL_PAGE] * pages
    prefill = runner.prefill_batch([PrefillRow([0] * tokens, 0, null)])
    decode = runner.decode_batch([DecodeRow(0, 0, null, SamplingRow(), remaining=1)] * rows)
    checks = [export.DisabledSafetyCheck.custom_call(TRITON_CALL)]
    mesh = _mesh(platform, chip)

    def lower(fn, *args, **kwargs):
        exporter = export.export(fn, platforms=[platform], disabled_checks=checks)
        if mesh is None:
            return exporter(*args, **kwargs)
        with use_abstract_mesh(mesh):
            return exporter(*args, **kwargs)

    steps, params, kv, key = runner.steps, runner.params, runner.kv, runner.key
    return {
        "prefill": lower(steps.prefill, params, kv, prefill, key),
        "decode": lower(steps.decode, params, kv, decode, key, runner.grammar, num_steps=num_steps),
    }


_KERNEL_NAME = re.compile(r'(?:kernel_name|name) = \\?"(\w+)')


def kernels_in(exported: export.Exported) -> set[str]:
    """The Pallas kernels an exported step calls: names of its Mosaic TPU and Triton calls."""
    names = set()
    for line in exported.mlir_module().splitlines():
        if "custom_call" in line and ("tpu_custom_call" in line or TRITON_CALL in line):
            names.update(_KERNEL_NAME.findall(line)[:1])
    return names
