"""2TS evaluation: online adaptation of each user's state over the later interactions, no gradient step.

Paper 000, Section 5 (chronological 70/10/20 split): after training, the cells keep adapting each user's
state as the user's later (validation, then test) interactions arrive; the query scoring an interaction
depends only on earlier interactions. A user keeps the group (and cell) given by its training count. The
per-step movements ``||h_{t+1} - h_t||`` are returned for Figure 4.

Departures from a direct reading (cost only, same numbers): users are rolled out in length buckets
(:func:`jaxrec.methods.two_time_scale.batches.length_buckets`: ``batch_size`` users of similar length,
padded to the next power of two of the longest) instead of all padded to the longest sequence, states
stay on device, and only the sequences that are scored are rolled out (the validation rows during model
selection, validation + test at the end; validation rows precede test rows in time, so the validation
queries are the same either way).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.data import order as order_lib
from jaxrec.data.log import InteractionLog, concat_logs
from jaxrec.methods.two_time_scale import batches as batches_lib
from jaxrec.methods.two_time_scale import model as model_lib
from jaxrec.methods.two_time_scale.model import Params, TwoTimeScaleConfig


@dataclasses.dataclass(frozen=True)
class EvalSequences:
  """Later (valid then test) interactions per user, padded and time-ordered (numpy).

  Attributes:
    user: int32 ``[B]`` users with at least one later interaction.
    items, mask: ``[B, L]`` their later items in time order, left-aligned.
    row: int64 ``[B, L]`` index of each entry in ``concat_logs(later_logs)`` (-1 on padding).
    num_rows: number of rows of ``concat_logs(later_logs)``.
  """

  user: np.ndarray
  items: np.ndarray
  mask: np.ndarray
  row: np.ndarray
  num_rows: int


def prepare_eval_sequences(later_logs: Sequence[InteractionLog]) -> EvalSequences:
  """Pads each user's later interactions (e.g. ``[valid, test]``) into ``[B, L]`` time-ordered rows.

  Ties in time keep the order of ``concat_logs(later_logs)`` (valid rows before test rows), as
  :func:`jaxrec.data.order.user_positions` orders them.
  """
  log = concat_logs(list(later_logs))
  n = len(log)
  up = order_lib.user_positions(log.user, log.timestamp)
  users = np.flatnonzero(up.counts)
  row_of = np.zeros(up.counts.shape[0], np.int64)
  row_of[users] = np.arange(users.shape[0])
  user_row = row_of[up.user]
  length = int(up.counts.max()) if n else 1
  items = np.zeros((users.shape[0], length), np.int32)
  mask = np.zeros((users.shape[0], length), bool)
  row = np.full((users.shape[0], length), -1, np.int64)
  items[user_row, up.position] = log.item[up.order]
  mask[user_row, up.position] = True
  row[user_row, up.position] = up.order
  return EvalSequences(user=users.astype(np.int32), items=items, mask=mask, row=row, num_rows=n)


def _plan(lengths: np.ndarray, width: int, batch_size: int, bucketed: bool):
  """``(rows, padded length)`` per device call: length buckets, or consecutive rows at full width."""
  if bucketed:
    return batches_lib.length_buckets(lengths, batch_size, width)
  n = lengths.shape[0]
  return [(np.arange(lo, min(lo + batch_size, n)), width) for lo in range(0, n, batch_size)]


def _fill(rows: np.ndarray, batch_size: int) -> np.ndarray:
  """``rows`` repeated up to ``batch_size`` (static shapes); the copies' outputs are dropped."""
  return np.concatenate([rows, np.full(batch_size - rows.shape[0], rows[0], rows.dtype)])


def padded_steps(seqs: EvalSequences, batch_size: int = 256, bucketed: bool = True) -> tuple[int, int]:
  """``(real steps, computed steps)`` of :func:`eval_query_vectors` on ``seqs`` (the real-step fraction)."""
  lengths = seqs.mask.sum(axis=1)
  plan = _plan(lengths, seqs.mask.shape[1], batch_size, bucketed)
  return int(lengths.sum()), int(sum(batch_size * width for _, width in plan))


