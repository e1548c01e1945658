"""The device side: the runner (buckets, placement), the pure jitted steps, the paged KV cache,
mesh shardings and multi-process mirroring. Everything here may import jax."""
