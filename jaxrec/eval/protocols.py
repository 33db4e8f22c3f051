"""Evaluation protocols: full ranking and sampled negatives, from a ``ScoreFn`` to metrics.

Both protocols produce the rank of each query's positive with the convention of ARCHITECTURE.md and
:mod:`jaxrec.eval.metrics`: ``rank = 1 + #{other candidates with score >= the positive's}``. Ties count
against the positive, so a model scoring every item equally gets the worst rank. A NaN score also counts
against the positive (a NaN candidate beats it; a NaN positive is beaten by everything).

* :class:`FullRanking`: every item is a candidate except the user's known positives (the positive itself
  is never excluded). One jitted function per batch shape scores the positive (``[B, 1]``), then loops
  over static-size item chunks with ``lax.fori_loop`` (last chunk padded and masked), counting candidates
  that beat the positive and subtracting the positive itself and the excluded items (gathered from the
  same chunk scores, so the comparison uses identical numbers). Memory is ``O(B x chunk_size)``; the
  ``B x N`` score matrix is never materialised.
* :class:`Sampled`: ``1`` positive + ``num_negatives`` distinct negatives per query, drawn once on the
  host from ``np.random.default_rng(seed)`` (uniform, or proportional to training popularity),
  never a known positive nor the positive, so every model is evaluated on the same candidates.
  :meth:`Sampled.draw` returns them as a :class:`Candidates` protocol that can be reused across epochs.

Score functions are ``functools.partial(fn, params, ...)`` in practice; the array leaves of a partial's
arguments are passed to the jitted kernel as arguments (not baked in as constants), so re-evaluating a
model with new parameters of the same shapes does not recompile.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.data.log import DataError
from jaxrec.eval import metrics as metrics_lib
from jaxrec.eval.queries import Queries

ScoreFn = Callable[[Mapping[str, jax.Array], jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class FullRanking:
  """Rank the positive against every non-excluded item, scored in chunks of ``chunk_size`` items."""

  chunk_size: int = 2048

  def __post_init__(self):
    if not 1 <= self.chunk_size < 2**24:
      raise ValueError(f"FullRanking: chunk_size must be in [1, 2^24), got {self.chunk_size}")

  def describe(self, num_items: int, queries: Queries) -> str:
    excl = "known positives excluded" if queries.known_items.size else "no exclusions"
    return f"full ranking over {num_items} items, {excl}"


@dataclasses.dataclass(frozen=True, eq=False)
class Candidates:
  """Fixed per-query candidates ``items[:, 0]`` = positive, ``items[:, 1:]`` = negatives."""

  items: np.ndarray
  desc: str

  def describe(self, num_items: int, queries: Queries) -> str:
    del num_items, queries
    return self.desc


@dataclasses.dataclass(frozen=True, eq=False)
class Sampled:
  """``num_negatives`` sampled negatives per query (uniform or popularity-weighted), drawn once.

  Attributes:
    num_negatives: negatives per query (distinct within a query).
    seed: seed of the host generator; same seed and queries -> same candidates.
    popularity: draw negatives proportionally to ``item_counts`` instead of uniformly.
    item_counts: float ``[num_items]`` training counts, required when ``popularity`` is set.
    block_rows: queries drawn per host block (bounds host memory).
  """

  num_negatives: int = 99
  seed: int = 0
  popularity: bool = False
  item_counts: Optional[np.ndarray] = None
  block_rows: int = 4096

  def describe(self, num_items: int = 0, queries: Optional[Queries] = None) -> str:
    del num_items, queries
    kind = "popularity-weighted" if self.popularity else "uniform"
    return (f"1 positive + {self.num_negatives} sampled negatives ({kind}, seed {self.seed}, "
            "excluding known positives)")

  def draw(self, queries: Queries, num_items: int) -> Candidates:
    """Draws the candidates ``[Q, 1 + num_negatives]`` (positive first) for every query."""
    n = int(self.num_negatives)
    rng = np.random.default_rng(self.seed)
    weights = None
    if self.popularity:
      if self.item_counts is None or np.shape(self.item_counts) != (num_items,):
        raise DataError(f"Sampled(popularity=True) needs item_counts of shape ({num_items},), got "
                        f"{None if self.item_counts is None else np.shape(self.item_counts)}")
      weights = np.asarray(self.item_counts, np.float64)
    out = np.empty((len(queries), 1 + n), np.int32)
    out[:, 0] = queries.positive
    width = int(queries.num_known().max(initial=0))
    for s in range(0, len(queries), self.block_rows):
      idx = np.arange(s, min(s + self.block_rows, len(queries)))
      excl = _sorted_exclusions(queries, idx, width)
      if weights is None:
        out[idx, 1:] = _uniform_negatives(rng, excl, num_items, n, queries.user[idx])
      else:
        out[idx, 1:] = _popularity_negatives(rng, excl, weights, n, queries.user[idx])
    return Candidates(items=out, desc=self.describe())


Protocol = Union[FullRanking, Sampled, Candidates]


@dataclasses.dataclass(frozen=True)
class EvalResult:
  """Outcome of :func:`evaluate`.

  Attributes:
    ranks: int64 ``[Q]`` rank of each query's positive.
    num_candidates: int64 ``[Q]`` candidates of each query (positive included).
    per_query: ``{metric: float64 [R]}``; ``R = Q``, or the number of groups when queries have groups.
    users: int ``[R]`` user of each row of ``per_query`` (for segment breakdowns).
    group_ids: ``[R]`` group ids, or ``None`` for single-positive queries.
    summary: ``{metric: mean over rows}`` plus ``"num_queries"``.
    protocol_desc: one-line description of the protocol for reports.
  """

  ranks: np.ndarray
  num_candidates: np.ndarray
  per_query: dict
  users: np.ndarray
  group_ids: Optional[np.ndarray]
  summary: dict
  protocol_desc: str


# -- sampling (host) -----------------------------------------------------------------------------


def _sorted_exclusions(queries: Queries, idx: np.ndarray, width: int) -> np.ndarray:
  """Sorted known items + positive per query, ``[n, width + 1]`` padded with ``INT32_MAX``."""
  excl = queries.exclusion_matrix(idx, width=max(width, 1))
  full = np.concatenate([excl, queries.positive[idx, None]], axis=1).astype(np.int64)
  dup = (full == queries.positive[idx, None]).sum(1) > 1  # positive already known: drop the copy
  full[dup, -1] = -1
  full = np.where(full < 0, np.iinfo(np.int32).max, full)
  return np.sort(full, axis=1)


def _uniform_negatives(rng: np.random.Generator, excl: np.ndarray, num_items: int, n: int,
                       users: np.ndarray) -> np.ndarray:
  """``n`` distinct uniform draws per row from the items not in ``excl`` (sorted, padded)."""
  rows, m = excl.shape
  big = np.iinfo(np.int32).max
  size = (excl != big).sum(1)
  avail = num_items - size
  if rows and avail.min() < n:
    r = int(np.argmin(avail))
    raise DataError(f"Sampled: user {users[r]} has only {avail[r]} items to draw {n} negatives from "
                    f"({size[r] - 1} known positives, {num_items} items)")
  # Draw distinct ranks j in [0, avail) per row, then map the j-th allowed item: j + #{i : e_i - i <= j}.
  j = np.empty((rows, n), np.int64)
  dense = 2 * n > avail
  if dense.any():
    amax = int(avail[dense].max())
    keys = rng.random((int(dense.sum()), amax))
    keys[np.arange(amax)[None, :] >= avail[dense][:, None]] = np.inf
    j[dense] = np.argsort(keys, axis=1)[:, :n]
  sparse = ~dense
  if sparse.any():
    a = avail[sparse][:, None]
    js = np.floor(rng.random((int(sparse.sum()), n)) * a).astype(np.int64)
    while True:  # redraw duplicates; the result is a uniform n-subset by exchangeability
      js.sort(axis=1)
      dup = np.zeros(js.shape, bool)
      dup[:, 1:] = js[:, 1:] == js[:, :-1]
      if not dup.any():
        break
      js[dup] = np.floor(rng.random(int(dup.sum())) * np.broadcast_to(a, js.shape)[dup]).astype(np.int64)
    j[sparse] = js
  shifted = np.where(excl == big, num_items + 1, excl - np.arange(m)[None, :])
  w = 2 * num_items + 2
  flat = (shifted + np.arange(rows)[:, None] * w).ravel()
  cnt = np.searchsorted(flat, (j + np.arange(rows)[:, None] * w).ravel(), side="right").reshape(j.shape)
  cnt -= np.arange(rows)[:, None] * m
  return (j + cnt).astype(np.int32)


def _popularity_negatives(rng: np.random.Generator, excl: np.ndarray, weights: np.ndarray, n: int,
                          users: np.ndarray) -> np.ndarray:
  """``n`` distinct draws per row proportional to ``weights`` (Gumbel top-k), excluding ``excl``."""
  rows = excl.shape[0]
  with np.errstate(divide="ignore"):
    logw = np.log(weights)
  keys = logw[None, :] - np.log(-np.log(rng.random((rows, weights.shape[0]))))
  r_idx = np.broadcast_to(np.arange(rows)[:, None], excl.shape)
  ok = excl < weights.shape[0]
  keys[r_idx[ok], excl[ok]] = -np.inf
  avail = np.isfinite(keys).sum(1)
  if rows and avail.min() < n:
    r = int(np.argmin(avail))
    raise DataError(f"Sampled(popularity=True): user {users[r]} has only {avail[r]} items with non-zero "
                    f"training count to draw {n} negatives from")
  top = np.argpartition(-keys, n - 1, axis=1)[:, :n] if n else np.zeros((rows, 0), np.int64)
  return top.astype(np.int32)


# -- score function plumbing ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Static:
  """Hashable, array-free part of a score function (its array leaves travel as jit arguments)."""

  func: Any
  treedef: Any
  leaves: tuple

  def rebuild(self, dyn: Sequence[Any]) -> ScoreFn:
    if self.treedef is None:
      return self.func
    it = iter(dyn)
    leaves = [next(it) if l is _ARRAY else l for l in self.leaves]
    args, kwargs = jax.tree.unflatten(self.treedef, leaves)
    return functools.partial(self.func, *args, **kwargs)


class _ArrayMarker:

  def __repr__(self):
    return "<array>"


_ARRAY = _ArrayMarker()


class _ById:
  """Wraps an unhashable callable so it can be a static jit argument (hashed by identity)."""

  def __init__(self, fn):
    self.fn = fn

  def __call__(self, *args, **kwargs):
    return self.fn(*args, **kwargs)


def _split_score_fn(score_fn: ScoreFn) -> tuple[_Static, list]:
  if isinstance(score_fn, functools.partial):
    leaves, treedef = jax.tree.flatten((score_fn.args, score_fn.keywords))
    is_arr = [isinstance(l, (np.ndarray, jax.Array)) for l in leaves]
    dyn = [l for l, a in zip(leaves, is_arr) if a]
    static = _Static(score_fn.func, treedef, tuple(_ARRAY if a else l for l, a in zip(leaves, is_arr)))
  else:
    static, dyn = _Static(score_fn, None, ()), []
  try:
    hash(static)
  except TypeError:
    static = _Static(_ById(score_fn), None, ())
    dyn = []
  return static, dyn


# -- device kernels -------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("static", "num_items", "chunk_size"))
def _full_ranks(static: _Static, dyn, batch, positive, excl, *, num_items: int, chunk_size: int):
  """Ranks ``[B]`` of ``positive`` among all items minus ``excl`` (``[B, M]``, -1 padded).

  Every chunk counts all its items that beat the positive, then subtracts the excluded items and the
  positive itself (gathered from the same chunk scores): the hot loop over full chunks is a matrix
  product, one comparison and one reduction. Only the last, padded chunk carries a validity mask.
  """
  score_fn = static.rebuild(dyn)
  pos_col = score_fn(batch, positive[:, None])[:, :1]
  offs = jnp.arange(chunk_size, dtype=jnp.int32)
  # Items to subtract when they beat the positive: the positive itself and its known items (once).
  sub = jnp.concatenate([positive[:, None], jnp.where(excl == positive[:, None], -1, excl)], axis=1)

  def chunk_count(start, ids, mask_tail):
    s = score_fn(batch, ids)
    beat = ~(s < pos_col)
    if mask_tail:
      beat &= (start + offs < num_items)[None, :]
    local = sub - start
    inside = (sub >= 0) & (local >= 0) & (local < chunk_size)
    s_sub = jnp.take_along_axis(s, jnp.clip(local, 0, chunk_size - 1), axis=1)
    # A float32 sum of 0/1 is exact for chunks < 2^24 items and vectorises better than an int sum on CPU.
    n_beat = jnp.where(beat, jnp.float32(1), jnp.float32(0)).sum(1).astype(jnp.int32)
    return n_beat - (inside & ~(s_sub < pos_col)).sum(1, dtype=jnp.int32)

  def body(c, count):
    start = c * chunk_size
    return count + chunk_count(start, start + offs, False)

  num_full = num_items // chunk_size
  count = jax.lax.fori_loop(0, num_full, body, jnp.zeros(positive.shape, jnp.int32))
  if num_items % chunk_size:
    start = num_full * chunk_size
    count += chunk_count(start, jnp.minimum(start + offs, num_items - 1), True)
  return count + 1


@functools.partial(jax.jit, static_argnames=("static",))
def _candidate_ranks(static: _Static, dyn, batch, cands):
  """Ranks ``[B]`` of ``cands[:, 0]`` among ``cands`` (``[B, 1 + N]``)."""
  s = static.rebuild(dyn)(batch, cands)
  return 1 + (~(s[:, 1:] < s[:, :1])).sum(1, dtype=jnp.int32)


# -- host driver ----------------------------------------------------------------------------------


def rank_queries(score_fn: ScoreFn, queries: Queries, protocol: Protocol, num_items: int, *,
                 batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """Ranks and candidate counts of every query's positive under ``protocol``.

  Returns:
    ``(ranks int64 [Q], num_candidates int64 [Q])``.
  """
  q = len(queries)
  if q == 0:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)
  if queries.positive.min() < 0 or queries.positive.max() >= num_items:
    raise DataError(f"Queries: field 'positive' has ids outside [0, {num_items})")
  if isinstance(protocol, Sampled):
    protocol = protocol.draw(queries, num_items)
  if isinstance(protocol, Candidates) and protocol.items.shape[0] != q:
    raise ValueError(f"Candidates has {protocol.items.shape[0]} rows for {q} queries")
  bs = int(min(batch_size, q))
  static, dyn = _split_score_fn(score_fn)
  width = int(queries.num_known().max(initial=0))
  outs = []
  for s in range(0, q, bs):
    idx = np.arange(s, s + bs)
    idx = np.where(idx < q, idx, s)  # pad the last batch with a real row; its ranks are dropped
    # Dispatch is asynchronous: host preparation of this batch overlaps the device work of earlier ones.
    # Host arrays go to the jitted call as they are (one transfer with the call, no separate device_put).
    batch = {"user": queries.user[idx]}
    batch.update({k: np.asarray(v)[idx] for k, v in queries.features.items()})
    if isinstance(protocol, FullRanking):
      args = (queries.positive[idx], queries.exclusion_matrix(idx, width=width))
    elif isinstance(protocol, Candidates):
      args = (protocol.items[idx],)
    else:
      raise TypeError(f"unknown protocol {protocol!r}")
    if isinstance(protocol, FullRanking):
      pending = _full_ranks(static, dyn, batch, *args, num_items=int(num_items),
                            chunk_size=int(min(protocol.chunk_size, num_items)))
    else:
      pending = _candidate_ranks(static, dyn, batch, *args)
    outs.append(pending)
  outs = [np.asarray(r) for r in jax.device_get(outs)]
  ranks = np.concatenate(outs)[:q].astype(np.int64)
  if isinstance(protocol, FullRanking):
    ncand = num_items - queries.num_excluded()
  else:
    ncand = np.full(q, protocol.items.shape[1], np.int64)
  return ranks, ncand


def evaluate(score_fn: ScoreFn, queries: Queries, protocol: Protocol, num_items: int, *,
             batch_size: int = 256, ks: Sequence[int] = metrics_lib.DEFAULT_KS) -> EvalResult:
  """Evaluates ``score_fn`` on ``queries`` under ``protocol``.

  Args:
    score_fn: ``score_fn(queries_dict, items) -> scores [B, C]`` (ARCHITECTURE.md contract).
    queries: the queries (``"user"`` and ``queries.features`` are passed to ``score_fn``).
    protocol: :class:`FullRanking`, :class:`Sampled` or :class:`Candidates`.
    num_items: size of the item index space.
    batch_size: queries per device call (static; the last batch is padded).
    ks: metric cut-offs.

  Returns:
    An :class:`EvalResult`.
  """
  if queries.group is not None and not isinstance(protocol, FullRanking):
    raise ValueError("grouped (multi-positive) queries need FullRanking: with sampled candidates the "
                     "other positives of a group are not candidates")
  ranks, ncand = rank_queries(score_fn, queries, protocol, num_items, batch_size=batch_size)
  if queries.group is None:
    per_query = metrics_lib.metrics_from_ranks(ranks, ncand, ks)
    users, gids = queries.user, None
  else:
    gids, per_query = metrics_lib.grouped_metrics(ranks, ncand, queries.group, ks)
    first = np.unique(queries.group, return_index=True)[1]
    users = queries.user[first]
  summary = metrics_lib.summarize(per_query)
  summary["num_queries"] = int(users.shape[0])
  return EvalResult(ranks=ranks, num_candidates=ncand, per_query=per_query, users=users, group_ids=gids,
                    summary=summary, protocol_desc=protocol.describe(num_items, queries))
