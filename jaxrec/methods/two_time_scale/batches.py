"""2TS training data: the stage-1 pairs, the two stage-2 groups, length buckets and epoch batches.

Stage 1 (CCF, Eq. 10) ignores the order of the interactions and trains on every (user, item) pair.
Stage 2 (Eq. 11, 12) needs each user's training interactions in time order (ties in arrival order,
:func:`jaxrec.data.order.user_positions`): inactive users (``T <= t*``) contribute their whole
sequence, active users (``T > t*``) their last ``K`` interactions.

Batch formats (numpy; item features, when used, ride along as ``"item_features"``)::

  stage 1:  {"user": int32 [B], "item": int32 [B]}
  stage 2:  {"inactive": {"items": int32 [B_in, L], "mask": bool [B_in, L], "prev": int32 [B_in]},
             "active":   {"items": int32 [B_act, K], "mask": bool [B_act, K], "prev": int32 [B_act],
                          "user": int32 [B_act]}}      (prev = previous item or -1; L <= t*)
            either group may be absent (one-group steps, see :func:`stage_batches`)
  single-stage: stage-2 batch with both groups (L = t*) plus {"pairs": stage-1 batch}

Departure from the paper (an implementation choice, same objective): a stage-2 step carries one group
of users of similar length, padded to the next power of two of its longest sequence
(:func:`bucket_width`), instead of all users padded to ``t*``; every group row is visited once per epoch.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Optional

import jax
import numpy as np

from jaxrec.data import order as order_lib
from jaxrec.data import shards as shards_lib
from jaxrec.data.log import InteractionLog
from jaxrec.data.shards import ShardedLog
from jaxrec.methods.two_time_scale.model import TwoTimeScaleConfig

STAGES = ("stage1", "stage2", "single")


@dataclasses.dataclass(frozen=True)
class TwoTimeScaleData:
  """Static-shape training arrays built by :func:`prepare_training_data` (numpy).

  Attributes:
    num_users, num_items: index-space sizes.
    pair_user, pair_item: int32 ``[n]`` stage-1 pairs (every training interaction).
    counts: int64 ``[U]`` training interactions per user.
    active: bool ``[U]`` ``counts > t_star``.
    last_item: int32 ``[U]`` the user's last training item (-1: none).
    in_user: int32 ``[n_in]`` inactive users with >= 1 training interaction.
    in_items, in_mask: ``[n_in, max(t_star, 1)]`` their full sequences, left-aligned, time-ordered.
    in_prev: int32 ``[n_in]`` all -1 (the sequences start at the user's first interaction).
    act_user: int32 ``[n_act]`` active users.
    act_items, act_mask: ``[n_act, K]`` their last ``K`` training interactions, time-ordered.
    act_prev: int32 ``[n_act]`` the training item just before the window (-1: none).
  """

  num_users: int
  num_items: int
  pair_user: np.ndarray
  pair_item: np.ndarray
  counts: np.ndarray
  active: np.ndarray
  last_item: np.ndarray
  in_user: np.ndarray
  in_items: np.ndarray
  in_mask: np.ndarray
  in_prev: np.ndarray
  act_user: np.ndarray
  act_items: np.ndarray
  act_mask: np.ndarray
  act_prev: np.ndarray

  def group(self, group: str, rows: Optional[np.ndarray] = None) -> dict:
    """The ``group`` batch dict of the given rows (all rows when ``None``)."""
    if group == "inactive":
      out = {"items": self.in_items, "mask": self.in_mask, "prev": self.in_prev, "user": self.in_user}
    else:
      out = {"items": self.act_items, "mask": self.act_mask, "prev": self.act_prev, "user": self.act_user}
    return out if rows is None else {k: v[rows] for k, v in out.items()}


def _pad_group(users, items, mask, prev):
  """An empty group gets one fully masked row so that static-shape batches can still be drawn."""
  if users.shape[0]:
    return users, items, mask, prev
  return (np.zeros(1, np.int32), np.zeros((1, items.shape[1]), np.int32),
          np.zeros((1, items.shape[1]), bool), np.full(1, -1, np.int32))


def _groups(log: InteractionLog, t_star: int, k: int) -> dict:
  """:class:`TwoTimeScaleData`'s fields for ``log``, empty groups left empty (no padding row)."""
  up = order_lib.user_positions(log.user, log.timestamp, log.num_users)
  u, it, pos = up.user, log.item[up.order].astype(np.int32), up.position
  num_users, counts, start = log.num_users, up.counts, up.starts
  active = counts > t_star
  has = counts > 0
  last_item = np.full(num_users, -1, np.int32)
  last_item[has] = it[start[has] + counts[has] - 1]

  in_user = np.flatnonzero(~active & has).astype(np.int32)
  row_of = np.full(num_users, -1, np.int64)
  row_of[in_user] = np.arange(in_user.shape[0])
  t_len = max(t_star, 1)
  in_items = np.zeros((in_user.shape[0], t_len), np.int32)
  in_mask = np.zeros((in_user.shape[0], t_len), bool)
  sel = ~active[u]
  in_items[row_of[u[sel]], pos[sel]] = it[sel]
  in_mask[row_of[u[sel]], pos[sel]] = True
  in_prev = np.full(in_user.shape[0], -1, np.int32)

  act_user = np.flatnonzero(active).astype(np.int32)
  row_of[:] = -1
  row_of[act_user] = np.arange(act_user.shape[0])
  off = counts - np.minimum(counts, k)
  act_items = np.zeros((act_user.shape[0], k), np.int32)
  act_mask = np.zeros((act_user.shape[0], k), bool)
  sel = active[u] & (pos >= off[u])
  col = pos[sel] - off[u[sel]]
  act_items[row_of[u[sel]], col] = it[sel]
  act_mask[row_of[u[sel]], col] = True
  a_off = off[act_user]
  act_prev = np.where(a_off > 0, it[np.maximum(start[act_user] + a_off - 1, 0)], -1).astype(np.int32)
  return dict(num_users=num_users, num_items=log.num_items, pair_user=u.astype(np.int32), pair_item=it,
              counts=counts, active=active, last_item=last_item,
              in_user=in_user, in_items=in_items, in_mask=in_mask, in_prev=in_prev, act_user=act_user,
              act_items=act_items, act_mask=act_mask, act_prev=act_prev)


def _padded(fields: dict) -> TwoTimeScaleData:
  f = dict(fields)
  f["in_user"], f["in_items"], f["in_mask"], f["in_prev"] = _pad_group(
      f["in_user"], f["in_items"], f["in_mask"], f["in_prev"])
  f["act_user"], f["act_items"], f["act_mask"], f["act_prev"] = _pad_group(
      f["act_user"], f["act_items"], f["act_mask"], f["act_prev"])
  return TwoTimeScaleData(**f)


def prepare_training_data(log: InteractionLog, t_star: int, k: int) -> TwoTimeScaleData:
  """Builds the stage-1 pairs and the two padded stage-2 groups from the training log (vectorised).

  Rows are ordered per user by time, ties in arrival order (:func:`jaxrec.data.order.user_positions`).
  An empty group is represented by a single fully masked row (it contributes nothing to the loss).
  """
  return _padded(_groups(log, t_star, k))


_GROUP_FIELDS = ("in_user", "in_items", "in_mask", "in_prev", "act_user", "act_items", "act_mask",
                 "act_prev")


def prepare_sharded_training_data(log: ShardedLog, t_star: int, k: int, *,
                                  max_rows: int = 8_000_000) -> TwoTimeScaleData:
  """:func:`prepare_training_data` for a log on disk (:mod:`jaxrec.data.shards`), in bounded memory.

  The stage-2 groups are built per block of whole users (:func:`jaxrec.data.shards.user_blocks`, at
  most ``max_rows`` rows in memory at a time; each user's rows in arrival order, so the time order and
  its ties are those of the whole log) and concatenated: the same groups, user for user, as
  :func:`prepare_training_data` on the whole log in memory (tested). The stage-1 pairs are not held:
  ``pair_user`` and ``pair_item`` are empty, and stage 1 streams its batches from the shards
  (:func:`jaxrec.data.shards.epoch_batches`; :func:`.training.train` does this for a ``ShardedLog``).
  """
  counts = shards_lib.user_counts(log)
  parts = [_groups(block, t_star, k) for block in shards_lib.user_blocks(log, max_rows, counts)]
  out = {f: np.concatenate([p[f] for p in parts]) for f in _GROUP_FIELDS}
  last_item = np.full(log.num_users, -1, np.int32)
  for p in parts:
    np.maximum(last_item, p["last_item"], out=last_item)
  return _padded(dict(out, num_users=log.num_users, num_items=log.num_items,
                      pair_user=np.zeros(0, np.int32), pair_item=np.zeros(0, np.int32), counts=counts,
                      active=counts > t_star, last_item=last_item))


def _epoch_order(rng: np.random.Generator, n: int, batch: int, steps: int) -> np.ndarray:
  """``[steps, batch]`` indices: concatenated permutations of ``range(n)`` (cycled when short)."""
  need = steps * batch
  reps = -(-need // n)
  order = np.concatenate([rng.permutation(n) for _ in range(reps)])[:need]
  return order.reshape(steps, batch)


def steps_per_epoch(cfg: TwoTimeScaleConfig, data: TwoTimeScaleData, stage: str) -> int:
  """Steps of one epoch: pairs / ``batch_stage1`` (stage 1, single); stage 2: the inactive group's batches
  plus the active group's batches (each group visited once, one group per step)."""
  if stage == "stage2":
    n_in = -(-data.in_user.shape[0] // cfg.batch_inactive)
    n_act = -(-data.act_user.shape[0] // cfg.batch_active)
    return max(n_in, n_act) if cfg.stage2_steps == "mixed" else n_in + n_act
  return max(1, -(-data.pair_user.shape[0] // cfg.batch_stage1))


def bucket_width(length: int, width: int) -> int:
  """Padded length of a batch whose longest sequence has ``length`` steps: the next power of two,
  capped at ``width``, so a group has at most ``ceil(log2(width)) + 1`` batch shapes (and compiles)."""
  return min(width, 1 << max(int(length) - 1, 0).bit_length())


def length_buckets(lengths: np.ndarray, batch: int, width: int,
                   rng: Optional[np.random.Generator] = None) -> list[tuple[np.ndarray, int]]:
  """``(rows, padded length)`` per batch: rows stably sorted by length (with ``rng``: a fresh permutation
  first, so equal lengths come in random order), cut into ``batch`` consecutive rows, each batch padded
  to :func:`bucket_width` of its longest row. Shared by the stage-2 batches and the evaluation rollout."""
  lengths = np.asarray(lengths)
  perm = rng.permutation(lengths.shape[0]) if rng is not None else np.arange(lengths.shape[0])
  order = perm[np.argsort(lengths[perm], kind="stable")]
  return [(rows, bucket_width(lengths[rows].max(), width))
          for rows in np.split(order, range(batch, order.shape[0], batch)) if rows.size]


def _group_batch(data: TwoTimeScaleData, group: str, rows: np.ndarray, length: int, batch: int) -> dict:
  """Rows of ``group`` trimmed to ``length`` steps (they are left-aligned) and filled up to ``batch`` rows
  with fully masked ones (item 0, prev -1, user 0), which add nothing to the loss."""
  out = {k: v[rows] for k, v in data.group(group).items()}
  out["items"], out["mask"] = out["items"][:, :length], out["mask"][:, :length]
  fill = batch - rows.shape[0]
  if fill:
    pad = {"items": np.zeros((fill, length), np.int32), "mask": np.zeros((fill, length), bool),
           "prev": np.full(fill, -1, np.int32), "user": np.zeros(fill, np.int32)}
    out = {k: np.concatenate([v, pad[k].astype(v.dtype)]) for k, v in out.items()}
  return out


def stage_batches(cfg: TwoTimeScaleConfig, data: TwoTimeScaleData, stage: str, epoch: int,
                  item_features: Optional[jax.Array] = None) -> Iterator[dict]:
  """The static-shape batches of one epoch of ``stage`` (module docstring), in an order fixed by
  ``(cfg.seed, stage, epoch)`` alone, as ``jaxrec.train.loop`` needs for exact resumption.

  * stage 1: a fresh permutation of the pairs; the last batch is filled from the next permutation.
  * stage 2: each group's rows are visited once per epoch, bucketed by length (:func:`length_buckets`):
    a batch is ``batch_inactive`` (``batch_active``) rows of similar length padded to
    :func:`bucket_width` of its longest one, the group's last batch filled with fully masked rows. A step
    carries ONE group (``{"inactive": ...}`` or ``{"active": ...}``); the batches of both groups are
    shuffled together. Over an epoch this takes every step of Eq. 11 + Eq. 12 once, each group's loss
    being a mean over its batch's real steps. With ``cfg.stage2_steps == "mixed"`` every step carries a
    batch of each group (``L_in + L_act`` per step), the smaller group's batches cycled.
  * single stage: a permutation of the pairs per step, with full-width batches of both groups cycled
    alongside (the smaller numbers of group rows are repeated to match the pair steps).
  """
  rng = np.random.default_rng([cfg.seed, STAGES.index(stage), epoch])
  extra = {} if item_features is None else {"item_features": item_features}
  steps = steps_per_epoch(cfg, data, stage)
  n_pairs = data.pair_user.shape[0]
  if stage == "stage1":
    for idx in _epoch_order(rng, n_pairs, cfg.batch_stage1, steps):
      yield {"user": data.pair_user[idx], "item": data.pair_item[idx], **extra}
    return
  if stage == "stage2":
    sizes = {"inactive": cfg.batch_inactive, "active": cfg.batch_active}
    plans = {}
    for group, mask in (("inactive", data.in_mask), ("active", data.act_mask)):
      plans[group] = [(group, rows, length)
                      for rows, length in length_buckets(mask.sum(axis=1), sizes[group], mask.shape[1], rng)]
    if cfg.stage2_steps == "mixed":
      # Every step: one batch of each group; each group's batches in a random order, the shorter list
      # cycled (fresh order each cycle) up to the longer one's length.
      order = {g: _epoch_order(rng, len(plan), 1, steps)[:, 0] for g, plan in plans.items()}
      for s in range(steps):
        out = {}
        for g, plan in plans.items():
          _, rows, length = plan[order[g][s]]
          out[g] = _group_batch(data, g, rows, length, sizes[g])
        yield {**out, **extra}
      return
    plan = plans["inactive"] + plans["active"]
    for i in rng.permutation(len(plan)):
      group, rows, length = plan[i]
      yield {group: _group_batch(data, group, rows, length, sizes[group]), **extra}
    return
  o_in = _epoch_order(rng, data.in_user.shape[0], cfg.batch_inactive, steps)
  o_act = _epoch_order(rng, data.act_user.shape[0], cfg.batch_active, steps)
  o_pair = _epoch_order(rng, n_pairs, cfg.batch_stage1, steps)
  for s in range(steps):
    yield {"inactive": data.group("inactive", o_in[s]), "active": data.group("active", o_act[s]),
           "pairs": {"user": data.pair_user[o_pair[s]], "item": data.pair_item[o_pair[s]]}, **extra}
