"""Standard preprocessing filters on an :class:`InteractionLog`.

* :func:`implicit`: explicit ratings -> implicit feedback (keep ``rating >= threshold``),
  as in MeLON (paper 002, "Datasets") and the 2TS/TP/SML experiments.
* :func:`deduplicate`: one row per (user, item).
* :func:`k_core`: iterative k-core filtering (users with ``>= user_k`` and items
  with ``>= item_k`` interactions, repeated until stable).
* :func:`compact`: re-index to drop users/items without interactions.

Filters keep the index spaces (``num_users``, ``num_items``) so their outputs stay
compatible with the input; call :func:`compact` last to shrink them. A filter that
leaves nothing raises :class:`DataError` naming itself.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxrec.data.log import DataError, InteractionLog, Vocab


def _nonempty(log: InteractionLog, what: str, before: int) -> InteractionLog:
  if len(log) == 0:
    raise DataError(f"{log.name}: {what} removed all {before} interactions")
  return log


def implicit(log: InteractionLog, threshold: float) -> InteractionLog:
  """Keeps rows with ``rating >= threshold`` and drops the rating column."""
  if log.rating is None:
    raise DataError(f"{log.name}: implicit(threshold={threshold}) needs a 'rating' column, the log has none")
  out = dataclasses.replace(log.take(log.rating >= threshold), rating=None)
  return _nonempty(out, f"implicit(threshold={threshold})", len(log))


def deduplicate(log: InteractionLog, keep: str = "first") -> InteractionLog:
  """One row per (user, item): the earliest (``keep="first"``) or latest in time.

  Ties in time are broken by row order. Kept rows stay in their input order.
  """
  if keep not in ("first", "last"):
    raise ValueError(f"deduplicate: keep must be 'first' or 'last', got {keep!r}")
  n = len(log)
  if n == 0:
    return log
  rows = np.arange(n)
  order = np.lexsort((rows, log.timestamp))  # time order, ties by row
  if keep == "last":
    order = order[::-1]
  key = log.user.astype(np.int64)[order] * log.num_items + log.item[order]
  _, first = np.unique(key, return_index=True)
  return log.take(np.sort(order[first]))


def k_core(log: InteractionLog, user_k: int = 0, item_k: int = 0, max_rounds: int = 1000) -> InteractionLog:
  """Iterative k-core: drops users with < user_k and items with < item_k rows until stable.

  Counts are over rows (run :func:`deduplicate` first for distinct items).
  """
  n0 = len(log)
  keep = np.ones(n0, bool)
  for _ in range(max_rounds):
    u = log.user[keep]
    i = log.item[keep]
    bad_u = np.bincount(u, minlength=log.num_users) < user_k
    bad_i = np.bincount(i, minlength=log.num_items) < item_k
    drop = bad_u[log.user] | bad_i[log.item]
    new_keep = keep & ~drop
    if new_keep.sum() == keep.sum():
      break
    keep = new_keep
  out = log.take(keep)
  return _nonempty(out, f"k_core(user_k={user_k}, item_k={item_k})", n0)


def compact(log: InteractionLog) -> InteractionLog:
  """Re-indexes users and items to ``0..n-1`` over those present.

  Vocabularies stay consistent: an existing vocab is restricted to the kept ids;
  without one, a :class:`Vocab` whose raw ids are the previous indices is created
  (so ``vocab.decode`` maps back to the input's indices). ``item_features`` rows
  are restricted likewise.
  """
  if len(log) == 0:
    raise DataError(f"{log.name}: compact needs a non-empty log (an earlier filter removed every row)")
  used_u = np.flatnonzero(np.bincount(log.user, minlength=log.num_users))
  used_i = np.flatnonzero(np.bincount(log.item, minlength=log.num_items))
  map_u = np.full(log.num_users, -1, np.int32)
  map_u[used_u] = np.arange(used_u.size)
  map_i = np.full(log.num_items, -1, np.int32)
  map_i[used_i] = np.arange(used_i.size)
  user_vocab = Vocab(raw=(log.user_vocab.raw[used_u] if log.user_vocab is not None else used_u))
  item_vocab = Vocab(raw=(log.item_vocab.raw[used_i] if log.item_vocab is not None else used_i))
  return dataclasses.replace(
      log, user=map_u[log.user], item=map_i[log.item], num_users=int(used_u.size),
      num_items=int(used_i.size),
      item_features=None if log.item_features is None else log.item_features[used_i],
      user_vocab=user_vocab, item_vocab=item_vocab)
