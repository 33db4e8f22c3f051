"""The one in-memory representation of an interaction log.

An :class:`InteractionLog` is columnar numpy: one row per interaction, with
contiguous integer user and item indices (``0 .. num_users-1``,
``0 .. num_items-1``), an int64 timestamp, an optional float32 rating and
optional per-item features. :class:`Vocab` maps raw ids (strings or ints from a
file) to those indices and back.

Everything downstream (splits, samplers, evaluation, every method) consumes
this type; loaders and the synthetic generator produce it.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from jaxrec.data import order as order_lib


class DataError(ValueError):
  """Bad user-supplied data; the message names the file, line or field."""


@dataclasses.dataclass(frozen=True)
class Vocab:
  """Bidirectional map between raw ids and contiguous indices.

  Attributes:
    raw: array of raw ids; ``raw[k]`` is the raw id of index ``k``.
  """

  raw: np.ndarray

  @classmethod
  def build(cls, raw_ids: np.ndarray) -> tuple["Vocab", np.ndarray]:
    """Builds a vocabulary from raw ids; returns it and the encoded ids.

    Indices follow the sorted order of the raw ids, so encoding is
    deterministic whatever the order of the rows.
    """
    uniq, inverse = np.unique(np.asarray(raw_ids), return_inverse=True)
    return cls(raw=uniq), inverse.astype(np.int32)

  def __len__(self) -> int:
    return int(self.raw.shape[0])

  def encode(self, raw_ids, field: str = "id") -> np.ndarray:
    """Raw ids -> indices; raises :class:`DataError` for unknown ids."""
    raw_ids = np.asarray(raw_ids)
    pos = np.searchsorted(self.raw, raw_ids)
    pos = np.clip(pos, 0, max(len(self) - 1, 0))
    ok = (len(self) > 0) & (self.raw[pos] == raw_ids) if len(self) else np.zeros(raw_ids.shape, bool)
    if not np.all(ok):
      bad = raw_ids[~ok].ravel()[:5]
      raise DataError(f"{field}: unknown raw ids {bad.tolist()} (not in the vocabulary of {len(self)} ids)")
    return pos.astype(np.int32)

  def decode(self, idx) -> np.ndarray:
    """Indices -> raw ids."""
    return self.raw[np.asarray(idx)]


@dataclasses.dataclass(frozen=True)
class InteractionLog:
  """Columnar interaction log with contiguous user/item indices.

  Attributes:
    user: int32 ``[n]`` user indices in ``[0, num_users)``.
    item: int32 ``[n]`` item indices in ``[0, num_items)``.
    timestamp: int64 ``[n]`` (seconds, or an ordinal when a dataset has no time).
    rating: optional float32 ``[n]`` explicit rating.
    num_users: size of the user index space (may exceed the users present,
      so that splits of one log share one index space).
    num_items: size of the item index space.
    item_features: optional float32 ``[num_items, f]``.
    user_vocab, item_vocab: optional raw-id vocabularies.
    name: a human-readable dataset name used in reports.
  """

  user: np.ndarray
  item: np.ndarray
  timestamp: np.ndarray
  num_users: int
  num_items: int
  rating: Optional[np.ndarray] = None
  item_features: Optional[np.ndarray] = None
  user_vocab: Optional[Vocab] = None
  item_vocab: Optional[Vocab] = None
  name: str = "log"

  def __post_init__(self):
    n = self.user.shape[0]
    for field in ("item", "timestamp", "rating"):
      col = getattr(self, field)
      if col is not None and col.shape != (n,):
        raise DataError(f"{self.name}: column '{field}' has shape {col.shape}, expected ({n},)")
    if n:
      if self.user.min() < 0 or self.user.max() >= self.num_users:
        raise DataError(f"{self.name}: column 'user' has ids outside [0, {self.num_users})")
      if self.item.min() < 0 or self.item.max() >= self.num_items:
        raise DataError(f"{self.name}: column 'item' has ids outside [0, {self.num_items})")
    if self.item_features is not None and self.item_features.shape[0] != self.num_items:
      raise DataError(
          f"{self.name}: item_features has {self.item_features.shape[0]} rows, "
          f"expected num_items={self.num_items}")

  # -- construction ----------------------------------------------------------

  @classmethod
  def from_arrays(cls, user, item, timestamp=None, rating=None, *, num_users=None, num_items=None,
                  item_features=None, user_vocab=None, item_vocab=None, name="log") -> "InteractionLog":
    """Builds a log from already-encoded integer columns (dtypes normalised)."""
    user = np.asarray(user, np.int32)
    item = np.asarray(item, np.int32)
    if timestamp is None:
      timestamp = np.arange(user.shape[0], dtype=np.int64)
    return cls(
        user=user, item=item, timestamp=np.asarray(timestamp, np.int64),
        rating=None if rating is None else np.asarray(rating, np.float32),
        num_users=int(num_users if num_users is not None else (user.max() + 1 if user.size else 0)),
        num_items=int(num_items if num_items is not None else (item.max() + 1 if item.size else 0)),
        item_features=None if item_features is None else np.asarray(item_features, np.float32),
        user_vocab=user_vocab, item_vocab=item_vocab, name=name)

  @classmethod
  def from_raw(cls, raw_user, raw_item, timestamp=None, rating=None, *, item_features=None,
               name="log") -> "InteractionLog":
    """Builds a log from raw ids, creating both vocabularies."""
    user_vocab, user = Vocab.build(raw_user)
    item_vocab, item = Vocab.build(raw_item)
    return cls.from_arrays(user, item, timestamp, rating, num_users=len(user_vocab),
                           num_items=len(item_vocab), item_features=item_features,
                           user_vocab=user_vocab, item_vocab=item_vocab, name=name)

  # -- views -----------------------------------------------------------------

  def __len__(self) -> int:
    return int(self.user.shape[0])

  def take(self, index) -> "InteractionLog":
    """Rows selected by a boolean mask or an index array; index spaces kept."""
    index = np.asarray(index)
    return dataclasses.replace(
        self, user=self.user[index], item=self.item[index], timestamp=self.timestamp[index],
        rating=None if self.rating is None else self.rating[index])

  def sorted_by_time(self) -> "InteractionLog":
    """Rows in time order, ties in arrival (row) order, as :func:`jaxrec.data.order.time_order`."""
    return self.take(order_lib.time_order(self.timestamp))

  def sorted_by_user(self) -> "InteractionLog":
    """Rows grouped by user, each user's rows in time order, ties in arrival (row) order."""
    return self.take(order_lib.user_time_order(self.user, self.timestamp))

  def concat(self, other: "InteractionLog") -> "InteractionLog":
    """Concatenates two logs of the same index spaces."""
    if (self.num_users, self.num_items) != (other.num_users, other.num_items):
      raise DataError(f"cannot concatenate {self.name} and {other.name}: index spaces differ")
    cat = lambda a, b: None if a is None or b is None else np.concatenate([a, b])
    return dataclasses.replace(
        self, user=np.concatenate([self.user, other.user]), item=np.concatenate([self.item, other.item]),
        timestamp=np.concatenate([self.timestamp, other.timestamp]), rating=cat(self.rating, other.rating))

  def user_counts(self) -> np.ndarray:
    """int64 ``[num_users]`` interactions per user."""
    return np.bincount(self.user, minlength=self.num_users)

  def item_counts(self) -> np.ndarray:
    """int64 ``[num_items]`` interactions per item."""
    return np.bincount(self.item, minlength=self.num_items)

  def user_item_csr(self) -> tuple[np.ndarray, np.ndarray]:
    """Per-user sorted unique items as CSR ``(indptr [num_users+1], items)``."""
    key = self.user.astype(np.int64) * self.num_items + self.item
    key = np.unique(key)
    users = (key // self.num_items).astype(np.int64)
    items = (key % self.num_items).astype(np.int32)
    indptr = np.zeros(self.num_users + 1, np.int64)
    np.cumsum(np.bincount(users, minlength=self.num_users), out=indptr[1:])
    return indptr, items

  def stats(self) -> dict:
    """Summary statistics used in reports."""
    uc = self.user_counts()
    ic = self.item_counts()
    active_u = uc[uc > 0]
    out = {
        "name": self.name,
        "interactions": len(self),
        "users": int((uc > 0).sum()),
        "items": int((ic > 0).sum()),
        "density": float(len(self) / max(1, (uc > 0).sum() * (ic > 0).sum())),
    }
    if active_u.size:
      out.update({
          "interactions_per_user_mean": float(active_u.mean()),
          "interactions_per_user_median": float(np.median(active_u)),
          "interactions_per_user_max": int(active_u.max()),
          "time_min": int(self.timestamp.min()),
          "time_max": int(self.timestamp.max()),
      })
    return out


def concat_logs(logs: Sequence[InteractionLog]) -> InteractionLog:
  """Concatenates logs sharing index spaces."""
  out = logs[0]
  for log in logs[1:]:
    out = out.concat(log)
  return out
