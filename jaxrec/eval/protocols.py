"""Evaluation protocols: full ranking and sampled negatives, from a ``ScoreFn`` to metrics.

Both protocols produce the rank of each query's positive with the convention of ARCHITECTURE.md and
:mod:`jaxrec.eval.metrics`: ``rank = 1 + #{other candidates with score >= the positive's}``. Ties count
against the positive, so a model scoring every item equally gets the worst rank. A NaN score also counts
against the positive (a NaN candidate beats it; a NaN positive is beaten by everything).

* :class:`FullRanking`: every item is a candidate except the user's known positives (the positive itself
  is never excluded). One jitted function per batch shape loops over static-size item chunks with
  ``lax.fori_loop``, counting candidates that beat the positive and subtracting the positive itself and
  the excluded items (gathered from the same chunk scores). The positive is scored as a *shared*
  candidate, in a call of the same shape as every chunk (the partial last chunk's padding holds the
  batch's positives), never through the per-query ``[B, 1]`` path: the two paths give different float32
  numbers for the same (user, item) (an einsum vs a matrix product), and an exact duplicate of the
  positive (a cold item left at its initial value, items with identical features) would then fail to
  count against it. Memory is ``O(B x chunk_size)``; the ``B x N`` score matrix is never materialised.
  Grouped queries (several held-out items of a user, e.g. RecBole's 8/1/1) whose group shares one user
  and one set of inputs are scored once per group, not once per query, with the same ranks.
* :class:`Sampled`: ``1`` positive + ``num_negatives`` distinct negatives per query, drawn once on the
  host from ``np.random.default_rng(seed)`` (uniform, or proportional to training popularity),
  never a known positive nor the positive, so every model is evaluated on the same candidates.
  :meth:`Sampled.draw` returns them as a :class:`Candidates` protocol that can be reused across epochs.

Score functions take their parameters explicitly, ``score_fn(params, queries, items)``; the kernels are
jitted with ``params`` as an argument (never baked in as constants), so re-evaluating a model with new
parameters of the same shapes does not recompile.
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

ScoreFn = Callable[[Any, Mapping[str, jax.Array], jax.Array], jax.Array]


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


def _row_member(sorted_rows: np.ndarray, values: np.ndarray, span: int) -> np.ndarray:
  """bool ``values.shape``: ``values[r, j]`` is in row ``r`` of ``sorted_rows`` (rows sorted, < span)."""
  rows = sorted_rows.shape[0]
  off = np.arange(rows, dtype=np.int64)[:, None] * span
  flat = (np.minimum(sorted_rows, span - 1) + off).ravel()
  flat[(sorted_rows >= span).ravel()] = -1  # padding never matches
  flat = np.sort(flat)
  q = (values + off).ravel()
  pos = np.minimum(np.searchsorted(flat, q), flat.size - 1)
  return (flat[pos] == q).reshape(values.shape)


def _popularity_negatives(rng: np.random.Generator, excl: np.ndarray, weights: np.ndarray, n: int,
                          users: np.ndarray, max_rounds: int = 32) -> np.ndarray:
  """``n`` distinct draws per row proportional to ``weights``, excluding ``excl`` (sorted, padded).

  Successive sampling without replacement: candidates are drawn i.i.d. from the cumulative weights
  (``searchsorted`` on ``cumsum(weights)``), and a draw that is excluded or repeats an earlier one is
  discarded, which gives the same law as renormalising after every draw (Gumbel top-k). Memory is
  ``O(rows x n)``, never ``O(rows x num_items)``. Each round draws enough candidates for the expected
  acceptance rate of every unfinished row; rows whose allowed mass is small (acceptance < 5%) or that are
  still short after ``max_rounds`` are finished one at a time over their allowed items.
  """
  rows = excl.shape[0]
  num_items = weights.shape[0]
  if rows == 0 or n == 0:
    return np.zeros((rows, n), np.int32)
  cdf = np.cumsum(weights)
  total = cdf[-1]
  ok = excl < num_items
  w_excl = np.where(ok, weights[np.minimum(excl, num_items - 1)], 0.0)
  avail = int((weights > 0).sum()) - (ok & (w_excl > 0)).sum(1)
  if avail.min() < n:
    r = int(np.argmin(avail))
    raise DataError(f"Sampled(popularity=True): user {users[r]} has only {avail[r]} items with non-zero "
                    f"training count to draw {n} negatives from")
  accept = np.clip((total - w_excl.sum(1)) / total, 0.0, 1.0)
  kept = np.full((rows, n), -1, np.int64)  # accepted draws in draw order, -1 padded
  count = np.zeros(rows, np.int64)
  todo = np.flatnonzero(accept >= 0.05)
  big = np.int64(num_items + 1)
  for _ in range(max_rounds):
    if todo.size == 0:
      break
    k = int(np.ceil(min(((n - count[todo]) / accept[todo]).max() * 1.2, 20 * n))) + 8
    draws = np.searchsorted(cdf, rng.random((todo.size, k)) * total, side="right")
    cand = np.concatenate([kept[todo], np.minimum(draws, num_items - 1)], axis=1)
    bad = (cand < 0) | _row_member(excl[todo], np.maximum(cand, 0), num_items)
    keyed = np.where(bad, big, cand)
    order = np.argsort(keyed, axis=1, kind="stable")  # equal values keep draw order: first one wins
    srt = np.take_along_axis(keyed, order, axis=1)
    first = np.ones(srt.shape, bool)
    first[:, 1:] = srt[:, 1:] != srt[:, :-1]
    good = np.zeros(srt.shape, bool)
    np.put_along_axis(good, order, first & (srt < big), axis=1)
    take = good & (np.cumsum(good, axis=1) <= n)
    cols = np.argsort(~take, axis=1, kind="stable")[:, :n]
    vals = np.take_along_axis(cand, cols, axis=1)
    kept[todo] = np.where(np.take_along_axis(take, cols, axis=1), vals, -1)
    count[todo] = take.sum(1)
    todo = todo[count[todo] < n]
  rare = np.flatnonzero((accept < 0.05) | (count < n))
  for r in rare:  # almost all of the mass is excluded: finish the row exactly over its allowed items
    allowed = weights > 0
    allowed[excl[r][ok[r]]] = False
    have = kept[r, :count[r]]
    allowed[have] = False
    idx = np.flatnonzero(allowed)
    p = weights[idx] / weights[idx].sum()
    kept[r, count[r]:] = rng.choice(idx, size=n - count[r], replace=False, p=p)
  return kept.astype(np.int32)


# -- score function plumbing ----------------------------------------------------------------------


class _ById:
  """Wraps an unhashable score function so it can be a static jit argument (hashed by identity)."""

  def __init__(self, fn):
    self.fn = fn

  def __call__(self, *args, **kwargs):
    return self.fn(*args, **kwargs)


def _static_score_fn(score_fn: ScoreFn):
  """``score_fn`` itself when hashable (a module function, a registry scorer), else wrapped by id."""
  try:
    hash(score_fn)
  except TypeError:
    return _ById(score_fn)
  return score_fn


# -- device kernels -------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("score_fn", "num_items", "chunk_size"))
def _full_ranks(score_fn: ScoreFn, params, batch, positive, excl, *, num_items: int, chunk_size: int):
  """Ranks ``[B]`` of ``positive`` among all items minus ``excl`` (``[B, M]``, -1 padded).

  Every score comes from a shared-candidate call of one shape, ``score_fn(params, batch, ids[chunk])``,
  so the positive and an exact duplicate of it get the same float32 number and the duplicate counts
  against the positive. The first ("lead") calls hold the ``num_items % chunk_size`` items of the
  partial last chunk followed by the batch's positives (positive ``b`` at lead column ``tail + b``):
  ``ceil((tail + B) / chunk_size)`` calls, one more than the partial chunk alone at most. The loop over
  the full chunks is then a matrix product, one comparison and one reduction each. Excluded items and
  the positive itself are subtracted when they beat it, gathered from the same chunk scores.
  """
  b = positive.shape[0]
  offs = jnp.arange(chunk_size, dtype=jnp.int32)
  num_full = num_items // chunk_size
  tail = num_items % chunk_size
  tail_start = num_full * chunk_size
  # Lead calls: [tail items, the batch's positives, padding] cut into chunk_size columns; positive b sits
  # at lead column tail + b.
  n_lead = -(-(tail + b) // chunk_size)
  lead_ids = jnp.concatenate([tail_start + jnp.arange(tail, dtype=jnp.int32), positive.astype(jnp.int32),
                              jnp.zeros(n_lead * chunk_size - tail - b, jnp.int32)])
  lead_ids = lead_ids.reshape(n_lead, chunk_size)
  pos_lead_col = tail + jnp.arange(b, dtype=jnp.int32)

  def pos_body(c, acc, s=None):  # the positives' scores found in lead call c
    s = score_fn(params, batch, lead_ids[c]) if s is None else s
    col = pos_lead_col - c * chunk_size
    here = (col >= 0) & (col < chunk_size)
    got = jnp.take_along_axis(s, jnp.clip(col, 0, chunk_size - 1)[:, None], axis=1)[:, 0]
    return jnp.where(here, got, acc)

  first = score_fn(params, batch, lead_ids[0])
  pos_col = pos_body(0, jnp.zeros(positive.shape, first.dtype), first)
  pos_col = jax.lax.fori_loop(1, n_lead, pos_body, pos_col)[:, None]
  # Items to subtract when they beat the positive: the positive itself and its known items (once).
  sub = jnp.concatenate([positive[:, None], jnp.where(excl == positive[:, None], -1, excl)], axis=1)

  def count(s, start, valid):
    """Items ``start .. start + valid - 1`` (columns ``0 .. valid - 1`` of ``s``) that beat the positive,
    minus the excluded ones and the positive itself among them."""
    width = s.shape[1]
    beat = ~(s < pos_col)
    if valid < width:
      beat &= (jnp.arange(width) < valid)[None, :]
    local = sub - start
    inside = (sub >= 0) & (local >= 0) & (local < valid)
    s_sub = jnp.take_along_axis(s, jnp.clip(local, 0, width - 1), axis=1)
    # A float32 sum of 0/1 is exact for rows < 2^24 items and vectorises better than an int sum on CPU.
    n_beat = jnp.where(beat, jnp.float32(1), jnp.float32(0)).sum(1).astype(jnp.int32)
    return n_beat - (inside & ~(s_sub < pos_col)).sum(1, dtype=jnp.int32)

  def body(c, total):
    start = c * chunk_size
    return total + count(score_fn(params, batch, start + offs), start, chunk_size)

  total = jnp.zeros(positive.shape, jnp.int32)
  if tail:  # the tail items are lead chunk 0's first columns: the same call, so the same numbers
    total += count(first, tail_start, tail)
  total = jax.lax.fori_loop(0, num_full, body, total)
  return total + 1


@functools.partial(jax.jit, static_argnames=("score_fn", "num_items", "chunk_size"))
def _grouped_full_ranks(score_fn: ScoreFn, params, batch, row, positive, excl, *, num_items: int,
                        chunk_size: int):
  """Ranks ``[S]`` of the positives of ``S`` query slots whose inputs are the rows of ``batch``.

  ``batch`` holds ``G`` rows, each standing for a group of queries with the same user and inputs (its
  known items ``excl`` ``[G, M]``, -1 padded); slot ``q`` is a query of row ``row[q]`` with positive
  ``positive[q]`` (-1: an empty slot). Each row is scored once per item: ``ceil(num_items /
  chunk_size)`` calls of one shape (the last chunk padded with item 0 and masked); a first pass picks
  the positives' and the known items' scores out of their chunks, a second counts for every slot the
  items that beat its positive (``~(s < s_p)``: ties and NaN beat). With ``K`` the known items and
  ``beat(A)`` the members of ``A`` that beat ``p``, :func:`_full_ranks`' rank ``1 + |beat(items - (K -
  {p}) - {p})|`` is ``1 + |beat(items)| - |beat(K)| - [p not in K]`` (``p`` always beats itself): the
  same numbers as one query at a time, since an item's score is the same float32 number in any chunk.
  """
  num_chunks = -(-num_items // chunk_size)
  offs = jnp.arange(chunk_size, dtype=jnp.int32)
  g = excl.shape[0]

  def scores(c):
    ids = c * chunk_size + offs
    return score_fn(params, batch, jnp.where(ids < num_items, ids, 0)), ids < num_items

  def pick(s, start, items, rows):
    local = items - start
    here = (items >= 0) & (local >= 0) & (local < chunk_size)
    return here, s[rows, jnp.clip(local, 0, chunk_size - 1)]

  rows_m = jnp.broadcast_to(jnp.arange(g)[:, None], excl.shape)

  def gather_from(s, c, acc):
    pos_acc, known_acc = acc
    here_p, got_p = pick(s, c * chunk_size, positive, row)
    here_k, got_k = pick(s, c * chunk_size, excl, rows_m)
    return jnp.where(here_p, got_p, pos_acc), jnp.where(here_k, got_k, known_acc)

  def count_from(s, valid, pos_s, total):
    beat = ~(s[row] < pos_s[:, None]) & valid[None, :]
    return total + jnp.where(beat, jnp.float32(1), jnp.float32(0)).sum(1).astype(jnp.int32)

  # Chunk 0 is scored once and serves both passes (with one chunk, e.g. ML-100K, that is the only call).
  first, valid0 = scores(0)
  acc = gather_from(first, 0, (jnp.zeros(positive.shape, first.dtype), jnp.zeros(excl.shape, first.dtype)))
  pos_s, known_s = jax.lax.fori_loop(1, num_chunks, lambda c, a: gather_from(scores(c)[0], c, a), acc)
  total = count_from(first, valid0, pos_s, jnp.zeros(positive.shape, jnp.int32))
  total = jax.lax.fori_loop(1, num_chunks, lambda c, t: count_from(*scores(c), pos_s, t), total)
  mine = excl[row]  # [S, M] the known items of each slot's row
  known_beat = ((mine >= 0) & ~(known_s[row] < pos_s[:, None])).sum(1, dtype=jnp.int32)
  in_known = ((mine == positive[:, None]) & (mine >= 0)).any(1)
  return 1 + total - known_beat - (~in_known).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("score_fn",))
def _candidate_ranks(score_fn: ScoreFn, params, batch, cands):
  """Ranks ``[B]`` of ``cands[:, 0]`` among ``cands`` (``[B, 1 + N]``), all scored in one call."""
  s = score_fn(params, batch, cands)
  return 1 + (~(s[:, 1:] < s[:, :1])).sum(1, dtype=jnp.int32)


# -- host driver ----------------------------------------------------------------------------------


def _bucket(n: int) -> int:
  """The next power of two >= ``max(n, 1)``."""
  return 1 << max(n - 1, 0).bit_length()


def _groups_share_inputs(queries: Queries) -> bool:
  """Whether every group's queries have one user and the same features (one score row serves them)."""
  if queries.group is None:
    return False
  order = np.argsort(queries.group, kind="stable")
  g = queries.group[order]
  same = g[1:] == g[:-1]
  if not same.any():
    return False
  if (queries.user[order][1:] != queries.user[order][:-1])[same].any():
    return False
  for v in queries.features.values():
    v = np.asarray(v)[order]
    differ = (v[1:] != v[:-1]).reshape(len(v) - 1, -1).any(1)
    if differ[same].any():
      return False
  return True


