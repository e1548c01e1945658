"""Device side of regular constraints: mask each draw and advance each row's automaton state
inside the multi-step decode loop, with no host round trip.

The host (`jaxserve.grammar.export`) lays the tables of every constraint in use side by side in
one fixed-capacity table, so a batch mixing constraints runs the same compiled program. A row's
state is a global id into it, or -1 for a row without a device constraint.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class DeviceGrammarTables:
    byte_next: jax.Array  # [C, 256] int32, state after a byte (global ids)
    masks: jax.Array  # [C, W] int32, tokens allowed at a token boundary
    complete: jax.Array  # [C] bool, accepting with nothing that may follow
    token_bytes: jax.Array  # [V, L] uint8, each token's bytes (zero padded)
    token_lens: jax.Array  # [V] int32


def mask_rows(
    tables: DeviceGrammarTables, state: jax.Array, bitmask: jax.Array, use_bitmask: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Rows with a state get their automaton's mask ANDed into the row's own bitmask."""
    on = state >= 0
    masks = tables.masks[jnp.maximum(state, 0)]
    return jnp.where(on[:, None], masks & bitmask, bitmask), use_bitmask | on


def advance_rows(tables: DeviceGrammarTables, state: jax.Array, token_ids: jax.Array) -> jax.Array:
    """Each row's state after its token's bytes (rows at -1 stay at -1)."""
    vocab, longest = tables.token_bytes.shape
    tokens = jnp.clip(token_ids, 0, vocab - 1)
    lens = tables.token_lens[tokens]

    def step(i, s):
        byte = tables.token_bytes[tokens, i].astype(jnp.int32)
        return jnp.where(i < lens, tables.byte_next[s, byte], s)

    moved = jax.lax.fori_loop(0, longest, step, jnp.maximum(state, 0))
    return jnp.where(state >= 0, moved, state)


def is_complete(tables: DeviceGrammarTables, state: jax.Array) -> jax.Array:
    return (state >= 0) & tables.complete[jnp.maximum(state, 0)]
