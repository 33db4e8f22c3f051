"""Top-K ranking metrics computed from the rank of each positive.

Rank convention (shared by every protocol, see ARCHITECTURE.md): the rank of a positive is

    rank = 1 + #{other candidates c : score(c) >= score(positive)},

so ties count against the positive: a model that gives every item the same score gets the worst rank
(``num_candidates``), not the best. Excluded items (known positives) are not candidates.

Single positive per query (leave-one-out, next-item), with ``r`` the rank and ``n`` the number of
candidates including the positive:

* ``HR@K = Recall@K = [r <= K]``
* ``Precision@K = [r <= K] / K``
* ``NDCG@K = [r <= K] / log2(r + 1)`` (IDCG = 1)
* ``MRR = 1 / r`` (untruncated)
* ``AUC = 1 - (r - 1) / (n - 1)`` (fraction of negatives scored strictly below the positive).

Several positives per group (e.g. all test items of a user, as in the tree two-stage paper, 004 Sec. 5:
``Recall@K = |top-K ∩ truth| / |truth|``): each positive's rank is its position in the full list (other
positives of the group are competitors, not exclusions), and for a group with positive ranks ``r_i``,
``i = 1..m``:

* ``HR@K = [min_i r_i <= K]``, ``Recall@K = #{i : r_i <= K} / m``, ``Precision@K = #{i : r_i <= K} / K``
* ``NDCG@K = sum_{r_i <= K} 1 / log2(r_i + 1) / sum_{j=1}^{min(m, K)} 1 / log2(j + 1)``
* ``MRR = 1 / min_i r_i``
* ``AUC = mean_i (1 - b_i / (n - m))`` where ``b_i = r_i - #{j : r_j <= r_i}`` is the number of negatives
  scored at or above positive ``i``.

Two positives of a group with equal scores each count the other (both get the worse position).

With ``m = 1`` these reduce to the single-positive formulas. Everything here is host numpy: ranks are
small ``[Q]`` integer arrays that come back from the device once per evaluation.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

DEFAULT_KS = (1, 5, 10, 20, 50)


def _check(ranks: np.ndarray, num_candidates: np.ndarray) -> None:
  if ranks.ndim != 1:
    raise ValueError(f"ranks must be 1-D [Q], got shape {ranks.shape}")
  if ranks.size and ranks.min() < 1:
    raise ValueError(f"ranks must be >= 1, got min {ranks.min()}")
  if ranks.size and np.any(ranks > num_candidates):
    raise ValueError("ranks must be <= num_candidates")


def metrics_from_ranks(ranks, num_candidates, ks: Sequence[int] = DEFAULT_KS) -> dict[str, np.ndarray]:
  """Per-query metrics for single-positive queries.

  Args:
    ranks: int ``[Q]`` 1-based ranks of the positives (ties counted against the positive).
    num_candidates: int ``[Q]`` or scalar, candidates per query including the positive.
    ks: cut-offs K.

  Returns:
    ``{"HR@K", "Recall@K", "NDCG@K", "Precision@K" for each K, "MRR", "AUC"}`` -> float64 ``[Q]``.
  """
  ranks = np.asarray(ranks, np.int64)
  n = np.broadcast_to(np.asarray(num_candidates, np.int64), ranks.shape)
  _check(ranks, n)
  out = {}
  gain = 1.0 / np.log2(ranks + 1.0)
  for k in ks:
    hit = (ranks <= k).astype(np.float64)
    out[f"HR@{k}"] = hit
    out[f"Recall@{k}"] = hit
    out[f"NDCG@{k}"] = hit * gain
    out[f"Precision@{k}"] = hit / k
  out["MRR"] = 1.0 / ranks
  out["AUC"] = np.where(n > 1, 1.0 - (ranks - 1) / np.maximum(n - 1, 1), 1.0)
  return out


def grouped_metrics(ranks, num_candidates, group, ks: Sequence[int] = DEFAULT_KS
                    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """Per-group metrics for queries sharing a ground-truth set (several positives per group).

  Args:
    ranks: int ``[Q]`` rank of each positive in the full candidate list of its group.
    num_candidates: int ``[Q]`` or scalar candidates (positives included); equal within a group.
    group: int ``[Q]`` group id of each query (e.g. the user).
    ks: cut-offs K.

  Returns:
    ``(group_ids [G], {name: float64 [G]})`` with the group ids sorted ascending.
  """
  ranks = np.asarray(ranks, np.int64)
  n = np.broadcast_to(np.asarray(num_candidates, np.int64), ranks.shape)
  group = np.asarray(group)
  if group.shape != ranks.shape:
    raise ValueError(f"group has shape {group.shape}, expected {ranks.shape}")
  _check(ranks, n)
  gids, ginv = np.unique(group, return_inverse=True)
  num_g = gids.shape[0]
  m = np.bincount(ginv, minlength=num_g)
  cand = np.zeros(num_g, np.int64)
  cand[ginv] = n
  # #{j in group : r_j <= r_i} via sorted composite keys.
  key = ginv.astype(np.int64) * (int(ranks.max(initial=0)) + 1) + ranks
  skey = np.sort(key)
  start = np.concatenate([[0], np.cumsum(m)[:-1]])
  at_or_above = np.searchsorted(skey, key, side="right") - start[ginv]
  neg_above = ranks - at_or_above
  neg = np.maximum(cand - m, 1)
  auc = np.bincount(ginv, 1.0 - neg_above / neg[ginv], minlength=num_g) / m
  best = np.full(num_g, np.iinfo(np.int64).max)
  np.minimum.at(best, ginv, ranks)
  out = {}
  gain = 1.0 / np.log2(ranks + 1.0)
  kmax = max(ks)
  idcg_table = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(1, kmax + 1) + 1.0))])
  for k in ks:
    hit = ranks <= k
    nhit = np.bincount(ginv, hit, minlength=num_g)
    out[f"HR@{k}"] = (best <= k).astype(np.float64)
    out[f"Recall@{k}"] = nhit / m
    out[f"NDCG@{k}"] = np.bincount(ginv, hit * gain, minlength=num_g) / idcg_table[np.minimum(m, k)]
    out[f"Precision@{k}"] = nhit / k
  out["MRR"] = 1.0 / best
  out["AUC"] = np.where(cand > m, auc, 1.0)
  return gids, out


def summarize(per_query: Mapping[str, np.ndarray], weights: Optional[np.ndarray] = None) -> dict[str, float]:
  """Weighted means of per-query metrics.

  Args:
    per_query: ``{name: [Q]}`` as returned by :func:`metrics_from_ranks`.
    weights: optional ``[Q]`` non-negative weights or a boolean mask; default uniform.

  Returns:
    ``{name: mean}``; ``nan`` when the total weight is zero.
  """
  out = {}
  for name, vals in per_query.items():
    vals = np.asarray(vals, np.float64)
    w = np.ones_like(vals) if weights is None else np.asarray(weights, np.float64)
    if w.shape != vals.shape:
      raise ValueError(f"summarize: weights shape {w.shape} does not match metric '{name}' {vals.shape}")
    tot = w.sum()
    out[name] = float((vals * w).sum() / tot) if tot > 0 else float("nan")
  return out
