"""Evaluation queries: who is asked, which item is the positive, and which items are excluded.

A :class:`Queries` holds one row per query (``user``, ``positive``, ``time``, optional model ``features``)
plus the exclusion set as per-user CSR: the items each user interacted with in the *known* logs (by
default the training log, and training + validation at test time). Full ranking removes these known
positives from the candidates (the common "filtered" protocol); the sampled protocol never draws them as
negatives. The query's own positive is never excluded, even when it also appears in a known log.

Optional ``group`` ids mark queries that share one ground-truth set (several test items of a user):
metrics are then aggregated per group (``Recall@K = |top-K ∩ truth| / |truth|``, see
:mod:`jaxrec.eval.metrics`).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from jaxrec.data.log import DataError, InteractionLog, concat_logs


@dataclasses.dataclass(frozen=True)
class Queries:
  """Evaluation queries with their exclusion sets.

  Attributes:
    user: int32 ``[Q]`` user of each query.
    positive: int32 ``[Q]`` the held-out item to rank.
    time: int64 ``[Q]`` timestamp of the held-out interaction.
    known_indptr: int64 ``[num_users + 1]`` CSR row pointers of per-user known positives.
    known_items: int32 ``[nnz]`` sorted unique known items of each user (CSR values).
    features: extra ``[Q, ...]`` model inputs (e.g. ``"history"``, ``"history_mask"``) passed to the
      score function together with ``"user"``.
    group: optional int ``[Q]`` ground-truth group of each query (e.g. the user when every test item
      of a user is a positive of one ranking).
  """

  user: np.ndarray
  positive: np.ndarray
  time: np.ndarray
  known_indptr: np.ndarray
  known_items: np.ndarray
  features: dict = dataclasses.field(default_factory=dict)
  group: Optional[np.ndarray] = None

  def __post_init__(self):
    q = self.user.shape[0]
    for name in ("positive", "time"):
      if getattr(self, name).shape != (q,):
        raise DataError(f"Queries: field '{name}' has shape {getattr(self, name).shape}, expected ({q},)")
    if self.group is not None and self.group.shape != (q,):
      raise DataError(f"Queries: field 'group' has shape {self.group.shape}, expected ({q},)")
    for name, arr in self.features.items():
      if np.shape(arr)[:1] != (q,):
        raise DataError(f"Queries: feature '{name}' has shape {np.shape(arr)}, expected ({q}, ...)")
    if q and (self.user.min() < 0 or self.user.max() >= self.num_users):
      raise DataError(f"Queries: field 'user' has ids outside [0, {self.num_users})")

  @property
  def num_users(self) -> int:
    return int(self.known_indptr.shape[0] - 1)

  def __len__(self) -> int:
    return int(self.user.shape[0])

  @classmethod
  def from_log(cls, eval_log: InteractionLog, known_logs: Sequence[InteractionLog] = (), *,
               group_by_user: bool = False, features: Optional[dict] = None) -> "Queries":
    """Builds queries from the held-out log.

    Args:
      eval_log: held-out interactions; one query per row (``group_by_user=False``), or one query per
        distinct (user, item) pair grouped by user (``group_by_user=True``).
      known_logs: logs whose items are excluded per user (training, + validation at test time).
      group_by_user: treat all held-out items of a user as one ground-truth set.
      features: optional ``[Q, ...]`` model inputs aligned with the rows of ``eval_log`` (only with
        ``group_by_user=False``, since grouping re-orders the rows).

    Returns:
      The queries.
    """
    for log in known_logs:
      if (log.num_users, log.num_items) != (eval_log.num_users, eval_log.num_items):
        raise DataError(f"Queries.from_log: known log '{log.name}' has index spaces "
                        f"({log.num_users}, {log.num_items}), expected ({eval_log.num_users}, "
                        f"{eval_log.num_items}) as in '{eval_log.name}'")
    if known_logs:
      indptr, items = concat_logs(list(known_logs)).user_item_csr()
    else:
      indptr, items = np.zeros(eval_log.num_users + 1, np.int64), np.zeros(0, np.int32)
    if not group_by_user:
      return cls(user=eval_log.user.astype(np.int32), positive=eval_log.item.astype(np.int32),
                 time=eval_log.timestamp.astype(np.int64), known_indptr=indptr, known_items=items,
                 features=dict(features or {}))
    if features:
      raise DataError("Queries.from_log: features cannot be given with group_by_user=True")
    key = eval_log.user.astype(np.int64) * eval_log.num_items + eval_log.item
    order = np.lexsort((eval_log.timestamp, key))
    first = np.concatenate([[True], key[order][1:] != key[order][:-1]]) if key.size else np.zeros(0, bool)
    keep = order[first]
    user = eval_log.user[keep].astype(np.int32)
    return cls(user=user, positive=eval_log.item[keep].astype(np.int32),
               time=eval_log.timestamp[keep].astype(np.int64), known_indptr=indptr, known_items=items,
               group=user.copy())

  def take(self, index) -> "Queries":
    """Subset of the queries (exclusion CSR shared)."""
    index = np.asarray(index)
    return dataclasses.replace(
        self, user=self.user[index], positive=self.positive[index], time=self.time[index],
        features={k: np.asarray(v)[index] for k, v in self.features.items()},
        group=None if self.group is None else self.group[index])

  def num_known(self) -> np.ndarray:
    """int64 ``[Q]`` number of known items of each query's user."""
    return (self.known_indptr[self.user + 1] - self.known_indptr[self.user]).astype(np.int64)

  def positive_is_known(self) -> np.ndarray:
    """bool ``[Q]`` whether the query's positive is among its user's known items."""
    start = self.known_indptr[self.user]
    end = self.known_indptr[self.user + 1]
    if self.known_items.size == 0:
      return np.zeros(len(self), bool)
    # Per-row binary search inside each user's sorted segment: offset the keys by user.
    width = int(self.known_items.max(initial=0)) + int(self.positive.max(initial=0)) + 2
    row_of = np.repeat(np.arange(self.num_users, dtype=np.int64), np.diff(self.known_indptr))
    flat = row_of * width + self.known_items
    q = self.user.astype(np.int64) * width + self.positive
    pos = np.searchsorted(flat, q)
    found = (pos < end) & (pos >= start)
    found &= flat[np.minimum(pos, flat.size - 1)] == q
    return found

  def num_excluded(self) -> np.ndarray:
    """int64 ``[Q]`` excluded candidates per query (known items other than the positive)."""
    return self.num_known() - self.positive_is_known()

  def exclusion_matrix(self, index=None, width: Optional[int] = None) -> np.ndarray:
    """Known items of the selected queries' users as a padded int32 ``[n, width]`` matrix (-1 padding).

    Args:
      index: optional query indices (default all).
      width: columns; default the largest known-set size over *all* queries so that every batch of
        one evaluation has the same static shape.
    """
    users = self.user if index is None else self.user[np.asarray(index)]
    if width is None:
      width = int(self.num_known().max(initial=0))
    width = max(int(width), 1)
    start = self.known_indptr[users]
    count = self.known_indptr[users + 1] - start
    if count.size and count.max() > width:
      raise ValueError(f"exclusion_matrix: a user has {count.max()} known items > width {width}")
    col = np.arange(width)
    mask = col[None, :] < count[:, None]
    src = np.where(mask, start[:, None] + col[None, :], 0)
    vals = self.known_items[src] if self.known_items.size else np.zeros(src.shape, np.int32)
    return np.where(mask, vals, -1).astype(np.int32)
