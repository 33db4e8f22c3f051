"""SML's evaluation of a period (paper 003, Sec. 4.1.3), next to full ranking.

"For each testing interaction, the method outputs a ranking list on the 1 interacted item and 999
non-interacted items." As the authors' code does, the negatives of an interaction of block ``t`` are
drawn uniformly without replacement from the items *seen so far* (in any row before the block) minus the
user's history so far; unlike that code (whose rejection sampler loops forever when fewer than 999 such
items remain), a query with ``m < 999`` candidates ranks its positive among all ``m``
(:func:`sample_seen_negatives`: random keys over the allowed items, the ``n`` smallest kept, so it always
terminates). Recall@K is the hit of the single positive and NDCG@K ``1 / log2(rank + 1)``
(:func:`jaxrec.eval.metrics.metrics_from_ranks`); ties count against the positive.

:class:`PeriodEvaluator` is an ``evaluate_fn(params, t)`` for :func:`jaxrec.stream.loop.run`: it reads
rows before block ``t`` (history, seen items) and block ``t`` itself (the queries), never later rows.
Candidates of block ``t`` are drawn from ``SeedSequence([seed, first row of the block])``, so every
strategy ranks the same ones, also when its stream starts at another period. Blocks outside ``blocks``
(e.g. SML's training periods) return ``{}`` to save time.

Interaction types (Sec. 4.5.1, Fig. 6): with ``types_from`` (a row index, the first test period's first
row), a user is *new* when no row before ``types_from`` has them ("users that only occur in the testing
data"), an item likewise, and every scored block from ``types_from`` on also reports the sampled metrics
of each type ``OU-OI``, ``OU-NI``, ``NU-OI``, ``NU-NI`` (``sampled999/Recall@20/OU-NI``) and its count
(``types/OU-NI``); a type without queries in a block reports only its zero count.
"""

from __future__ import annotations

import functools
from typing import Iterable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.eval import metrics as metrics_lib
from jaxrec.stream import blocks as blocks_lib
from jaxrec.stream import evaluate as stream_eval


INTERACTION_TYPES = ("OU-OI", "OU-NI", "NU-OI", "NU-NI")


def sample_seen_negatives(users: np.ndarray, positives: np.ndarray, seen: np.ndarray,
                          history_users: np.ndarray, history_items: np.ndarray, n: int,
                          rng: np.random.Generator, chunk: int = 256) -> np.ndarray:
  """``[Q, n]`` negatives (``-1`` = none: fewer than ``n`` allowed items) per query.

  Allowed for query ``q``: items with ``seen[i]``, not in user ``users[q]``'s history (the pairs
  ``(history_users, history_items)``), not ``positives[q]``; ``n`` of them drawn uniformly without
  replacement, or all of them (in random order) when fewer exist.
  """
  q, num_items = len(users), seen.shape[0]
  out = np.full((q, n), -1, np.int32)
  order = np.argsort(history_users, kind="stable")
  hu, hi = history_users[order], history_items[order]
  for s in range(0, q, chunk):
    u = users[s:s + chunk]
    allowed = np.broadcast_to(seen, (len(u), num_items)).copy()
    lo, hi_ = np.searchsorted(hu, u, "left"), np.searchsorted(hu, u, "right")
    rows = np.repeat(np.arange(len(u)), hi_ - lo)
    cols = hi[np.concatenate([np.arange(a, b) for a, b in zip(lo, hi_)])] if len(rows) else rows
    allowed[rows, cols] = False
    allowed[np.arange(len(u)), positives[s:s + chunk]] = False
    keys = np.where(allowed, rng.random(allowed.shape), np.inf)
    k = min(n, num_items)
    part = np.argpartition(keys, k - 1, axis=1)[:, :k] if k < num_items else np.argsort(keys, axis=1)
    part = np.take_along_axis(part, np.argsort(np.take_along_axis(keys, part, 1), axis=1), 1)
    ok = np.isfinite(np.take_along_axis(keys, part, 1))
    out[s:s + chunk, :k] = np.where(ok, part, -1)
  return out


@functools.partial(jax.jit, static_argnames=("score_fn",))
def _ranks(score_fn, params, queries, cands):
  """Rank of ``cands[:, 0]`` among the valid (``>= 0``) entries of ``cands`` ``[B, 1 + n]``.

  A candidate counts against the positive unless it scores strictly lower (ties and NaN scores count
  against it, the rule of :mod:`jaxrec.eval.protocols`): a model that outputs NaN ranks last, not first.
  """
  s = score_fn(params, queries, jnp.maximum(cands, 0))
  valid = cands[:, 1:] >= 0
  return 1 + jnp.sum(valid & ~(s[:, 1:] < s[:, :1]), axis=1, dtype=jnp.int32)


