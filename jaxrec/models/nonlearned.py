"""Non-learned baselines as ``ScoreFn`` factories: most-popular and random.

* :func:`popularity`: ``s(u, i) = count_train(i)``, the classic MostPop baseline (identical for every
  user; known positives are removed by the evaluation protocol).
* :func:`random_scores`: ``s(u, i) = h(seed, u, i) in [0, 1)``, a stateless integer hash (the murmur3
  32-bit finaliser of a linear mix), so a user's score of an item is the same under full ranking and
  sampled candidates and across batches.

Each factory returns ``(score_fn, params)``: a module-level ``ScoreFn(params, queries, items)`` and the
arrays it scores with, which :func:`jaxrec.eval.protocols.evaluate` passes to its kernels as jit
arguments.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.data.log import InteractionLog


def _broadcast(values_of_items: jax.Array, user: jax.Array, items: jax.Array) -> jax.Array:
  if items.ndim == 1:
    return jnp.broadcast_to(values_of_items[None, :], (user.shape[0], items.shape[0]))
  return values_of_items


def popularity_scores(counts: jax.Array, queries: Mapping[str, jax.Array], items: jax.Array) -> jax.Array:
  """ScoreFn with ``params = counts`` (float32 ``[num_items]``)."""
  return _broadcast(jnp.take(counts, items), queries["user"], items)


def popularity(train_log: InteractionLog):
  """``(popularity_scores, counts)``: every item scored by its number of training interactions."""
  counts = jnp.asarray(np.bincount(train_log.item, minlength=train_log.num_items).astype(np.float32))
  return popularity_scores, counts


def _mix32(x: jax.Array) -> jax.Array:
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def hashed_scores(seed: jax.Array, queries: Mapping[str, jax.Array], items: jax.Array) -> jax.Array:
  user = queries["user"].astype(jnp.uint32)
  it = items.astype(jnp.uint32)
  it = it[None, :] if items.ndim == 1 else it
  h = _mix32(user[:, None] * jnp.uint32(0x9E3779B1) ^ _mix32(it + seed.astype(jnp.uint32)))
  return (h >> 8).astype(jnp.float32) * jnp.float32(1.0 / (1 << 24))


def random_scores(seed: int = 0):
  """``(hashed_scores, seed)``: deterministic pseudo-random scores in ``[0, 1)`` per (seed, user, item)."""
  return hashed_scores, jnp.asarray(seed, jnp.uint32)
