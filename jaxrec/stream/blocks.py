"""Blocks of a stream: the time-ordered log cut into consecutive blocks with one static shape.

Two sources, one representation (:class:`Blocks`):

* :func:`from_prequential`: MeLON's mini-batches (paper 002, "Experimental setting": the interactions
  sorted by time, an offline pre-training prefix, then the online part cut into mini-batches of 256,
  each evaluated and then trained on), from :func:`jaxrec.data.splits.prequential`. Here the online
  part is one stream (``valid=0``): model selection on MeLON's 0.5% validation stream is left to the
  MeLON preset.
* :func:`from_periods`: SML's periods ``D_0 .. D_T`` (paper 003, Sec. 2 and 4.1.3), from
  :func:`jaxrec.data.splits.periods`; the first ``pretrain_periods`` periods are the offline prefix,
  every later period is a block.

``examples`` holds one row per interaction of the whole time-ordered log (``user``, ``positive``, and
for sequence models ``history`` / ``history_mask``: the user's last ``history_len`` items strictly before
the row, ties in arrival order). A history is what a deployed sequence model reads at the time of the
interaction, so it may hold earlier rows of the same block; the *parameters* that score a block never
learned from it (see :mod:`jaxrec.stream.loop`). Every block is padded to ``block_size`` rows (a multiple
of ``pad_multiple``), so a jitted update sees one shape for every block and compiles once.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from jaxrec.data import samplers, splits
from jaxrec.data.log import DataError, InteractionLog, concat_logs


@dataclasses.dataclass(frozen=True, eq=False)
class Blocks:
  """A time-ordered log, its offline prefix, and the streamed blocks.

  Attributes:
    log: the whole log in stream (time) order.
    examples: host arrays ``[N, ...]`` aligned with ``log`` rows (see module docstring).
    offline_end: rows ``[0, offline_end)`` are the offline (pre-training) prefix.
    starts, ends: int64 ``[T]`` row ranges of the blocks (consecutive, ``starts[0] == offline_end``).
    block_size: padded rows of every block (static).
    source: ``"batch:B"`` or ``"periods:N"`` (how the blocks were made).
  """

  log: InteractionLog
  examples: dict
  offline_end: int
  starts: np.ndarray
  ends: np.ndarray
  block_size: int
  source: str

  def __len__(self) -> int:
    return int(self.starts.shape[0])

  @property
  def num_items(self) -> int:
    return self.log.num_items

  @property
  def num_users(self) -> int:
    return self.log.num_users

  def sizes(self) -> np.ndarray:
    """int64 ``[T]`` real interactions of each block."""
    return self.ends - self.starts

  def rows(self, lo: int, hi: int) -> dict:
    """Example arrays of rows ``[lo, hi)`` (unpadded)."""
    return {k: v[lo:hi] for k, v in self.examples.items()}

  def block(self, t: int) -> dict:
    """Block ``t`` as static-shape host arrays: the example fields ``[block_size, ...]``, ``mask``
    ``[block_size]`` (False on padding) and ``end`` (int64 scalar: rows known once the block is in,
    read by strategies that train on everything so far)."""
    lo, hi = int(self.starts[t]), int(self.ends[t])
    out = pad_rows(self.rows(lo, hi), self.block_size)
    out["end"] = np.asarray(hi, np.int64)
    return out

  def block_log(self, t: int) -> InteractionLog:
    return self.log.take(np.arange(int(self.starts[t]), int(self.ends[t])))

  def prefix_log(self, end: int) -> InteractionLog:
    return self.log.take(np.arange(int(end)))


def pad_rows(arrays: dict, size: int) -> dict:
  """``arrays`` (leading dim ``n <= size``) zero-padded to ``size`` rows, plus a bool ``mask``."""
  n = len(next(iter(arrays.values())))
  if n > size:
    raise ValueError(f"pad_rows: {n} rows exceed the static size {size}")
  out = {}
  for k, v in arrays.items():
    v = np.asarray(v)
    out[k] = np.concatenate([v, np.zeros((size - n,) + v.shape[1:], v.dtype)])
  out["mask"] = np.arange(size) < n
  return out


def stream_examples(log: InteractionLog, history_len: Optional[int]) -> dict:
  """One example per row of the time-ordered ``log``: ``user``, ``positive`` (+ windows if
  ``history_len``)."""
  out = {"user": log.user.astype(np.int32), "positive": log.item.astype(np.int32)}
  if history_len:
    win = samplers.last_windows(log, history_len)
    out.update(history=win.history.astype(np.int32), history_mask=win.mask)
  return out


def _round_up(n: int, m: int) -> int:
  return max(m, -(-n // m) * m)


def _make(log: InteractionLog, offline_end: int, starts, ends, history_len, pad_multiple, source):
  starts, ends = np.asarray(starts, np.int64), np.asarray(ends, np.int64)
  keep = ends > starts
  starts, ends = starts[keep], ends[keep]
  if starts.size == 0:
    raise DataError(f"{log.name}: the stream {source} has no non-empty block")
  size = _round_up(int((ends - starts).max()), pad_multiple)
  return Blocks(log=log, examples=stream_examples(log, history_len), offline_end=int(offline_end),
                starts=starts, ends=ends, block_size=size, source=source)


def from_prequential(log: InteractionLog, batch_size: int = 256, offline: float = 0.8, *,
                     history_len: Optional[int] = None, pad_multiple: Optional[int] = None) -> Blocks:
  """MeLON-style blocks: the offline ``offline`` fraction, then mini-batches of ``batch_size``."""
  stream = splits.prequential(log, offline=offline, valid=0.0, test=1.0 - offline,
                              batch_size=batch_size)
  index = stream.test_batches["index"]
  mask = stream.test_batches["mask"]
  starts = np.where(mask.any(1), index[:, 0], 0)
  ends = np.where(mask, index + 1, 0).max(1)
  return _make(stream.log, stream.offline_end, starts, ends, history_len,
               pad_multiple or batch_size, f"batch:{batch_size}")


def from_periods(log: InteractionLog, num_periods: int, pretrain_periods: int, *,
                 history_len: Optional[int] = None, pad_multiple: int = 256, mode: str = "count") -> Blocks:
  """SML-style blocks: ``num_periods`` periods (``mode`` of :func:`jaxrec.data.splits.periods`: equal
  counts, or equal time spans with ``"calendar"``, empty ones dropped), the first ``pretrain_periods``
  offline."""
  if not 1 <= pretrain_periods < num_periods:
    raise ValueError(f"from_periods: need 1 <= pretrain_periods < num_periods, got "
                     f"{pretrain_periods}, {num_periods}")
  parts = splits.periods(log, num_periods, mode=mode)
  bounds = np.cumsum([0] + [len(p) for p in parts])
  ordered = concat_logs(parts)
  return _make(ordered, bounds[pretrain_periods], bounds[pretrain_periods:-1],
               bounds[pretrain_periods + 1:], history_len, pad_multiple, f"periods:{num_periods}")


def parse(spec: str, log: InteractionLog, *, offline: float, pretrain_periods: int,
          history_len: Optional[int], pad_multiple: int) -> Blocks:
  """``"batch:B"`` -> :func:`from_prequential` (blocks of ``B`` rows); ``"periods:N"`` ->
  :func:`from_periods` (blocks padded to a multiple of ``pad_multiple``)."""
  kind, _, arg = spec.partition(":")
  if kind not in ("batch", "periods") or not arg.isdigit():
    raise ValueError(f"blocks must be 'batch:B' or 'periods:N', got {spec!r}")
  if kind == "batch":
    return from_prequential(log, int(arg), offline, history_len=history_len)
  return from_periods(log, int(arg), pretrain_periods, history_len=history_len, pad_multiple=pad_multiple)
