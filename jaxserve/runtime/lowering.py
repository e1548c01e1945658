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

import jax
import numpy as np
from jax import export
from jax.sharding import AbstractDevice, AbstractMesh, use_abstract_mesh

from jaxserve.config import ModelConfig, WeightFormat
from jaxserve.engine.rows import DecodeRow, PrefillRow
from jaxserve.loading.weights import ModelWeights
from jaxserve.models.build import build_model, read_weights
from jaxserve.runtime import parallel
from jaxserve.runtime.kv_cache import NULL_PAGE, kv_format_for
from jaxserve.runtime.parallel import prepare
from jaxserve.runtime.runner import ModelRunner
from jaxserve.sampling.rows import SamplingRow

TRITON_CALL = "__gpu$xla.gpu.triton"
# TPU generations by the device kind their runtime reports
GPU_KIND = "NVIDIA H100 80GB HBM3"
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
    tensor_parallel: int = 1,
    **hooks: int,
) -> ModelRunner:
    """A runner over zero weights, with the cache format the engine picks for `weights`;
    `source_type`: the GGUF type the matrices are declared in (Q4_1: 64-value int8 blocks);
    `tensor_parallel`: the heads prepared for that split (kv heads repeated where fewer), for
    `export_steps(..., tensor_parallel=)`; `hooks`: the runner's per-row hook capacities
    (`capture_slots`, `steering_slots`, `lora_slots`, `lora_rank`)."""
    config = dataclasses.replace(config, kernels=kernels, kv_format=kv_format_for(weights, kernels))
    config, loaded = prepare(config, zero_weights(config, weights, source_type), tensor_parallel)
    return ModelRunner(
        build_model(config, loaded),
        config,
        num_pages=num_pages,
        page_size=page_size,
        max_pages_per_row=max_pages_per_row,
        **hooks,
    )


def _mesh(platform: str, chip: str, tensor_parallel: int) -> AbstractMesh | None:
    """The abstract mesh to lower under: a TPU's names its generation; tensor parallel needs the
    serving mesh's (data, model) axes."""
    if platform != "tpu" and tensor_parallel == 1:
        return None
    kind = TPU_KINDS[chip] if platform == "tpu" else GPU_KIND
    device = AbstractDevice(device_kind=kind, num_cores=1, platform=platform)
    return AbstractMesh((1, tensor_parallel), ("data", "model"), abstract_device=device)


def _laid_out(tree, shardings):
    """Shape-only arguments carrying `shardings` (on an abstract mesh; a tree, or one for all)
    for `export`."""
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _: shardings, tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                        shardings)  # fmt: skip


def export_steps(
    runner: ModelRunner,
    platform: str,
    *,
    chip: str = "v5e",
    rows: int = 32,
    tokens: int = 512,
    pages: int = 64,
    num_steps: int = 4,
    tensor_parallel: int = 1,
) -> dict[str, export.Exported]:
    """Export the prefill step (one row of `tokens` tokens) and the decode step (`rows` rows over
    `pages` pages each, `num_steps` tokens a call) for `platform`: "tpu" (generation `chip`) or
    "cuda". With `tensor_parallel` > 1 (a runner from `lowering_runner(..., tensor_parallel=)`),
    parameters and cache come split over a (1, tensor_parallel) mesh as `serve` lays them out."""
    null = [NULL_PAGE] * pages
    prefill = runner.prefill_batch([PrefillRow([0] * tokens, 0, null)])
    decode = runner.decode_batch([DecodeRow(0, 0, null, SamplingRow(), remaining=1)] * rows)
    checks = [export.DisabledSafetyCheck.custom_call(TRITON_CALL)]
    mesh = _mesh(platform, chip, tensor_parallel)

    def lower(fn, *args, **kwargs):
        exporter = export.export(fn, platforms=[platform], disabled_checks=checks)
        if mesh is None:
            return exporter(*args, **kwargs)
        with use_abstract_mesh(mesh):
            return exporter(*args, **kwargs)

    steps, params, kv, key = runner.steps, runner.params, runner.kv, runner.key
    if tensor_parallel > 1:
        params = _laid_out(params, parallel.param_shardings(params, mesh))
        kv = _laid_out(kv, parallel.kv_sharding(mesh))
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


def kernel_calls_outside_shard_map(exported: export.Exported) -> list[str]:
    """The Pallas kernels an exported step calls outside any `shard_map` region (a kernel there
    would run on whole operands, gathered onto every device, under tensor parallel)."""
    outside, stack = [], []
    for line in exported.mlir_module().splitlines():
        text = line.strip()
        if text.startswith("}"):
            stack.pop()
        is_kernel = "custom_call" in text and ("tpu_custom_call" in text or TRITON_CALL in text)
        if is_kernel and "sdy.manual_computation" not in stack:
            outside.extend(_KERNEL_NAME.findall(text)[:1])
        if text.endswith("{") and not text.startswith("//"):
            op = re.search(r"=\s*\"?([\w.]+)", text)
            stack.append(op.group(1) if op else text.split("(")[0])
    return outside


def inputs_split_by_model(exported: export.Exported) -> int:
    """How many of an exported step's inputs arrive split over the mesh's `model` axis."""
    main = next(line for line in exported.mlir_module().splitlines() if "@main(" in line)
    return len(re.findall(r'sdy.sharding<@mesh, \[[^\]]*"model"', main))
