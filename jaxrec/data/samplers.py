"""Host-side (numpy, vectorised) samplers producing static-shape, padded + masked batches.

* :func:`sample_negatives`: items a user has not interacted with (uniform or
  popularity-proportional), by vectorised rejection resampling.
* :func:`last_windows` / :func:`user_histories`: right-aligned last-``L`` item
  histories (sequential models, TP paper 001, tree paper 004).
* :func:`per_user_task_batches`: TP per-user tasks (paper 001, Sec. 3: each user
  is a task with its own support sequences).
* :func:`last_interaction_lookup`: MeLON's ``B_t^last`` (paper 002, Sec. "Online
  training", step 1): each interaction's previous interaction of the same user and item.
* :func:`iterate_batches`: shuffled fixed-size batches with a ``mask`` key.

Every function takes an explicit ``np.random.Generator`` when it is random. A user's rows are
ordered by :mod:`jaxrec.data.order`: by timestamp, ties in arrival (row) order, never by item id, so
``train.concat(valid)`` keeps train rows before valid rows among equal timestamps.
"""

from __future__ import annotations

from typing import Iterator, Mapping, NamedTuple, Optional

import numpy as np

from jaxrec.data import order as order_lib
from jaxrec.data.log import DataError, InteractionLog


def _known_keys(known_csr: tuple[np.ndarray, np.ndarray], num_items: int) -> np.ndarray:
  """Sorted int64 keys ``user * num_items + item`` of a CSR of sorted per-user items."""
  indptr, items = known_csr
  users = np.repeat(np.arange(indptr.size - 1, dtype=np.int64), np.diff(indptr))
  return users * num_items + items


def _is_known(keys: np.ndarray, users: np.ndarray, items: np.ndarray, num_items: int) -> np.ndarray:
  q = users.astype(np.int64) * num_items + items
  if keys.size == 0:
    return np.zeros(q.shape, bool)
  pos = np.minimum(np.searchsorted(keys, q), keys.size - 1)
  return keys[pos] == q


def _draw(rng: np.random.Generator, shape, num_items: int, cdf: Optional[np.ndarray]) -> np.ndarray:
  if cdf is None:
    return rng.integers(0, num_items, size=shape, dtype=np.int32)
  idx = np.searchsorted(cdf, rng.random(shape) * cdf[-1], side="right")
  return np.minimum(idx, num_items - 1).astype(np.int32)


def sample_negatives(rng: np.random.Generator, users: np.ndarray, num: int, num_items: int,
                     known_csr: tuple[np.ndarray, np.ndarray], popularity: Optional[np.ndarray] = None,
                     max_rounds: int = 64) -> np.ndarray:
  """Samples ``num`` negatives per user, never one of the user's known positives.

  Draws are i.i.d. (with replacement within a row) from the uniform distribution
  or ``popularity / sum(popularity)``, conditioned on not being in the user's
  ``known_csr`` row; rejected draws are redrawn in bulk. After ``max_rounds``
  rounds, the few still-rejected entries are drawn exactly from the user's
  admissible set.

  Args:
    rng: numpy generator.
    users: int ``[B]`` user indices.
    num: negatives per user.
    num_items: size of the item space.
    known_csr: ``(indptr, items)`` from :meth:`InteractionLog.user_item_csr`.
    popularity: optional non-negative weights ``[num_items]``.
    max_rounds: rejection rounds before the exact fallback.

  Returns:
    int32 ``[B, num]``.

  Raises:
    DataError: if a user has no admissible negative.
  """
  users = np.asarray(users, np.int64)
  indptr, items = known_csr
  if users.size and (users.min() < 0 or users.max() >= indptr.size - 1):
    raise DataError(f"sample_negatives: users outside [0, {indptr.size - 1}) of known_csr")
  cdf = None
  if popularity is not None:
    popularity = np.asarray(popularity, np.float64)
    if popularity.shape != (num_items,) or np.any(popularity < 0) or not np.all(np.isfinite(popularity)):
      raise DataError(f"sample_negatives: popularity must be finite, non-negative, shape ({num_items},)")
    cdf = np.cumsum(popularity)
    # Admissible mass per user = total - mass of known items.
    known_mass = np.add.reduceat(np.concatenate([popularity[items], [0.0]]), indptr[:-1])
    known_mass[np.diff(indptr) == 0] = 0.0
    admissible = (cdf[-1] - known_mass[users]) > 1e-12 * max(cdf[-1], 1e-300)
  else:
    admissible = np.diff(indptr)[users] < num_items
  if not np.all(admissible):
    bad = np.unique(users[~admissible])[:5]
    raise DataError(f"sample_negatives: users {bad.tolist()} have no admissible negative item "
                    f"(every item with non-zero weight is a known positive)")
  keys = _known_keys(known_csr, num_items)
  out = _draw(rng, (users.size, num), num_items, cdf)
  ub = np.broadcast_to(users[:, None], out.shape)
  bad = _is_known(keys, ub, out, num_items)
  for _ in range(max_rounds):
    if not bad.any():
      break
    out[bad] = _draw(rng, int(bad.sum()), num_items, cdf)
    bad[bad] = _is_known(keys, ub[bad], out[bad], num_items)
  if bad.any():  # Exact fallback for users with almost every item known.
    rows, cols = np.nonzero(bad)
    for u in np.unique(users[rows]):
      sel = users[rows] == u
      allowed = np.setdiff1d(np.arange(num_items), items[indptr[u]:indptr[u + 1]])
      p = None
      if popularity is not None:
        p = popularity[allowed] / popularity[allowed].sum()
      out[rows[sel], cols[sel]] = rng.choice(allowed, size=int(sel.sum()), p=p)
  return out


