"""One call that evaluates a model under several protocols, with per-segment breakdowns.

Every experiment binary reports sampled and full-ranking metrics side by side and breaks them down by
user segment; this module is the one place that does it, so all methods are scored identically.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from jaxrec.eval import protocols as protocols_lib
from jaxrec.eval import segments as segments_lib
from jaxrec.eval.metrics import DEFAULT_KS
from jaxrec.eval.queries import Queries


def freeze_protocols(protocols: Mapping[str, protocols_lib.Protocol], queries: Queries,
                     num_items: int) -> dict[str, protocols_lib.Protocol]:
  """Draws sampled candidates once so every model (and every epoch) ranks the same candidates."""
  return {name: (p.draw(queries, num_items) if isinstance(p, protocols_lib.Sampled) else p)
          for name, p in protocols.items()}


def evaluate_all(score_fn, params, queries: Queries, num_items: int,
                 protocols: Mapping[str, protocols_lib.Protocol], *,
                 train_counts: Optional[np.ndarray] = None, new_users: Optional[np.ndarray] = None,
                 activity_edges: Optional[Sequence[float]] = None, ks: Sequence[int] = DEFAULT_KS,
                 batch_size: int = 256) -> dict:
  """Evaluates ``score_fn`` under every protocol.

  Args:
    score_fn: the ARCHITECTURE.md ``ScoreFn`` ``(params, queries, items) -> [B, C]``.
    params: the parameters it scores with.
    queries: evaluation queries.
    num_items: size of the item index space.
    protocols: ``{name: protocol}`` (e.g. ``paper_protocols.get(name).rankings()``, then
      :func:`freeze_protocols`).
    train_counts: training interactions per user; enables activity-bucket and head/tail breakdowns.
    new_users: bool ``[num_users]`` mask of users unseen in training; enables existing/new breakdown.
    activity_edges: bucket edges for the activity breakdown (default: quantile-free fixed edges).
    ks: metric cut-offs.
    batch_size: queries per device call.

  Returns:
    ``{protocol_name: {"protocol": description, "summary": {...}, "segments": {kind: {label: {...}}}}}``.
  """
  out = {}
  for name, protocol in protocols.items():
    res = protocols_lib.evaluate(score_fn, params, queries, protocol, num_items, batch_size=batch_size, ks=ks)
    segs = {}
    if train_counts is not None:
      counts = np.asarray(train_counts)
      edges = activity_edges or _default_edges(int(counts.max(initial=0)))
      segs["activity"] = segments_lib.breakdown(res.per_query,
                                                segments_lib.activity_buckets(counts, res.users, edges))
      segs["head_tail"] = segments_lib.breakdown(res.per_query, segments_lib.head_tail(counts, res.users))
    if new_users is not None:
      segs["existing_new"] = segments_lib.breakdown(
          res.per_query, segments_lib.existing_new(res.users, new_users))
    out[name] = {"protocol": res.protocol_desc, "summary": res.summary, "segments": segs}
  return out


def _default_edges(max_count: int) -> list[float]:
  edges = [0, 1, 5, 10, 20, 50, 100, 200, 500, 1000]
  return [e for e in edges if e <= max_count] + [float("inf")]


def flat_row(results: Mapping[str, dict], metrics: Sequence[str] = ("NDCG@10", "HR@10", "MRR")) -> dict:
  """``{"<protocol> <metric>": value}`` for a report table row."""
  row = {}
  for pname, res in results.items():
    for m in metrics:
      if m in res["summary"]:
        row[f"{pname} {m}"] = float(res["summary"][m])
  return row
