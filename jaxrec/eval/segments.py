"""Per-segment breakdowns of per-query metrics (activity buckets, head/tail users, existing/new users).

Segment labellers map each row of ``EvalResult.per_query`` (via ``EvalResult.users``) to a string label;
:func:`breakdown` then summarises the metrics within each label. Counts of all segments add up to the
number of rows, so a breakdown is a partition of the evaluated queries.
"""

from __future__ import annotations

import re
from typing import Mapping, Optional, Sequence

import numpy as np

from jaxrec.eval.metrics import summarize

DEFAULT_EDGES = (0, 5, 10, 20, 50, 100, np.inf)


def _fmt(x) -> str:
  return "inf" if np.isinf(x) else str(int(x))


def activity_buckets(train_counts: np.ndarray, users: np.ndarray,
                     edges: Sequence[float] = DEFAULT_EDGES) -> np.ndarray:
  """Labels ``"[lo,hi)"`` of each user's number of training interactions.

  Args:
    train_counts: int ``[num_users]`` training interactions per user (``InteractionLog.user_counts``).
    users: int ``[R]`` user of each row.
    edges: increasing bucket edges; a user with count ``c`` falls in ``[edges[k], edges[k+1])``.

  Returns:
    str ``[R]`` labels.
  """
  edges = np.asarray(edges, np.float64)
  if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
    raise ValueError(f"activity_buckets: edges must be strictly increasing with >= 2 values, got {edges}")
  c = np.asarray(train_counts)[np.asarray(users)]
  if c.size and (c.min() < edges[0] or c.max() >= edges[-1]):
    raise ValueError(f"activity_buckets: counts in [{c.min()}, {c.max()}] fall outside edges "
                     f"[{edges[0]}, {edges[-1]})")
  k = np.searchsorted(edges, c, side="right") - 1
  names = np.array([f"[{_fmt(lo)},{_fmt(hi)})" for lo, hi in zip(edges[:-1], edges[1:])])
  return names[k]


def head_tail(train_counts: np.ndarray, users: np.ndarray, head_fraction: float = 0.2) -> np.ndarray:
  """Labels ``"head"`` / ``"tail"``: head = the ``ceil(head_fraction * U)`` most active users.

  ``U`` is the number of users with at least one training interaction; users are ordered by training
  count (descending) with ties broken by the smaller user index, so the head has exactly that size.
  """
  if not 0.0 <= head_fraction <= 1.0:
    raise ValueError(f"head_tail: head_fraction must be in [0, 1], got {head_fraction}")
  counts = np.asarray(train_counts)
  active = np.flatnonzero(counts > 0)
  order = active[np.lexsort((active, -counts[active]))]
  head = np.zeros(counts.shape[0], bool)
  head[order[: int(np.ceil(head_fraction * active.size))]] = True
  return np.where(head[np.asarray(users)], "head", "tail")


def existing_new(users: np.ndarray, new_users: np.ndarray, num_users: Optional[int] = None) -> np.ndarray:
  """Labels ``"new"`` / ``"existing"``; ``new_users`` is a bool ``[num_users]`` mask or an id array."""
  users = np.asarray(users)
  new_users = np.asarray(new_users)
  if new_users.dtype == bool:
    mask = new_users
  else:
    if num_users is None:
      num_users = max(users.max(initial=-1), new_users.max(initial=-1)) + 1
    size = int(num_users)
    mask = np.zeros(size, bool)
    mask[new_users] = True
  return np.where(mask[users], "new", "existing")


def _order_key(label: str):
  m = re.match(r"\D*(-?\d+(\.\d+)?)", label)
  return (0, float(m.group(1)), label) if m else (1, 0.0, label)


def breakdown(per_query: Mapping[str, np.ndarray], labels: np.ndarray,
              weights: Optional[np.ndarray] = None) -> dict[str, dict]:
  """Summary of ``per_query`` metrics within each segment.

  Args:
    per_query: ``{metric: [R]}`` (e.g. ``EvalResult.per_query``).
    labels: ``[R]`` segment label of each row.
    weights: optional ``[R]`` row weights.

  Returns:
    ``{label: {"count": rows, metric: mean, ...}}`` ordered by the label's leading number, then name.
  """
  labels = np.asarray(labels)
  sizes = {np.shape(v) for v in per_query.values()}
  if sizes and sizes != {labels.shape}:
    raise ValueError(f"breakdown: labels have shape {labels.shape}, metrics have shapes {sizes}")
  out = {}
  for label in sorted({str(x) for x in np.unique(labels)}, key=_order_key):
    sel = labels == label
    sub = {k: np.asarray(v)[sel] for k, v in per_query.items()}
    summ = summarize(sub, None if weights is None else np.asarray(weights)[sel])
    out[label] = {"count": int(sel.sum()), **summ}
  return out
