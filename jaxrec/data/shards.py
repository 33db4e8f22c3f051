"""Interaction logs on disk: ``.npy`` shards written once, memory-mapped, streamed in shuffled batches.

A log that does not fit in RAM (the ``large`` synthetic preset: 1M users, ~100M interactions) is kept as
a directory of shards, one per chunk a loader or :func:`jaxrec.data.synthetic.generate_chunks` yields::

    shards.write(directory, synthetic.generate_chunks("large"))      # once
    log = shards.open_log(directory)                                  # memory-mapped, O(1) RAM
    batches_fn = lambda epoch: shards.epoch_batches(log, 1024, seed=0, epoch=epoch,
                                                    fields={"user": "user", "item": "item"})

Layout: ``meta.json`` (index spaces, name, rows per shard, columns; written last, so a directory without
it is an unfinished write and is rewritten) and per shard ``<column>-<k>.npy`` for ``user``, ``item``,
``timestamp`` (and ``rating`` when present), plus ``item_features.npy`` once. Columns are read with
``np.load(mmap_mode="r")``: the OS pages them in and out, nothing is held.

Batches (:func:`epoch_batches`): a two-level shuffle with bounded memory, the scheme of streaming loaders
(``tf.data`` / grain file shuffling plus a shuffle buffer). Per epoch, ``default_rng([seed, epoch])``
permutes the shards; ``window`` shards at a time are read, their rows permuted, and full batches cut
(the rows left over carried to the next window). Every row is in exactly one batch per epoch, with
``mask`` True; the last batch is completed with rows of the epoch's first batch with ``mask`` False,
so shapes are static and no id is made up. Resident memory is ``window`` shards of the requested
columns plus one batch (two windows with the default background ``prefetch``, which reads and shuffles
the next window while the steps run), whatever the number of shards. The order depends on
``(seed, epoch)`` only, as :func:`jaxrec.train.loop.train` needs to resume. It is not the in-memory
samplers' order (one global permutation): the same rows, shuffled within windows of shards instead of
globally.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import re
import shutil
import threading
from typing import Iterable, Iterator, Mapping, Optional, Tuple

import numpy as np

from jaxrec import io
from jaxrec.data.log import DataError, InteractionLog

META = "meta.json"
_SHARD_FILE = re.compile(r"(user|item|timestamp|rating)-\d{5}\.npy|item_features\.npy|meta\.json|\.tmp-.*")
FORMAT = 1


@dataclasses.dataclass(frozen=True)
class ShardedLog:
  """A log on disk: its index spaces and the memory-mapped columns of each shard.

  Attributes:
    directory: where the shards are.
    num_users, num_items: the index spaces (shared by every shard).
    shard_rows: rows per shard.
    columns: the stored columns (``user``, ``item``, ``timestamp`` and maybe ``rating``).
    name: the dataset name.
  """

  directory: str
  num_users: int
  num_items: int
  shard_rows: Tuple[int, ...]
  columns: Tuple[str, ...]
  name: str = "log"

  @property
  def num_shards(self) -> int:
    return len(self.shard_rows)

  @property
  def num_rows(self) -> int:
    return int(sum(self.shard_rows))

  def column(self, name: str, shard: int) -> np.ndarray:
    """Column ``name`` of ``shard``, memory-mapped (read-only)."""
    if name not in self.columns:
      raise DataError(f"{self.directory}: no column {name!r}; stored: {', '.join(self.columns)}")
    return np.load(os.path.join(self.directory, f"{name}-{shard:05d}.npy"), mmap_mode="r")

  def item_features(self) -> Optional[np.ndarray]:
    path = os.path.join(self.directory, "item_features.npy")
    return np.load(path, mmap_mode="r") if os.path.exists(path) else None

  def to_log(self) -> InteractionLog:
    """The whole log in memory (for small logs and tests)."""
    feats = self.item_features()

    def col(c):
      return np.concatenate([np.asarray(self.column(c, s)) for s in range(self.num_shards)])

    return InteractionLog(user=col("user"), item=col("item"), timestamp=col("timestamp"),
                          num_users=self.num_users, num_items=self.num_items,
                          rating=col("rating") if "rating" in self.columns else None,
                          item_features=None if feats is None else np.asarray(feats), name=self.name)


def _read_meta(directory: str) -> Optional[dict]:
  path = os.path.join(directory, META)
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    meta = json.load(f)
  if meta.get("format") != FORMAT:
    raise DataError(f"{path}: shard format {meta.get('format')!r}, expected {FORMAT}; delete {directory}")
  return meta


def open_log(directory: str) -> ShardedLog:
  """Opens the shards in ``directory`` (written by :func:`write`)."""
  meta = _read_meta(directory)
  if meta is None:
    raise DataError(f"{directory} holds no finished shards (no {META}); write them with shards.write")
  return ShardedLog(directory=directory, num_users=meta["num_users"], num_items=meta["num_items"],
                    shard_rows=tuple(meta["shard_rows"]), columns=tuple(meta["columns"]), name=meta["name"])


def write(directory: str, chunks: Iterable[InteractionLog], *, overwrite: bool = False) -> ShardedLog:
  """Writes ``chunks`` (logs sharing one index space) as shards, once; returns the opened shards.

  When ``directory`` already holds finished shards they are opened and ``chunks`` is not consumed
  (unless ``overwrite``): loaders call this every run and pay the writing only the first time. An
  unfinished directory (no ``meta.json``: a killed write) is cleared and written again.
  """
  if not overwrite and _read_meta(directory) is not None:
    return open_log(directory)
  if os.path.exists(directory):
    foreign = [f for f in os.listdir(directory) if not _SHARD_FILE.fullmatch(f)]
    if foreign:  # never delete what is not ours: a wrong --flag must not wipe a user's directory
      raise DataError(f"shards.write({directory!r}): the directory holds files that are not shards "
                      f"(e.g. {sorted(foreign)[0]!r}); give an empty or new directory")
    shutil.rmtree(directory)
  os.makedirs(directory)
  rows, columns, first = [], None, None
  for k, chunk in enumerate(chunks):
    cols = ("user", "item", "timestamp") + (("rating",) if chunk.rating is not None else ())
    if first is None:
      first, columns = chunk, cols
      if chunk.item_features is not None:
        np.save(os.path.join(directory, "item_features.npy"), np.asarray(chunk.item_features, np.float32))
    elif (chunk.num_users, chunk.num_items, cols) != (first.num_users, first.num_items, columns):
      raise DataError(f"shard {k}: index spaces or columns differ from shard 0 "
                      f"({chunk.num_users}, {chunk.num_items}, {cols} vs {first.num_users}, "
                      f"{first.num_items}, {columns})")
    for c in cols:
      np.save(os.path.join(directory, f"{c}-{k:05d}.npy"), getattr(chunk, c))
    rows.append(int(chunk.user.shape[0]))
  if first is None:
    raise DataError(f"shards.write({directory!r}): no chunks")
  io.atomic_write_json(os.path.join(directory, META), {
      "format": FORMAT, "name": first.name, "num_users": first.num_users, "num_items": first.num_items,
      "shard_rows": rows, "columns": list(columns)})
  return open_log(directory)


def user_counts(log: ShardedLog) -> np.ndarray:
  """int64 ``[num_users]``: the rows of each user (one pass over the ``user`` columns)."""
  counts = np.zeros(log.num_users, np.int64)
  for s in range(log.num_shards):
    counts += np.bincount(np.asarray(log.column("user", s)), minlength=log.num_users)
  return counts


def user_blocks(log: ShardedLog, max_rows: int, counts: Optional[np.ndarray] = None
                ) -> Iterator[InteractionLog]:
  """Every row of ``log``, as in-memory logs of whole users, with bounded memory.

  Users are cut into consecutive id ranges of at most ``max_rows`` rows each (a user with more rows
  than that gets a range of its own); per range, one pass over the shards keeps that range's rows. A
  block is an :class:`InteractionLog` over the full index spaces holding every row of its users in
  arrival order (shard order, then row order within a shard), so a stable time sort keeps ties in
  arrival order as it would on the whole log: what per-user computations (sequences, last items,
  per-user splits) need, at ``max_rows`` rows of memory instead of the whole log.

  Args:
    log: the shards.
    max_rows: rows per block (at least 1).
    counts: :func:`user_counts` of ``log``, if already computed.
  """
  if max_rows < 1:
    raise DataError(f"user_blocks: max_rows must be >= 1, got {max_rows}")
  counts = user_counts(log) if counts is None else counts
  cum = np.cumsum(counts)
  feats = log.item_features()
  feats = None if feats is None else np.asarray(feats)
  start = 0
  while start < log.num_users:
    before = cum[start - 1] if start else 0
    end = max(int(np.searchsorted(cum, before + max_rows, side="right")), start + 1)
    if cum[end - 1] > before:  # a range with rows
      cols = {c: [] for c in log.columns}
      for s in range(log.num_shards):
        u = np.asarray(log.column("user", s))
        sel = (u >= start) & (u < end)
        if sel.any():
          for c in log.columns:
            cols[c].append(u[sel] if c == "user" else np.asarray(log.column(c, s))[sel])
      cols = {c: np.concatenate(v) for c, v in cols.items()}
      yield InteractionLog(user=cols["user"], item=cols["item"], timestamp=cols["timestamp"],
                           num_users=log.num_users, num_items=log.num_items, rating=cols.get("rating"),
                           item_features=feats, name=log.name)
    start = end


def steps_per_epoch(log: ShardedLog, batch_size: int) -> int:
  """Batches :func:`epoch_batches` yields per epoch: ``ceil(rows / batch_size)``."""
  return -(-log.num_rows // batch_size)


def background(iterable: Iterable, size: int) -> Iterator:
  """``iterable``'s items, produced by a background thread up to ``size`` ahead (same order).

  Reading and shuffling the next window overlaps the training steps (numpy releases the GIL in its
  copies). An exception in the thread is raised here; closing the iterator (a loop that stops early)
  stops the thread.
  """
  q: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()
  done = object()

  def put(x) -> bool:
    while not stop.is_set():
      try:
        q.put(x, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def work():
    try:
      for item in iterable:
        if not put((True, item)):
          return
      put((True, done))
    except BaseException as e:  # handed to the consumer
      put((False, e))

  thread = threading.Thread(target=work, daemon=True)
  thread.start()
  try:
    while True:
      ok, item = q.get()
      if not ok:
        raise item
      if item is done:
        return
      yield item
  finally:
    stop.set()


def epoch_batches(log: ShardedLog, batch_size: int, *, seed: int, epoch: int,
                  fields: Mapping[str, str] = None, window: int = 2, prefetch: int = 4) -> Iterator[dict]:
  """The static-shape batches of one epoch (module docstring): ``{field: [batch_size], "mask": bool}``.

  Args:
    log: the shards.
    batch_size: rows per batch.
    seed, epoch: the order is a function of these alone.
    fields: ``{batch field: column}`` (default ``{"user": "user", "item": "item"}``).
    window: shards read and shuffled together (resident memory: ``window`` shards' columns).
    prefetch: batches a background thread prepares ahead (:func:`background`; 0: none). Resident memory
      is then up to two windows (the one being cut and the next).
  """
  if batch_size < 1 or window < 1 or prefetch < 0:
    raise DataError(f"epoch_batches: batch_size and window must be >= 1 and prefetch >= 0, got "
                    f"{batch_size}, {window}, {prefetch}")
  fields = dict(fields or {"user": "user", "item": "item"})
  batches = _epoch_batches(log, batch_size, seed, epoch, fields, window)
  return background(batches, prefetch) if prefetch else batches


def _epoch_batches(log, batch_size, seed, epoch, fields, window):
  rng = np.random.default_rng([seed, epoch])
  order = rng.permutation(log.num_shards)
  carry = {f: np.zeros(0, np.int64) for f in fields}
  first = None
  for start in range(0, log.num_shards, window):
    ids = order[start:start + window]
    rows = {f: np.concatenate([np.asarray(log.column(c, int(s))) for s in ids]) for f, c in fields.items()}
    perm = rng.permutation(next(iter(rows.values())).shape[0])
    rows = {f: np.concatenate([carry[f], rows[f][perm]]) if carry[f].size else rows[f][perm]
            for f in fields}
    n = next(iter(rows.values())).shape[0]
    full = n // batch_size
    for b in range(full):
      batch = {f: rows[f][b * batch_size:(b + 1) * batch_size] for f in fields}
      if first is None:
        first = batch
      yield {**batch, "mask": np.ones(batch_size, bool)}
    carry = {f: rows[f][full * batch_size:] for f in fields}
  left = next(iter(carry.values())).shape[0]
  if left:
    fill = batch_size - left
    src = first if first is not None else carry
    reps = -(-fill // next(iter(src.values())).shape[0])
    batch = {f: np.concatenate([carry[f]] + [src[f]] * reps)[:batch_size] for f in fields}
    mask = np.arange(batch_size) < left
    yield {**batch, "mask": mask}