class PeriodEvaluator:
  """``evaluator(params, t) -> {"sampled999/Recall@20": ..., "full/NDCG@20": ..., "num_queries": n}``.

  Args:
    score_fn: the model's hashable ``ScoreFn`` (user models: reads ``queries["user"]``).
    data: the stream's blocks.
    num_negatives: sampled negatives (paper 999; 0: full ranking only).
    seed: seed of the candidates.
    ks: cut-offs (paper 5, 10, 20).
    full: also full ranking (the user's earlier items excluded), through
      :class:`jaxrec.stream.evaluate.BlockEvaluator`.
    blocks: block indices to evaluate (None: all).
    batch_size: queries per device call.
    types_from: first row of the test periods: blocks from there on also report the metrics per
      interaction type (see the module docstring); None: not.
  """

  def __init__(self, score_fn, data: blocks_lib.Blocks, *, num_negatives: int = 999, seed: int = 0,
               ks: Sequence[int] = (5, 10, 20), full: bool = True, blocks: Optional[Iterable[int]] = None,
               batch_size: int = 256, types_from: Optional[int] = None):
    self.types_from = None if types_from is None else int(types_from)
    self.score_fn, self.data, self.n, self.seed = score_fn, data, int(num_negatives), seed
    self.ks, self.batch_size = tuple(ks), batch_size
    self.blocks = None if blocks is None else frozenset(int(b) for b in blocks)
    self.full = stream_eval.BlockEvaluator(score_fn, data, num_negatives=0, exclude_known=True,
                                           ks=self.ks, batch_size=batch_size) if full else None
    self._cands = {}
    self._old = None

  def _types(self, lo: int, hi: int) -> np.ndarray:
    """Interaction types of rows ``[lo, hi)``; the old users / items (rows before ``types_from``) are
    found once."""
    ex, f = self.data.examples, self.types_from
    if self._old is None:
      self._old = (np.zeros(self.data.num_users, bool), np.zeros(self.data.num_items, bool))
      self._old[0][ex["user"][:f]] = True
      self._old[1][ex["positive"][:f]] = True
    old_u, old_i = self._old
    return 2 * (~old_u[ex["user"][lo:hi]]).astype(np.int64) + (~old_i[ex["positive"][lo:hi]]).astype(np.int64)

  def candidates(self, t: int) -> np.ndarray:
    """``[Q, 1 + n]`` candidates of block ``t`` (positive first, ``-1`` padding), drawn once."""
    if t not in self._cands:
      lo, hi = int(self.data.starts[t]), int(self.data.ends[t])
      ex = self.data.examples
      seen = np.zeros(self.data.num_items, bool)
      seen[ex["positive"][:lo]] = True
      rng = np.random.default_rng(np.random.SeedSequence([self.seed, lo]))
      neg = sample_seen_negatives(ex["user"][lo:hi], ex["positive"][lo:hi], seen, ex["user"][:lo],
                                  ex["positive"][:lo], self.n, rng)
      self._cands[t] = np.concatenate([ex["positive"][lo:hi, None].astype(np.int32), neg], axis=1)
    return self._cands[t]

  def sampled_ranks(self, params, t: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ranks, num_candidates)`` of block ``t``'s queries under the sampled protocol."""
    cands = self.candidates(t)
    lo, hi = int(self.data.starts[t]), int(self.data.ends[t])
    ex = self.data.examples  # sequence models also read the history window before each row
    feats = {k: ex[k][lo:hi] for k in ("user", "history", "history_mask") if k in ex}
    q, b = hi - lo, int(min(self.batch_size, max(hi - lo, 1)))
    outs = []
    for s in range(0, q, b):
      idx = np.minimum(np.arange(s, s + b), q - 1)  # pad the last batch with a real row
      outs.append(_ranks(self.score_fn, params, {k: v[idx] for k, v in feats.items()}, cands[idx]))
    ranks = np.concatenate([np.asarray(r) for r in jax.device_get(outs)])[:q].astype(np.int64)
    return ranks, 1 + (cands[:, 1:] >= 0).sum(1).astype(np.int64)

  def __call__(self, params, t: int) -> dict:
    if self.blocks is not None and t not in self.blocks:
      return {}
    out = {}
    if self.n:
      ranks, ncand = self.sampled_ranks(params, t)
      per = metrics_lib.metrics_from_ranks(ranks, ncand, self.ks)
      name = f"sampled{self.n}"
      out.update({f"{name}/{k}": float(np.mean(v)) for k, v in per.items()
                  if k.startswith(("Recall@", "NDCG@"))})
      out["num_queries"] = len(ranks)
      out[f"{name}/min_candidates"] = int(ncand.min(initial=0))
      lo, hi = int(self.data.starts[t]), int(self.data.ends[t])
      if self.types_from is not None and lo >= self.types_from:
        kind = self._types(lo, hi)
        for j, label in enumerate(INTERACTION_TYPES):
          sel = kind == j
          out[f"types/{label}"] = int(sel.sum())
          if sel.any():
            out.update({f"{name}/{k}/{label}": float(np.mean(v[sel])) for k, v in per.items()
                        if k.startswith(("Recall@", "NDCG@"))})
    if self.full is not None:
      out.update({k: v for k, v in self.full(params, t).items()
                  if k == "num_queries" or k.split("/")[-1].startswith(("Recall@", "NDCG@"))})
    return out
