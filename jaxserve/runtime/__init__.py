"""The device side: the runner (buckets, placement), the pure jitted steps, the paged KV cache,
mesh shardings and multi-process mirroring. Everything here may import jax.

Importing this package asks XLA CPU (through `XLA_FLAGS`, read when the backend starts) to keep
its own emitters for elementwise ops and reductions instead of YNNPACK fusions, whose choice and
numerics change with the size of the call: with them, a request's logits would depend on what
else is in its batch. YNNPACK still runs the int8 dots (exact in int32), where the speed is.
"""

import os

BATCH_INVARIANT_FLAG = (
    "--xla_cpu_experimental_ynn_fusion_type="
    "-LIBRARY_FUSION_TYPE_REDUCE,-LIBRARY_FUSION_TYPE_ELTWISE"
)


def request_batch_invariant_cpu() -> None:
    """Add `BATCH_INVARIANT_FLAG` to `XLA_FLAGS` unless the caller set that option itself; it
    takes effect if the CPU backend has not started yet."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {BATCH_INVARIANT_FLAG}".strip()


request_batch_invariant_cpu()
