"""The recommender side of MeLON: which parameters an interaction involves, per-interaction losses and
gradients, and the selective (row-sparse) update.

MeLON paper 002, "Elapsed Time for Online Update": "given a user-item interaction, MeLON updates only the
parameters involved with the recommender's computation for the interaction". For a registered user model
(``mf-bpr``, ``mf-log``, ``ncf``) the parameters split into

* **user rows**: every embedding table of a module whose name holds ``user`` (``user_emb``, ``gmf_user``,
  ``mlp_user``) and the ``user_bias`` vector, indexed by the user;
* **item rows**: the same with ``item``, indexed by the item;
* **dense**: everything else (NCF's layers, MF's global bias), shared by every interaction.

An interaction ``x = (u, i)`` trained with ``N`` negatives involves user ``u``'s rows, the rows of its
``S = 1 + N`` item slots (positive first) and the dense parameters. :class:`Involved` holds those rows,
gathered (``[B, 1, ...]`` / ``[B, S, ...]``), so that the per-interaction loss is the registered model's own
loss evaluated on a copy of the module with ``num_users=1, num_items=S`` (:func:`local_loss`); its per
interaction gradients are one ``vmap`` of ``grad`` (Eq. 13's ``grad_{theta_m} L(x)``), and nothing here
depends on the number of users or items.

Aggregation (Eq. 5/13 write ``Theta - sum_x w_{x,m} grad_m L(x)``): a row touched by several interactions of
a batch takes the **mean** of their per-interaction updates ``Delta_x = theta - theta'_x`` (with the
forgetting rate, ``theta'_x = f_x theta - w_x g_x``), and a dense parameter the mean over the batch's
interactions, as the authors' code does ("averaged per unique row", "the average of per-sample new
weights"). Departure from the literal sum: with sigmoid rates in ``(0, 1)`` a dense parameter summed over 256
interactions would move 256 times as far as a row touched once.

:func:`rows_after` gives the rows of another set of interactions after an update, without materialising
the updated tables (an equality matrix between the two index sets: ``O(B^2)``, not ``O(users)``), which is
how the meta-loss reads ``Theta~`` (Eq. 15). :func:`apply` writes an update into the tables with one
scatter-add per leaf (padding rows are dropped, so every row no real interaction involves is
bit-identical).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp

from jaxrec.models import losses

Params = Any
USER, ITEM, DENSE = "user", "item", "dense"


def leaf_roles(params: Params) -> dict:
  """``{path: "user" | "item" | "dense"}`` for the flattened ``params["params"]`` (see module docstring)."""
  flat = flax.traverse_util.flatten_dict(params["params"])
  roles = {}
  for path, _ in flat.items():
    name = path[-1]
    owner = path[-2] if len(path) > 1 else ""
    if name == "user_bias" or (name == "embedding" and "user" in owner):
      roles[path] = USER
    elif name == "item_bias" or (name == "embedding" and "item" in owner):
      roles[path] = ITEM
    else:
      roles[path] = DENSE
  return roles


def split(params: Params, roles: dict) -> tuple[dict, dict, dict]:
  """``(user, item, dense)`` dicts of flat leaves."""
  flat = flax.traverse_util.flatten_dict(params["params"])
  out = ({}, {}, {})
  for path, v in flat.items():
    out[(USER, ITEM, DENSE).index(roles[path])][path] = v
  return out


def merge(user: dict, item: dict, dense: dict) -> Params:
  return {"params": flax.traverse_util.unflatten_dict({**user, **item, **dense})}


class Involved(NamedTuple):
  """The parameters ``B`` interactions involve, gathered.

  Attributes:
    user_idx: int32 ``[B]``; item_idx: int32 ``[B, S]`` (positive, then the negatives).
    user: ``{path: [B, 1, ...]}`` user rows; item: ``{path: [B, S, ...]}`` item rows.
    dense: ``{path: array}`` the shared parameters (not gathered).
    mask: bool ``[B]`` real interactions.
  """

  user_idx: jax.Array
  item_idx: jax.Array
  user: dict
  item: dict
  dense: dict
  mask: jax.Array


def gather(params: Params, roles: dict, users, positives, negatives, mask) -> Involved:
  """The rows of ``users`` [B] and item slots ``[positives; negatives]`` [B, S], plus the dense leaves."""
  user, item, dense = split(params, roles)
  items = jnp.concatenate([positives[:, None], negatives], axis=1).astype(jnp.int32)
  users = users.astype(jnp.int32)
  return Involved(users, items, {p: v[users][:, None] for p, v in user.items()},
                  {p: v[items] for p, v in item.items()}, dense, mask)


def node_embeddings(inv: Involved) -> tuple[jax.Array, jax.Array]:
  """``(e_u [B, Du], e_items [B, S, Di])``: a node's recommender embedding, all its rows concatenated
  (MeLON Definition 2 uses "the user (or item) embedding used in the recommender model")."""
  def cat(rows: dict, lead: int):
    return jnp.concatenate([v.reshape(v.shape[:lead] + (-1,)) for _, v in sorted(rows.items())], axis=-1)
  return cat(inv.user, 2)[:, 0], cat(inv.item, 2)


def table_embeddings(params: Params, roles: dict, kind: str, idx) -> jax.Array:
  """Rows ``idx`` (any shape) of every ``kind`` leaf, concatenated: ``idx.shape + (D,)``."""
  leaves = split(params, roles)[(USER, ITEM).index(kind)]
  return jnp.concatenate([v[idx].reshape(idx.shape + (-1,)) for _, v in sorted(leaves.items())], axis=-1)


def local_loss(module, loss: str) -> Callable:
  """``f(user_rows, item_rows, dense) -> scalar``: the model's ``loss`` on one interaction, read from its
  gathered rows (``{path: [1, ...]}``, ``{path: [S, ...]}``) by a copy of ``module`` with one user and ``S``
  items (the registered model's own ``score``)."""

  def f(user_rows, item_rows, dense):
    s = next(iter(item_rows.values())).shape[0]
    local = module.clone(num_users=1, num_items=s)
    params = merge(user_rows, item_rows, dense)
    scores = local.apply(params, {"user": jnp.zeros((1,), jnp.int32)}, jnp.arange(s, dtype=jnp.int32)[None],
                         method=local.score)
    return losses.candidate_loss(loss, scores)

  return f


class PerSample(NamedTuple):
  """Per-interaction loss ``[B]`` and gradients (same layout as :class:`Involved`'s rows, dense
  ``[B, ...]``)."""

  loss: jax.Array
  user: dict
  item: dict
  dense: dict


def per_sample(loss_fn: Callable, inv: Involved) -> PerSample:
  """``L(x)`` and ``grad_theta L(x)`` for every interaction (one ``vmap`` of ``value_and_grad``)."""
  vg = jax.value_and_grad(loss_fn, argnums=(0, 1, 2))
  loss, (gu, gi, gd) = jax.vmap(vg, in_axes=(0, 0, None))(inv.user, inv.item, inv.dense)
  return PerSample(loss, gu, gi, gd)


def batch_loss(loss_fn: Callable, inv: Involved) -> jax.Array:
  """Mean of ``L(x)`` over the real interactions."""
  per = jax.vmap(loss_fn, in_axes=(0, 0, None))(inv.user, inv.item, inv.dense)
  return losses.masked_mean(per, inv.mask)


def _counts(idx: jax.Array, mask: jax.Array) -> jax.Array:
  """For each flat entry: how many real entries share its index (>= 1 on real entries)."""
  same = (idx[:, None] == idx[None, :]) & mask[None, :]
  return jnp.maximum(same.sum(1), 1)


def _flat(idx, mask, delta):
  """Flattens ``[B, K, ...]`` slots to ``[B*K]`` entries (mask broadcast) and ``[B*K, F]`` deltas."""
  b, k = idx.shape[:2]
  m = jnp.broadcast_to(mask[:, None], (b, k)).reshape(-1)
  return idx.reshape(-1), m, delta.reshape((b * k, -1))


def _mean_deltas(idx, mask, delta):
  """Per flat entry, its delta divided by the count of its index (zero on padding)."""
  fi, fm, fd = _flat(idx, mask, delta)
  scale = jnp.where(fm, 1.0 / _counts(fi, fm).astype(delta.dtype), 0.0)
  return fi, fm, fd * scale[:, None]


def rows_after(query_idx: jax.Array, rows: jax.Array, upd_idx: jax.Array, upd_mask: jax.Array,
               delta: jax.Array) -> jax.Array:
  """Rows ``rows`` (gathered at ``query_idx`` ``[Q1, Q2]``, shape ``[Q1, Q2, ...]``) after the update
  ``delta`` (``[B, K, ...]`` at ``upd_idx`` ``[B, K]``, mean-aggregated per row)."""
  fi, _, fd = _mean_deltas(upd_idx, upd_mask, delta)
  q = query_idx.reshape(-1)
  hit = (q[:, None] == fi[None, :]).astype(fd.dtype)  # [Q, B*K]; padding entries have zero delta
  return rows - (hit @ fd).reshape(rows.shape)


def dense_after(dense: dict, mask: jax.Array, delta: dict) -> dict:
  """Dense leaves minus the mean of their per-interaction deltas (``[B, ...]``) over real interactions."""
  m = mask.astype(jnp.float32)
  n = jnp.maximum(m.sum(), 1.0)
  return {p: v - jnp.tensordot(m, delta[p], axes=1) / n for p, v in dense.items()}


def involved_after(inv: Involved, upd: Involved, delta: "PerSample") -> Involved:
  """``inv``'s parameters after the update ``delta`` computed on the interactions ``upd`` (Eq. 14's
  ``Theta~`` read at the rows ``inv`` involves)."""
  user = {p: rows_after(inv.user_idx[:, None], v, upd.user_idx[:, None], upd.mask, delta.user[p])
          for p, v in inv.user.items()}
  item = {p: rows_after(inv.item_idx, v, upd.item_idx, upd.mask, delta.item[p]) for p, v in inv.item.items()}
  return inv._replace(user=user, item=item, dense=dense_after(inv.dense, upd.mask, delta.dense))


def apply(params: Params, roles: dict, upd: Involved, delta: "PerSample") -> Params:
  """The tables after the update ``delta`` (per-interaction ``Theta - Theta'_x``) on the interactions
  ``upd``: one scatter-add per row leaf (padding dropped), the batch mean for dense leaves."""
  user, item, dense = split(params, roles)

  def scatter(table, idx, d):
    fi, fm, fd = _mean_deltas(idx, upd.mask, d)
    fi = jnp.where(fm, fi, table.shape[0])  # out of bounds: dropped
    return table.at[fi].add(-fd.reshape((fi.shape[0],) + table.shape[1:]), mode="drop")

  user = {p: scatter(v, upd.user_idx[:, None], delta.user[p]) for p, v in user.items()}
  item = {p: scatter(v, upd.item_idx, delta.item[p]) for p, v in item.items()}
  return merge(user, item, dense_after(dense, upd.mask, delta.dense))


def row_mean(idx: jax.Array, mask: jax.Array, values: jax.Array) -> jax.Array:
  """``values`` ``[B, K, ...]`` at rows ``idx`` ``[B, K]`` replaced by their mean over the real entries
  that share the row (MeLON_P's parameter-level gradient)."""
  fi, fm, fv = _flat(idx, mask, values)
  same = ((fi[:, None] == fi[None, :]) & fm[None, :]).astype(fv.dtype)
  return ((same @ fv) / jnp.maximum(same.sum(1, keepdims=True), 1.0)).reshape(values.shape)
