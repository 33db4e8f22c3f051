"""TP's evaluation by user group (paper 001, Sec. 4.3): existing / new users x head / tail users."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from jaxrec.eval import protocols, segments
from jaxrec.eval.queries import Queries

GROUPS = ("existing", "new", "existing/head", "existing/tail", "new/head", "new/tail")


def group_labels(counts: np.ndarray, new_users: np.ndarray, head_fraction: float = 0.2) -> np.ndarray:
  """str ``[num_users]``: ``"existing/head"``, ``"existing/tail"``, ``"new/head"`` or ``"new/tail"``.

  Sec. 4.3's breakdown: users are existing or new (``new_users``, bool ``[num_users]``), and within each
  group the ``ceil(head_fraction * U_g)`` users with the most interactions (``counts``, e.g. before the
  test item; ``U_g`` = the group's users with a count > 0) are head users, ties by the smaller user
  index (:func:`jaxrec.eval.segments.head_tail` on the group's counts). Users with no interaction are
  labelled tail of their group (they have no queries to score).
  """
  counts, new_users = np.asarray(counts), np.asarray(new_users, bool)
  if counts.shape != new_users.shape:
    raise ValueError(f"group_labels: counts {counts.shape} and new_users {new_users.shape} differ")
  labels = np.empty(counts.shape[0], dtype=object)
  for group, mask in (("existing", ~new_users), ("new", new_users)):
    ht = segments.head_tail(np.where(mask, counts, 0), np.flatnonzero(mask), head_fraction)
    labels[mask] = np.char.add(f"{group}/", ht.astype(str))
  return labels.astype(str)


def evaluate_groups(score_fn, params, queries: Queries, rankings: Mapping[str, object], num_items: int,
                    labels: np.ndarray, ks: Sequence[int] = (5, 10, 20)) -> dict:
  """``{protocol: {"protocol", "summary", "segments": {group: metrics}}}`` for the six :data:`GROUPS`.

  ``rankings``: name -> protocol (frozen candidates, e.g. :func:`jaxrec.eval.suite.freeze_protocols`);
  ``labels``: :func:`group_labels`, indexed by each query's user.
  """
  out = {}
  for name, protocol in rankings.items():
    r = protocols.evaluate(score_fn, params, queries, protocol, num_items, ks=ks)
    fine = np.asarray(labels)[r.users]
    coarse = np.where(np.char.startswith(fine, "new/"), "new", "existing")
    segs = {**segments.breakdown(r.per_query, coarse), **segments.breakdown(r.per_query, fine)}
    out[name] = {"protocol": r.protocol_desc, "summary": r.summary, "segments": segs}
  return out
