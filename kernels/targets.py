"""What each accelerator gives one kernel program, and the check every kernel runs against it.

A TPU program's blocks and scratch live in VMEM, bounded by the compiler's scoped limit (16 MiB
by default through v5, 32 MiB from v6; `vmem_limit_bytes` can raise it, the kernels here stay
under the default). A Triton program stages its dot operands in shared memory (227 KiB per block
on H100/H200, 163 KiB on A100). Lowering does not check either (only the target's compiler
does), so each kernel adds up its own bytes at trace time and refuses a shape that would not fit,
naming the budget it broke.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1 << 20


class KernelBudgetError(ValueError):
    """A kernel's blocks for this shape do not fit the target's on-chip memory."""


@dataclass(frozen=True)
class Budget:
    target: str  # "TPU v5e", "CUDA H100"
    memory: str  # "scoped VMEM", "shared memory"
    nbytes: int

    def check(self, kernel: str, nbytes: int, detail: str) -> None:
        if nbytes > self.nbytes:
            raise KernelBudgetError(
                f"{kernel} needs {nbytes:,} bytes of {self.memory} per program ({detail}); "
                f"{self.target} allows {self.nbytes:,}"
            )


# Opt-in shared memory per block of the GPUs the kernels are sized for.
GPU_SHARED_MEMORY = {"H100": 232448, "H200": 232448, "A100": 166912, "L4": 101376}
DEFAULT_GPU = "H100"


def tpu_budget() -> Budget:
    """The scoped-VMEM budget of the TPU being lowered for (`pltpu.get_tpu_info()`; v5e's, the
    smallest of the TPUs served, where none is known)."""
    from jax.experimental.pallas import tpu as pltpu

    try:
        info = pltpu.get_tpu_info()
    except Exception:  # tracing every platform's branch where no TPU is known: the smallest
        info = pltpu.get_tpu_info_for_chip(pltpu.ChipVersion.TPU_V5E, 1)
    scoped = 16 * MIB if info.generation <= 5 else 32 * MIB
    return Budget(
        f"TPU {info.chip_version.value}", "scoped VMEM", min(scoped, info.vmem_capacity_bytes)
    )


def gpu_budget() -> Budget:
    """Shared memory per block of the local GPU, or of an H100 when lowering without one."""
    import jax

    kind = DEFAULT_GPU
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:
        gpus = []
    if gpus:
        kind = next((k for k in GPU_SHARED_MEMORY if k in gpus[0].device_kind), DEFAULT_GPU)
    return Budget(f"CUDA {kind}", "shared memory", GPU_SHARED_MEMORY[kind])
