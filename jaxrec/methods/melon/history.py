"""What MeLON remembers of the stream: each node's last interaction and a sample of its neighbours.

* ``B_last`` (Appendix, "Online Recommender Training", step 1): "for the users and items in the new
  mini-batch B_t ... their last interactions before the current interaction". For every interaction
  ``(u, i)`` of the batch, :func:`b_last` returns ``(u, last_item[u])`` and ``(last_user[i], i)`` (``2B``
  rows, masked where the node has no past). The tables are written by :func:`observe` *after* the batch
  is used,
  so ``B_last`` only ever holds interactions of earlier batches (never the batch itself, never the
  future). The authors' code draws them from the whole training graph, later interactions included.
* Neighbours (Definition 1, ``H_user(x)`` / ``H_item(x)``: the items of ``u`` / users of ``i`` before ``t``;
  "we randomly sample 10 neighbors"): a per-node reservoir of ``K`` slots (Vitter's Algorithm R), so the
  slots are a uniform sample of the node's whole past, as the authors sample uniformly over the history.
  Every interaction of a batch reads the reservoirs as they were before the batch (strictly earlier
  interactions only; an earlier interaction of the *same* batch is not a neighbour yet).

Everything is fixed-shape: ``[num_users, K]`` / ``[num_items, K]`` int32 slots with counts, updated in a
jitted step with scatters whose cost is ``O(B K)`` plus a ``[B, B]`` comparison (duplicates of a node in a
batch are inserted in arrival order, as the sequential algorithm would).
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class History:
  """Per-node memory (all int32).

  Attributes:
    last_item: ``[U]`` the user's last item (-1: none yet); last_user: ``[I]`` the item's last user.
    user_nbrs, user_seen: ``[U, K]`` sampled past items of each user, ``[U]`` its interactions so far.
    item_nbrs, item_seen: ``[I, K]`` sampled past users of each item, ``[I]`` its interactions so far.
  """

  last_item: jax.Array
  last_user: jax.Array
  user_nbrs: jax.Array
  user_seen: jax.Array
  item_nbrs: jax.Array
  item_seen: jax.Array

  @property
  def num_neighbours(self) -> int:
    return self.user_nbrs.shape[1]


def empty(num_users: int, num_items: int, k: int) -> History:
  return History(last_item=jnp.full((num_users,), -1, jnp.int32),
                 last_user=jnp.full((num_items,), -1, jnp.int32),
                 user_nbrs=jnp.zeros((num_users, k), jnp.int32), user_seen=jnp.zeros((num_users,), jnp.int32),
                 item_nbrs=jnp.zeros((num_items, k), jnp.int32), item_seen=jnp.zeros((num_items,), jnp.int32))


def neighbours(nbrs: jax.Array, seen: jax.Array, idx: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(ids [..., K], mask [..., K])`` of nodes ``idx`` (any shape)."""
  k = nbrs.shape[1]
  return nbrs[idx], jnp.arange(k) < jnp.minimum(seen[idx], k)[..., None]


def b_last(hist: History, users: jax.Array, items: jax.Array, mask: jax.Array) -> dict:
  """``B_last``: ``{"user" [2B], "positive" [2B], "mask" [2B]}`` (see module docstring)."""
  prev_item = hist.last_item[users]
  prev_user = hist.last_user[items]
  return {"user": jnp.concatenate([users, jnp.maximum(prev_user, 0)]).astype(jnp.int32),
          "positive": jnp.concatenate([jnp.maximum(prev_item, 0), items]).astype(jnp.int32),
          "mask": jnp.concatenate([mask & (prev_item >= 0), mask & (prev_user >= 0)])}


def _insert(nbrs, seen, node, other, mask, rng):
  """Algorithm R for every real ``(node, other)`` pair, in arrival order."""
  b = node.shape[0]
  k = nbrs.shape[1]
  same = (node[:, None] == node[None, :]) & mask[None, :]
  earlier = jnp.tril(same, -1).sum(1)  # real rows of this node before row b in the batch
  n = seen[node] + earlier  # 0-based arrival index among the node's interactions
  draw = jnp.floor(jax.random.uniform(rng, (b,)) * (n + 1).astype(jnp.float32)).astype(jnp.int32)
  slot = jnp.where(n < k, n, jnp.minimum(draw, n))
  keep = mask & (slot < k)
  # A later row of the same node into the same slot overwrites this one: drop this one.
  later = jnp.triu((node[:, None] == node[None, :]) & (slot[:, None] == slot[None, :]) & keep[None, :], 1)
  keep = keep & ~later.any(1)
  rows = jnp.where(keep, node, nbrs.shape[0])
  nbrs = nbrs.at[rows, slot].set(other, mode="drop")
  count = jnp.where(mask, node, seen.shape[0])
  return nbrs, seen.at[count].add(1, mode="drop")


def observe(hist: History, users: jax.Array, items: jax.Array, mask: jax.Array, rng: jax.Array) -> History:
  """The memory after the batch's real interactions (in arrival order: the last one of a node wins)."""
  ku, ki = jax.random.split(rng)

  def last(table, node, other):
    later_same = jnp.triu((node[:, None] == node[None, :]) & mask[None, :], 1).any(1)
    rows = jnp.where(mask & ~later_same, node, table.shape[0])  # the latest real row of each node
    return table.at[rows].set(other, mode="drop")

  user_nbrs, user_seen = _insert(hist.user_nbrs, hist.user_seen, users, items, mask, ku)
  item_nbrs, item_seen = _insert(hist.item_nbrs, hist.item_seen, items, users, mask, ki)
  return History(last_item=last(hist.last_item, users, items), last_user=last(hist.last_user, items, users),
                 user_nbrs=user_nbrs, user_seen=user_seen, item_nbrs=item_nbrs, item_seen=item_seen)
