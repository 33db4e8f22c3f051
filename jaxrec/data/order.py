"""The one row order of jaxrec: by timestamp, ties in arrival order (or shuffled with a seed).

Every split, sequence builder and training-data builder orders a log's rows through this module, so
they all agree on which of two interactions with the same timestamp came "first".

**Ties.** Rows with equal timestamps keep the order in which they arrived: the row order of the log,
which every loader (:mod:`jaxrec.data.loaders`, :mod:`jaxrec.data.ml100k`) keeps from the file and
the synthetic generator (:mod:`jaxrec.data.synthetic`) writes in its continuous-time order. A
concatenated log (``train.concat(valid)``) therefore keeps train rows before valid rows among equal
timestamps. ``ties="shuffle"`` instead orders tied rows by a random permutation drawn from
``np.random.default_rng(seed)`` (deterministic per seed), to measure how much a result depends on
the tie order.

Ties are never broken by item id. Earlier versions ordered a user's rows by ``(timestamp, item,
row)``: on ML-100K, 415 of 943 users' last two interactions share a timestamp and the held-out item
was then always the larger id, a learnable artefact (a non-learned "next larger id" scorer beat
Popularity) and a bias in every leave-last-out table (issue 8).

* :func:`time_order`: a global time order (chronological split 2TS paper 000, periods SML paper
  003, prequential stream MeLON paper 002).
* :func:`user_time_order`: rows grouped by user, each user's rows in time order.
* :func:`user_positions`: the same order plus each user's count, start and each row's position
  within its user (leave-last-out TP paper 001, context hold-out tree paper 004, last-L windows).

All functions are vectorised numpy and return int64 row indices into the input arrays.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

TIES = ("arrival", "shuffle")


def _check(ties: str, n: int, *arrays) -> None:
  if ties not in TIES:
    raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
  for a in arrays:
    if np.shape(a) != (n,):
      raise ValueError(f"order: columns must share shape ({n},), got {np.shape(a)}")


def _tie_key(n: int, ties: str, seed: int) -> np.ndarray:
  """The last-resort sort key: the row index (arrival) or a seeded random permutation (shuffle)."""
  if ties == "arrival":
    return np.arange(n, dtype=np.int64)
  return np.random.default_rng(seed).permutation(n).astype(np.int64)


def time_order(timestamp: np.ndarray, *, ties: str = "arrival", seed: int = 0) -> np.ndarray:
  """Row indices sorted by timestamp, ties in arrival order (or shuffled).

  Args:
    timestamp: int ``[n]`` timestamps, in the log's row (arrival) order.
    ties: ``"arrival"`` keeps tied rows in row order; ``"shuffle"`` orders them by a permutation
      drawn from ``np.random.default_rng(seed)``.
    seed: the seed of ``"shuffle"`` (ignored for ``"arrival"``).

  Returns:
    int64 ``[n]`` row indices in time order.
  """
  timestamp = np.asarray(timestamp)
  n = timestamp.shape[0]
  _check(ties, n)
  return np.lexsort((_tie_key(n, ties, seed), timestamp)).astype(np.int64)


def user_time_order(user: np.ndarray, timestamp: np.ndarray, *, ties: str = "arrival",
                    seed: int = 0) -> np.ndarray:
  """Row indices grouped by user (ascending id), each user's rows in time order (:func:`time_order`).

  Args:
    user: int ``[n]`` user of each row.
    timestamp: int ``[n]`` timestamps.
    ties: ``"arrival"`` or ``"shuffle"``.
    seed: the seed of ``"shuffle"``.

  Returns:
    int64 ``[n]`` row indices.
  """
  user = np.asarray(user)
  n = user.shape[0]
  _check(ties, n, timestamp)
  return np.lexsort((_tie_key(n, ties, seed), np.asarray(timestamp), user)).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class UserPositions:
  """Rows grouped by user in time order, with each user's count and start and each row's position.

  Attributes:
    order: int64 ``[n]`` row indices, grouped by user (ascending id), time order within a user.
    user: int64 ``[n]`` the user of ``order[j]``.
    counts: int64 ``[num_users]`` rows per user.
    starts: int64 ``[num_users]`` index into ``order`` of each user's earliest row (for a user
      without rows: where its rows would start).
    position: int64 ``[n]`` position of ``order[j]`` within its user, 0 = earliest.
  """

  order: np.ndarray
  user: np.ndarray
  counts: np.ndarray
  starts: np.ndarray
  position: np.ndarray

  @property
  def from_end(self) -> np.ndarray:
    """int64 ``[n]`` of ``order[j]``: how many later rows its user has (0 = the user's last row)."""
    return self.counts[self.user] - 1 - self.position

  @property
  def count(self) -> np.ndarray:
    """int64 ``[n]`` the row count of the user of ``order[j]``."""
    return self.counts[self.user]

  @property
  def row_position(self) -> np.ndarray:
    """int64 ``[n]`` position within its user of each *input* row (``[order] == position``)."""
    out = np.empty_like(self.position)
    out[self.order] = self.position
    return out


def user_positions(user: np.ndarray, timestamp: np.ndarray, num_users: Optional[int] = None, *,
                   ties: str = "arrival", seed: int = 0) -> UserPositions:
  """The per-user "counts / starts / position within user" of :func:`user_time_order`.

  Args:
    user: int ``[n]`` user of each row (``0 <= user < num_users``).
    timestamp: int ``[n]`` timestamps.
    num_users: size of the user index space (default ``max(user) + 1``).
    ties: ``"arrival"`` or ``"shuffle"``.
    seed: the seed of ``"shuffle"``.

  Returns:
    A :class:`UserPositions`.
  """
  user = np.asarray(user)
  order = user_time_order(user, timestamp, ties=ties, seed=seed)
  if num_users is None:
    num_users = int(user.max()) + 1 if user.size else 0
  counts = np.bincount(user, minlength=num_users).astype(np.int64)
  starts = np.cumsum(counts) - counts
  grouped = user[order].astype(np.int64)
  position = np.arange(order.size, dtype=np.int64) - starts[grouped]
  return UserPositions(order=order, user=grouped, counts=counts, starts=starts, position=position)
