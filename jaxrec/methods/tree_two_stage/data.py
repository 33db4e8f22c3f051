"""Training windows, evaluation queries and item representations (paper 004, Appendix D.2, Sec. 3.2.1).

* :func:`training_windows`: Appendix D.2's sliding windows, every training interaction with at least one
  earlier item is a target, its previous 69 items the context (right-aligned, padding in front, id
  ``num_items``). Training rows include the context halves of the validation and test users
  (:func:`jaxrec.data.splits.context_holdout` puts them in ``train``), as in the reference code.
  Departure: a stride of one (every target), where "slices of length 70 at most" may also be read as
  non-overlapping slices; ``max_train_samples`` subsamples.
* :func:`eval_queries`: one ranking per held-out user, all ground-truth items of the user one group
  (:class:`jaxrec.eval.queries.Queries` ``group``), the query's context the last 69 context items.
* :func:`window_ids`: which of the 10 time windows each of the 69 history slots falls in.
* :func:`cooccurrence_representation`: z_i = y_i / ||y_i|| (Sec. 3.2.1), randomly projected.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from jaxrec.data import samplers
from jaxrec.data.log import DataError, InteractionLog
from jaxrec.eval.queries import Queries
from jaxrec.methods.tree_two_stage.config import HISTORY_LEN, WINDOWS


def window_ids(windows=WINDOWS) -> np.ndarray:
  """int32 [sum(windows)]: the window of each right-aligned history slot (slot L-1, the newest, is 0)."""
  ids = np.repeat(np.arange(len(windows)), windows)  # newest first
  return ids[::-1].astype(np.int32).copy()


@dataclasses.dataclass(frozen=True)
class Windows:
  """Training samples: ``history`` int32 [S, L] (pad = num_items), ``mask`` bool [S, L], ``target``
  int32 [S], ``user`` int32 [S]."""

  history: np.ndarray
  mask: np.ndarray
  target: np.ndarray
  user: np.ndarray

  def __len__(self) -> int:
    return int(self.target.shape[0])

  def take(self, index) -> "Windows":
    index = np.asarray(index)
    return Windows(self.history[index], self.mask[index], self.target[index], self.user[index])

  def arrays(self) -> dict:
    return {"history": self.history, "history_mask": self.mask, "target": self.target}


def training_windows(train: InteractionLog, length: int = HISTORY_LEN, max_samples: Optional[int] = None,
                     seed: int = 0) -> Windows:
  """Every training row with >= 1 earlier item of its user, with its previous ``length`` items."""
  w = samplers.last_windows(train, length, pad_id=train.num_items)
  keep = np.flatnonzero(w.mask.any(1))
  if max_samples is not None and keep.size > max_samples:
    keep = np.sort(np.random.default_rng(seed).choice(keep, max_samples, replace=False))
  if keep.size == 0:
    raise DataError(f"{train.name}: no training interaction has an earlier item of its user")
  return Windows(w.history[keep], w.mask[keep], w.target[keep], w.user[keep])


def eval_queries(held_out: InteractionLog, context: InteractionLog, length: int = HISTORY_LEN) -> Queries:
  """Grouped queries of the held-out users: truth = their held-out items, history = last context items.

  ``context`` is the training log (it holds the held-out users' context halves); its items are the
  users' known items (excluded from the two-stage lists).
  """
  q = Queries.from_log(held_out, [context], group_by_user=True)
  hist, mask = samplers.user_histories(context, length, users=q.user, pad_id=context.num_items)
  return dataclasses.replace(q, features={"history": hist, "history_mask": mask})


def cooccurrence_representation(train: InteractionLog, dim: int, seed: int = 0) -> np.ndarray:
  """float32 [N, dim]: Sec. 3.2.1's z_i = y_i / ||y_i|| (y_i the item's 0/1 user column), times a
  Gaussian projection [num_users, dim] / sqrt(dim) (Johnson-Lindenstrauss: inner products kept
  approximately), computed as a sum over the de-duplicated (user, item) pairs; items without rows get 0."""
  key = np.unique(train.item.astype(np.int64) * train.num_users + train.user)
  item, user = key // train.num_users, key % train.num_users
  proj = np.random.default_rng(seed).normal(size=(train.num_users, dim)) / np.sqrt(dim)
  z = np.zeros((train.num_items, dim))
  np.add.at(z, item, proj[user])
  norm = np.sqrt(np.bincount(item, minlength=train.num_items))
  return (z / np.maximum(norm, 1.0)[:, None]).astype(np.float32)