@functools.partial(jax.jit, static_argnums=(0,))
def _table_and_prev(cfg, params, last_item, item_features):
  table = model_lib.item_table(cfg, params, item_features)
  start = params["x_start"] if cfg.plus else jnp.zeros((table.shape[1],), table.dtype)
  return table, jnp.where((last_item >= 0)[:, None], table[jnp.maximum(last_item, 0)], start)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _final_states(cfg, params, group_batch, group, item_features):
  return model_lib.group_rollout(cfg, params, group_batch, group, item_features)[2]


def user_states(cfg: TwoTimeScaleConfig, params: Params, data: batches_lib.TwoTimeScaleData,
                item_features: Optional[jax.Array] = None, batch_size: int = 256,
                bucketed: bool = True) -> dict:
  """Every user's state at the end of the training period (device arrays).

  Inactive users: ``psi`` run through cell 1 over their training sequence (new users: ``psi``);
  active users: ``phi_u`` (``psi_2`` for 2-GRU) run through cell 2 over their last ``K`` interactions;
  CCF: ``phi_u``. ``x_prev`` is the user's last training item (``x_start`` / zero when none). The
  groups are run in static ``[batch_size, L]`` calls, ``L`` bucketed by length.

  Returns:
    ``{"h": [U, d], "x_prev": [U, d], "active": bool [U]}``.
  """
  static = cfg.static()
  _, x_prev = _table_and_prev(static, params, jnp.asarray(data.last_item), item_features)
  out = {"x_prev": x_prev, "active": jnp.asarray(data.active)}
  if not cfg.has_cells:
    return dict(out, h=params["user"])
  h = jnp.broadcast_to(params["psi"], (data.num_users, x_prev.shape[1]))
  for group in ("inactive", "active"):
    g = data.group(group)
    lengths = g["mask"].sum(axis=1)
    for rows, width in _plan(lengths, g["mask"].shape[1], batch_size, bucketed):
      idx = _fill(rows, batch_size)
      batch = {k: v[idx] for k, v in g.items()}
      batch["items"], batch["mask"] = batch["items"][:, :width], batch["mask"][:, :width]
      h_final = _final_states(static, params, batch, group, item_features)
      keep = np.flatnonzero(lengths[rows] > 0)
      if keep.size:
        h = h.at[g["user"][rows[keep]]].set(h_final[keep])
  return dict(out, h=h)


def eval_rollout(cfg: TwoTimeScaleConfig, params: Params, table: jax.Array, state: Mapping[str, jax.Array],
                 items: jax.Array, mask: jax.Array):
  """Online adaptation over later interactions, no gradient step (Section 5, Figure 4).

  Each user's state is advanced by its group's cell as its later interactions arrive, in time order;
  the query for step ``t`` uses only the state before consuming ``items[:, t]``.

  Args:
    cfg: configuration.
    params: parameter pytree.
    table: ``[I, d]`` item representation table (:func:`.model.item_table`).
    state: ``{"h": [B, d], "x_prev": [B, d], "active": bool [B]}`` (rows of :func:`user_states`).
    items, mask: ``[B, L]`` later interactions in time order.

  Returns:
    ``(queries [B, L, d], moves [B, L], new_state)``; ``queries`` are the ScoreFn ``"user_vec"`` of each
    interaction (``W^T [h ; x_prev]`` for 2TS-Plus), ``moves[b, t] = ||h_{t+1} - h_t||`` (0 on padding).
  """
  items = jnp.asarray(items)
  mask = jnp.asarray(mask)
  xs = jnp.take(table, items, axis=0)
  if not cfg.has_cells:
    qs = jnp.broadcast_to(state["h"][:, None, :], xs.shape)
    return qs, jnp.zeros(mask.shape, table.dtype), dict(state)
  active = jnp.asarray(state["active"])

  def cell_fn(h, x):
    h_act = model_lib.cell_step(params, "cell_act", h, x)
    return jnp.where(active[:, None], h_act, model_lib.cell_step(params, "cell_in", h, x))

  qs, moves, h, xp = model_lib.rollout(cfg, params, cell_fn, state["h"], state["x_prev"], xs, mask,
                                       with_moves=True)
  return qs, moves, {"h": h, "x_prev": xp, "active": active}


