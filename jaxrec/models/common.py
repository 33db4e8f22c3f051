"""Building blocks shared by the dot-product models (MF, GRU4Rec, SASRec, ...).

:func:`dot_scores` implements both cases of the ``ScoreFn`` contract (see ARCHITECTURE.md) for any model
whose score is an inner product ``s(u, i) = <e_u, q_i> (+ b_i)``:

* ``items`` int32 ``[C]``: candidates shared by the whole batch (a full-ranking chunk). The score matrix
  is one matrix product ``U @ Q[items]^T``, never a gather of ``B x C`` embeddings.
* ``items`` int32 ``[B, C]``: per-query candidates (sampled protocol, training negatives); the scores are
  ``einsum('bd,bcd->bc', U, Q[items])``.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def dot_scores(user_vecs: jax.Array, item_table: jax.Array, items: jax.Array,
               item_bias: Optional[jax.Array] = None) -> jax.Array:
  """Inner-product scores of queries against candidate items.

  Args:
    user_vecs: float ``[B, d]`` query (user or sequence) representations.
    item_table: float ``[N, d]`` item embedding table.
    items: int ``[C]`` candidates shared by the batch, or int ``[B, C]`` per-query candidates.
    item_bias: optional float ``[N]`` per-item bias added to every score.

  Returns:
    float ``[B, C]`` scores ``<user_vecs[b], item_table[items[(b,) c]]> (+ item_bias[...])``.

  Raises:
    ValueError: when the ranks of the arguments do not match either case.
  """
  if user_vecs.ndim != 2 or item_table.ndim != 2:
    raise ValueError(f"dot_scores: user_vecs must be [B, d] and item_table [N, d], got "
                     f"{user_vecs.shape} and {item_table.shape}")
  cand = jnp.take(item_table, items, axis=0)
  if items.ndim == 1:
    scores = user_vecs @ cand.T
    if item_bias is not None:
      scores = scores + jnp.take(item_bias, items)[None, :]
  elif items.ndim == 2:
    if items.shape[0] != user_vecs.shape[0]:
      raise ValueError(f"dot_scores: per-query items {items.shape} do not match batch {user_vecs.shape[0]}")
    scores = jnp.einsum("bd,bcd->bc", user_vecs, cand)
    if item_bias is not None:
      scores = scores + jnp.take(item_bias, items)
  else:
    raise ValueError(f"dot_scores: items must be [C] or [B, C], got shape {items.shape}")
  return scores
