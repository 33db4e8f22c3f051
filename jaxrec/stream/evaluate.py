"""Per-block evaluation: each block's interactions ranked under full ranking and sampled negatives.

Block ``t``'s queries are its interactions (user, positive = the item, time, and for sequence models the
history window of :mod:`jaxrec.stream.blocks`). ``exclude_known``: full ranking drops, and the sampled
protocol never draws, the items the user interacted with *before the block* (offline prefix and earlier
blocks); the query's own positive is never excluded (:class:`jaxrec.eval.queries.Queries`). Sampled
candidates of block ``t`` are drawn from ``SeedSequence([seed, t])`` so every strategy ranks the same ones.
MeLON (paper 002) reports 1 positive + 99 sampled negatives per interaction, SML (paper 003, Sec.
4.1.3) 999; both are ``num_negatives``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxrec.eval import protocols as protocols_lib
from jaxrec.eval import suite
from jaxrec.eval.queries import Queries
from jaxrec.stream import blocks as blocks_lib


class BlockEvaluator:
  """``evaluator(params, t) -> {"full/NDCG@10": ..., "sampled99/HR@10": ..., "num_queries": n}``.

  Args:
    score_fn: the model's ``ScoreFn`` (hashable, e.g. ``registry.get(name).score_fn(module)``).
    data: the stream's :class:`~jaxrec.stream.blocks.Blocks`.
    num_negatives: sampled negatives per query (0: full ranking only).
    seed: seed of the sampled candidates.
    exclude_known: exclude the user's items from before the block.
    full: also evaluate full ranking.
    ks: metric cut-offs.
    batch_size: queries per device call.
  """

  def __init__(self, score_fn, data: blocks_lib.Blocks, *, num_negatives: int = 99, seed: int = 0,
               exclude_known: bool = True, full: bool = True, ks: Sequence[int] = (10,),
               batch_size: int = 256):
    self.score_fn = score_fn
    self.data = data
    self.num_negatives = num_negatives
    self.seed = seed
    self.exclude_known = exclude_known
    self.full = full
    self.ks = tuple(ks)
    self.batch_size = batch_size

  def queries(self, t: int) -> Queries:
    lo, hi = int(self.data.starts[t]), int(self.data.ends[t])
    feats = {k: v[lo:hi] for k, v in self.data.examples.items() if k in ("history", "history_mask")}
    known = [self.data.prefix_log(lo)] if self.exclude_known else []
    return Queries.from_log(self.data.block_log(t), known, features=feats)

  def protocols(self, t: int) -> dict:
    out = {}
    if self.full:
      out["full"] = protocols_lib.FullRanking()
    if self.num_negatives:
      seed = int(np.random.SeedSequence([self.seed, t]).generate_state(1)[0])
      out[f"sampled{self.num_negatives}"] = protocols_lib.Sampled(self.num_negatives, seed=seed)
    return out

  def __call__(self, params, t: int) -> dict:
    queries = self.queries(t)
    res = suite.evaluate_all(self.score_fn, params, queries, self.data.num_items, self.protocols(t),
                             ks=self.ks, batch_size=self.batch_size)
    out = {"num_queries": len(queries)}
    for name, r in res.items():
      out.update({f"{name}/{k}": float(v) for k, v in r["summary"].items() if k != "num_queries"})
    return out