@functools.partial(jax.jit, static_argnums=(0,))
def _rollout_call(cfg, params, table, states, users, items, mask):
  state = jax.tree.map(lambda v: jnp.take(v, users, axis=0), states)
  qs, moves, _ = eval_rollout(cfg, params, table, state, items, mask)
  return qs.reshape(-1, qs.shape[-1]), moves.reshape(-1)


@functools.partial(jax.jit, static_argnums=(0,))
def _scatter_rows(num_rows, rows, qs, moves):
  user_vec = jnp.zeros((num_rows, qs.shape[-1]), qs.dtype).at[rows].set(qs, mode="drop")
  move = jnp.zeros((num_rows,), moves.dtype).at[rows].set(moves, mode="drop")
  return user_vec, move


@dataclasses.dataclass(frozen=True)
class EvalQueries:
  """Per-row outputs of :func:`eval_query_vectors`, aligned with ``concat_logs(later_logs)`` (numpy).

  Attributes:
    user_vec: float32 ``[n, d]`` the query vector scoring each later interaction.
    move: float32 ``[n]`` ``||h_{t+1} - h_t||`` when the user consumes the interaction (Figure 4).
    seen: int64 ``[n]`` the number of the user's later interactions before this one.
    active: bool ``[n]`` whether the user is in the active group.
  """

  user_vec: np.ndarray
  move: np.ndarray
  seen: np.ndarray
  active: np.ndarray


def eval_query_vectors(cfg: TwoTimeScaleConfig, params: Params, data: batches_lib.TwoTimeScaleData,
                       seqs: EvalSequences, item_features: Optional[jax.Array] = None,
                       batch_size: int = 256, bucketed: bool = True) -> EvalQueries:
  """Query vectors for every later interaction of ``seqs``, batched over users.

  Users go in static ``[batch_size, L]`` calls: with ``bucketed`` (default) users of similar length, ``L``
  the next power of two of the call's longest sequence; otherwise consecutive users at full width (the
  reference). States stay on device; the per-row outputs are scattered on device and fetched once.
  """
  static = cfg.static()
  table, _ = _table_and_prev(static, params, jnp.asarray(data.last_item), item_features)
  states = user_states(cfg, params, data, item_features, batch_size, bucketed)
  lengths = seqs.mask.sum(axis=1)
  qs_all, mv_all, rows_all = [], [], []
  for rows, width in _plan(lengths, seqs.mask.shape[1], batch_size, bucketed):
    idx = _fill(rows, batch_size)
    mask = seqs.mask[idx, :width].copy()
    mask[rows.shape[0]:] = False
    qs, mv = _rollout_call(static, params, table, states, jnp.asarray(seqs.user[idx]),
                           seqs.items[idx, :width], mask)
    qs_all.append(qs)
    mv_all.append(mv)
    r = np.where(mask, seqs.row[idx, :width], seqs.num_rows)  # padding -> out of range, dropped
    rows_all.append(r.reshape(-1))
  d = table.shape[1]
  if qs_all:
    user_vec, move = _scatter_rows(seqs.num_rows, np.concatenate(rows_all), jnp.concatenate(qs_all),
                                   jnp.concatenate(mv_all))
    user_vec, move = jax.device_get((user_vec, move))
  else:
    user_vec, move = np.zeros((seqs.num_rows, d), np.float32), np.zeros(seqs.num_rows, np.float32)
  m = seqs.mask
  seen = np.zeros(seqs.num_rows, np.int64)
  active = np.zeros(seqs.num_rows, bool)
  seen[seqs.row[m]] = np.broadcast_to(np.arange(m.shape[1]), m.shape)[m]
  active[seqs.row[m]] = np.broadcast_to(data.active[seqs.user][:, None], m.shape)[m]
  return EvalQueries(user_vec=np.asarray(user_vec), move=np.asarray(move), seen=seen, active=active)