class Windows(NamedTuple):
  """Right-aligned last-L histories, row ``j`` for row ``j`` of the input log.

  Attributes:
    history: int32 ``[n, L]`` previous items of the same user, most recent last; ``pad_id`` where masked.
    mask: bool ``[n, L]`` True on real items.
    target: int32 ``[n]`` the row's item.
    user: int32 ``[n]`` the row's user.
  """

  history: np.ndarray
  mask: np.ndarray
  target: np.ndarray
  user: np.ndarray


def _right_aligned(items_sorted: np.ndarray, pos: np.ndarray, rows: np.ndarray, length: int,
                   pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """history[j, c] = items_sorted[rows[j] - (L - c)] where that is within the user's ``pos[j]`` rows."""
  back = length - np.arange(length)  # L .. 1
  mask = back[None, :] <= pos[:, None]
  src = np.where(mask, rows[:, None] - back[None, :], 0)
  hist = np.where(mask, items_sorted[src] if items_sorted.size else 0, pad_id).astype(np.int32)
  return hist, mask


def last_windows(log: InteractionLog, length: int, pad_id: int = 0) -> Windows:
  """For every interaction, the user's ``length`` previous items (right-aligned).

  A user's rows are ordered by timestamp, ties by input row order; a row's
  window holds only rows strictly before it in that order (never itself or a
  later one). Output rows follow the input log's rows.

  Args:
    log: the log.
    length: window length ``L``.
    pad_id: value at masked positions (the mask is authoritative; pass
      ``log.num_items`` to reserve a padding embedding row).
  """
  if length < 1:
    raise ValueError(f"last_windows: length must be >= 1, got {length}")
  n = len(log)
  up = order_lib.user_positions(log.user, log.timestamp, log.num_users)
  order = up.order
  hist_s, mask_s = _right_aligned(log.item[order], up.position, np.arange(n), length, pad_id)
  hist = np.empty_like(hist_s)
  mask = np.empty_like(mask_s)
  hist[order] = hist_s
  mask[order] = mask_s
  return Windows(hist, mask, log.item.astype(np.int32), log.user.astype(np.int32))


def user_histories(log: InteractionLog, length: int, users: Optional[np.ndarray] = None,
                   previous: Optional[InteractionLog] = None,
                   pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Each user's last ``length`` items at the end of ``log`` (queries for evaluation).

  Args:
    log: the log (e.g. ``split.train``).
    length: window length ``L``.
    users: which users (default ``arange(num_users)``).
    previous: an earlier log of the same index space to continue from (e.g.
      ``train`` when ``log`` is ``valid``, to build test-time queries).
    pad_id: value at masked positions.

  Returns:
    ``(history int32 [U, L], mask bool [U, L])``, right-aligned, most recent last.
  """
  full = log if previous is None else previous.concat(log)
  if users is None:
    users = np.arange(full.num_users)
  users = np.asarray(users, np.int64)
  up = order_lib.user_positions(full.user, full.timestamp, full.num_users)
  ends = up.starts + up.counts
  return _right_aligned(full.item[up.order], up.counts[users], ends[users], length, pad_id)


def per_user_task_batches(rng: Optional[np.random.Generator], log: InteractionLog, length: int,
                          batch_users: int, num_support: int, users: Optional[np.ndarray] = None,
                          min_history: int = 1, pad_id: int = 0,
                          drop_remainder: bool = False) -> Iterator[dict]:
  """TP per-user tasks (paper 001, Sec. 3): batches of users with padded support sequences.

  Each interaction with at least ``min_history`` previous items gives a support
  sequence (its :func:`last_windows` window and target). A user with more than
  ``num_support`` sequences keeps a random subset (``rng``) or, if ``rng`` is
  None, the latest ones. Users (those with >= 1 sequence, or ``users``) are
  shuffled by ``rng`` (kept in order if None) and cut into batches of ``batch_users``.

  Yields:
    dicts with ``user`` int32 ``[B]``, ``user_mask`` bool ``[B]``, ``history`` int32
    ``[B, S, L]``, ``history_mask`` bool ``[B, S, L]``, ``target`` int32 ``[B, S]`` and
    ``support_mask`` bool ``[B, S]``; padding is zeros with masks False.
  """
  win = last_windows(log, length, pad_id)
  ok = win.mask.sum(axis=1) >= min_history
  rows = np.flatnonzero(ok)
  # Order candidate rows by user, then by preference (random key or latest first).
  if rng is not None:
    pref = rng.random(rows.size)
  else:
    pref = np.empty(rows.size)
    pref[order_lib.time_order(log.timestamp[rows])] = -np.arange(rows.size, dtype=np.float64)
  rows = rows[np.lexsort((pref, log.user[rows]))]
  ru = log.user[rows]
  cnt = np.bincount(ru, minlength=log.num_users)
  starts = np.concatenate([[0], np.cumsum(cnt)[:-1]])
  rank = np.arange(rows.size) - starts[ru]
  keep = rank < num_support
  table = np.full((log.num_users, num_support), -1, np.int64)
  table[ru[keep], rank[keep]] = rows[keep]
  if users is None:
    users = np.flatnonzero(cnt)
  users = np.asarray(users, np.int64)
  if rng is not None:
    users = rng.permutation(users)
  for lo in range(0, users.size, batch_users):
    ub = users[lo:lo + batch_users]
    if drop_remainder and ub.size < batch_users:
      break
    user_mask = np.zeros(batch_users, bool)
    user_mask[:ub.size] = True
    ub = np.concatenate([ub, np.zeros(batch_users - ub.size, np.int64)])
    idx = np.where(user_mask[:, None], table[ub], -1)
    sm = idx >= 0
    safe = np.where(sm, idx, 0)
    hm = win.mask[safe] & sm[:, :, None]
    yield {"user": ub.astype(np.int32), "user_mask": user_mask,
           "history": np.where(hm, win.history[safe], pad_id).astype(np.int32), "history_mask": hm,
           "target": np.where(sm, win.target[safe], 0).astype(np.int32), "support_mask": sm}


def last_interaction_lookup(user: np.ndarray, item: np.ndarray, timestamp: np.ndarray,
                            strict_time: bool = False) -> dict[str, np.ndarray]:
  """For each row of a time-ordered stream, the previous row of the same user and of the same item.

  MeLON (paper 002, Sec. "Online training", step 1) updates on ``B_t^last``, the
  last interactions of the batch's users and items before the current one.

  Args:
    user, item: int ``[n]`` columns of the stream.
    timestamp: int ``[n]``, non-decreasing.
    strict_time: if False, "before" means an earlier row (ties in time count by
      row order); if True, the previous row must have a strictly smaller timestamp.

  Returns:
    dict of int64 ``[n]``: ``user_prev_index``, ``user_prev_time``, ``item_prev_index``,
    ``item_prev_time`` (row index into the stream and its timestamp; -1 if none).
  """
  user = np.asarray(user)
  item = np.asarray(item)
  timestamp = np.asarray(timestamp, np.int64)
  n = user.shape[0]
  if item.shape != (n,) or timestamp.shape != (n,):
    raise DataError(f"last_interaction_lookup: columns must share shape ({n},), got item {item.shape}, "
                    f"timestamp {timestamp.shape}")
  if n and np.any(np.diff(timestamp) < 0):
    first = int(np.flatnonzero(np.diff(timestamp) < 0)[0]) + 1
    raise DataError(f"last_interaction_lookup: timestamps must be non-decreasing (row {first} is earlier "
                    f"than row {first - 1}); sort the stream by time first")
  out = {}
  if n == 0:
    return {f"{a}_prev_{b}": np.zeros(0, np.int64) for a in ("user", "item") for b in ("index", "time")}
  for name, key in (("user", user), ("item", item)):
    order = np.lexsort((np.arange(n), key))  # grouped by key, row order within
    k = key[order]
    same = np.concatenate([[False], k[1:] == k[:-1]])
    if strict_time:
      t = timestamp[order]
      # Start of each run of equal (key, time); the previous row is the one before the run.
      run_start = np.concatenate([[True], (k[1:] != k[:-1]) | (t[1:] != t[:-1])])
      start_pos = np.maximum.accumulate(np.where(run_start, np.arange(n), 0))
      prev_pos = start_pos - 1
      valid = (prev_pos >= 0) & (k[np.maximum(prev_pos, 0)] == k)
      prev_sorted = np.where(valid, order[np.maximum(prev_pos, 0)], -1)
    else:
      prev_sorted = np.where(same, np.concatenate([[-1], order[:-1]]), -1)
    prev = np.empty(n, np.int64)
    prev[order] = prev_sorted
    out[f"{name}_prev_index"] = prev
    out[f"{name}_prev_time"] = np.where(prev >= 0, timestamp[np.maximum(prev, 0)], -1)
  return out


def iterate_batches(arrays: Mapping[str, np.ndarray], batch_size: int,
                    rng: Optional[np.random.Generator] = None,
                    drop_remainder: bool = False) -> Iterator[dict]:
  """Yields fixed-size batches of ``arrays`` (all with the same leading dimension).

  Rows are shuffled by ``rng`` (kept in order if None). Every batch has
  ``batch_size`` rows and a bool ``mask`` key; the last partial batch is padded
  with zeros (``mask`` False) unless ``drop_remainder``.
  """
  if batch_size < 1:
    raise ValueError(f"iterate_batches: batch_size must be >= 1, got {batch_size}")
  if "mask" in arrays:
    raise ValueError("iterate_batches: 'mask' is reserved for the padding mask")
  sizes = {k: np.shape(v)[0] for k, v in arrays.items()}
  if len(set(sizes.values())) > 1:
    raise DataError(f"iterate_batches: arrays have different leading sizes {sizes}")
  n = next(iter(sizes.values())) if sizes else 0
  perm = rng.permutation(n) if rng is not None else np.arange(n)
  stop = (n // batch_size) * batch_size if drop_remainder else n
  for lo in range(0, stop, batch_size):
    idx = perm[lo:lo + batch_size]
    k = idx.size
    batch = {}
    for name, v in arrays.items():
      v = np.asarray(v)
      b = v[idx]
      if k < batch_size:
        b = np.concatenate([b, np.zeros((batch_size - k,) + v.shape[1:], v.dtype)])
      batch[name] = b
    batch["mask"] = np.arange(batch_size) < k
    yield batch