def _grouped_ranks(score_fn: ScoreFn, params: Any, queries: Queries, protocol: "FullRanking",
                   num_items: int, batch_size: int) -> np.ndarray:
  """Full-ranking ranks ``[Q]`` of grouped queries, each group's row scored once per call
  (:func:`_grouped_full_ranks`). The queries, ordered by group, are cut into calls of at most
  ``batch_size`` query slots and ``max(1, batch_size // 4)`` groups (a group split by a cut is scored in
  both calls), so every call has one static shape and compares as many (query, item) pairs as an
  ungrouped batch."""
  q = len(queries)
  order = np.argsort(queries.group, kind="stable")
  grp = queries.group[order]
  gid = np.cumsum(np.r_[False, grp[1:] != grp[:-1]])  # dense group index of each sorted query
  slots, rows = int(min(batch_size, q)), int(max(1, min(batch_size // 4, gid[-1] + 1)))
  key = (np.arange(q) // slots) * (gid[-1] // rows + 1) + gid // rows
  call = np.cumsum(np.r_[False, key[1:] != key[:-1]])
  call_start = np.flatnonzero(np.r_[True, call[1:] != call[:-1]])
  slot = np.arange(q) - call_start[call]
  first_gid = gid[call_start]
  row = gid - first_gid[call]  # the row of each query's group within its call
  group_start = np.flatnonzero(np.r_[True, gid[1:] != gid[:-1]])  # sorted index of each group's first query
  width = _bucket(int(queries.num_known().max(initial=0)))
  chunk = int(min(protocol.chunk_size, num_items))
  outs = []
  for c in range(call_start.size):
    mine = slice(call_start[c], call_start[c + 1] if c + 1 < call_start.size else q)
    n_rows = int(row[mine].max()) + 1
    rep = order[group_start[first_gid[c] + np.minimum(np.arange(rows), n_rows - 1)]]  # padded: last row
    batch = {"user": queries.user[rep]}
    batch.update({k: np.asarray(v)[rep] for k, v in queries.features.items()})
    r = np.zeros(slots, np.int32)
    p = np.full(slots, -1, np.int32)
    r[slot[mine]] = row[mine]
    p[slot[mine]] = queries.positive[order[mine]]
    outs.append(_grouped_full_ranks(score_fn, params, batch, r, p, queries.exclusion_matrix(rep, width=width),
                                    num_items=int(num_items), chunk_size=chunk))
  got = np.stack([np.asarray(o) for o in jax.device_get(outs)])  # [calls, slots]
  ranks = np.empty(q, np.int64)
  ranks[order] = got[call, slot]
  return ranks


def rank_queries(score_fn: ScoreFn, params: Any, queries: Queries, protocol: Protocol, num_items: int,
                 *, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """Ranks and candidate counts of every query's positive under ``protocol``.

  ``score_fn(params, queries, items)`` is jitted with ``params`` as an argument: evaluating new
  parameters of the same shapes does not recompile. ``score_fn`` is a static argument (hashed): pass
  the same function object (a module-level function, a registry scorer) to reuse the compilation.

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
  score_fn = _static_score_fn(score_fn)
  if isinstance(protocol, FullRanking) and _groups_share_inputs(queries):
    ranks = _grouped_ranks(score_fn, params, queries, protocol, num_items, batch_size)
    return ranks, num_items - queries.num_excluded()
  bs = int(min(batch_size, q))
  # The exclusion matrix is padded to the next power of two of the largest known set, so evaluations
  # whose known sets grow (a stream's blocks, later epochs) reuse a few compiled shapes.
  width = _bucket(int(queries.num_known().max(initial=0)))
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
      pending = _full_ranks(score_fn, params, batch, *args, num_items=int(num_items),
                            chunk_size=int(min(protocol.chunk_size, num_items)))
    else:
      pending = _candidate_ranks(score_fn, params, batch, *args)
    outs.append(pending)
  outs = [np.asarray(r) for r in jax.device_get(outs)]
  ranks = np.concatenate(outs)[:q].astype(np.int64)
  if isinstance(protocol, FullRanking):
    ncand = num_items - queries.num_excluded()
  else:
    ncand = np.full(q, protocol.items.shape[1], np.int64)
  return ranks, ncand


def evaluate(score_fn: ScoreFn, params: Any, queries: Queries, protocol: Protocol, num_items: int, *,
             batch_size: int = 256, ks: Sequence[int] = metrics_lib.DEFAULT_KS) -> EvalResult:
  """Evaluates ``score_fn`` on ``queries`` under ``protocol``.

  Args:
    score_fn: ``score_fn(params, queries_dict, items) -> scores [B, C]`` (ARCHITECTURE.md contract).
    params: the parameters ``score_fn`` scores with (any pytree; a jit argument).
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
  ranks, ncand = rank_queries(score_fn, params, queries, protocol, num_items, batch_size=batch_size)
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


# -- top-K lists ----------------------------------------------------------------------------------


def evaluate_top_k(top_items: np.ndarray, queries: Queries, num_items: int, *,
                   ks: Sequence[int] = metrics_lib.DEFAULT_KS) -> EvalResult:
  """Evaluates returned top-K lists (a retrieval/ranking system's ``[Q, K]`` item ids per query).

  The rank of a query's positive is its 1-based position in its row of ``top_items`` (the first one when
  an id repeats); a positive beyond the list is a miss, given the worst rank ``num_items``. Metrics are
  those of :func:`evaluate` (grouped queries aggregate per group) at the cut-offs ``k <= K`` only; MRR and
  AUC are left out (undefined beyond the list). Entries ``-1`` are empty slots.

  Args:
    top_items: int ``[Q, K]``, row ``q`` the list returned for query ``q`` (for grouped queries every row
      of a group holds the group's list).
    queries: the queries (``positive``, optional ``group``).
    num_items: size of the item index space (the miss rank).
    ks: cut-offs; those above K are dropped.
  """
  top_items = np.asarray(top_items)
  if top_items.ndim != 2 or top_items.shape[0] != len(queries):
    raise ValueError(f"evaluate_top_k: top_items must be [{len(queries)}, K], got {top_items.shape}")
  k_max = top_items.shape[1]
  hit = top_items == queries.positive[:, None]
  found = hit.any(1)
  ranks = np.where(found, hit.argmax(1) + 1, num_items).astype(np.int64)
  ncand = np.full(len(queries), num_items, np.int64)
  ks = tuple(k for k in ks if k <= k_max)
  if queries.group is None:
    per_query = metrics_lib.metrics_from_ranks(ranks, ncand, ks)
    users, gids = queries.user, None
  else:
    gids, per_query = metrics_lib.grouped_metrics(ranks, ncand, queries.group, ks)
    users = queries.user[np.unique(queries.group, return_index=True)[1]]
  per_query = {k: v for k, v in per_query.items() if k not in ("MRR", "AUC")}
  summary = metrics_lib.summarize(per_query)
  summary["num_queries"] = int(users.shape[0])
  return EvalResult(ranks=ranks, num_candidates=ncand, per_query=per_query, users=users, group_ids=gids,
                    summary=summary, protocol_desc=f"top-{k_max} lists (rank = position, a miss beyond)")
