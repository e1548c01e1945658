"""Multi-process serving with `jax.distributed`: one leader, followers that mirror its steps.

Every process holds its shard of one global mesh, and every compiled step is a collective
program, so all processes must run the same steps in the same order. Process 0 (the leader) runs
the scheduler, the engine and the front ends; each device call of its runner (prefill, decode,
prompt logprobs, embeddings, constraint tables, warm-up) is first broadcast to the followers
(`multihost_utils.broadcast_one_to_all` of the pickled call), which make the same call on their
own runner. No other channel is used: the broadcast is itself a jax collective.
"""

from __future__ import annotations

import functools
import pickle
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils


@dataclass(frozen=True)
class DistributedConfig:
    """`coordinator_address` "host:port" of process 0; None (or one process) for one host."""

    coordinator_address: str | None = None
    num_processes: int = 1
    process_id: int = 0

    def __post_init__(self) -> None:
        if self.num_processes < 1 or not 0 <= self.process_id < self.num_processes:
            raise ValueError(
                f"process_id must be in [0, {self.num_processes}), got {self.process_id}"
            )
        if self.num_processes > 1 and not self.coordinator_address:
            raise ValueError("a coordinator address (host:port) is needed for several processes")

    @property
    def is_multi_process(self) -> bool:
        return self.num_processes > 1


def initialize(config: DistributedConfig) -> None:
    """Join the process group (before any other jax call); CPU collectives go through gloo."""
    if not config.is_multi_process:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        config.coordinator_address,
        num_processes=config.num_processes,
        process_id=config.process_id,
    )


def is_leader() -> bool:
    return jax.process_index() == 0


def process_count() -> int:
    return jax.process_count()


def device_count() -> int:
    return jax.device_count()


class Broadcaster:
    """Sends each runner call from the leader to every follower (a collective per call)."""

    def send(self, call: Any) -> None:
        payload = np.frombuffer(pickle.dumps(call), np.uint8)
        multihost_utils.broadcast_one_to_all(np.asarray([payload.size], np.int64))
        multihost_utils.broadcast_one_to_all(payload)

    def close(self) -> None:
        """Release the followers (they return from `follow`)."""
        self.send(None)


def receive() -> Any:
    """A follower's side of `Broadcaster.send`: the leader's next call (None: stop)."""
    size = int(multihost_utils.broadcast_one_to_all(np.zeros(1, np.int64))[0])
    payload = multihost_utils.broadcast_one_to_all(np.zeros(size, np.uint8))
    return pickle.loads(np.asarray(payload, np.uint8).tobytes())  # noqa: S301 (the leader's own)


def follow(runner: Any) -> int:
    """Run the leader's runner calls on this process's runner until it closes; returns the number
    of calls made."""
    calls = 0
    while (call := receive()) is not None:
        name, args, kwargs = call
        getattr(runner, name)(*args, **kwargs)
        calls += 1
    return calls


def mirrored(method):
    """A device call the leader of a multi-process group first sends to its followers
    (`jaxserve.runtime.distributed`); calls made inside another mirrored call are not sent again."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        if self.mirror is not None and self._depth == 0:
            self.mirror.send((method.__name__, args, kwargs))
        self._depth += 1
        try:
            return method(self, *args, **kwargs)
        finally:
            self._depth -= 1

    return call
