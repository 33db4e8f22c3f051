"""Deterministic synthetic interaction logs: the embedded default dataset.

The generator plants the structure the reimplemented methods exploit, each
property with its ground truth available through ``return_truth=True``:

* **Power-law user activity** (2TS paper 000, Sec. 2; TP paper 001): the number
  of interactions ``T`` of a user follows ``P(T) ∝ (T + 1)^-alpha``, truncated
  to ``[min_interactions, max_interactions]`` and sampled exactly by inverse CDF.
* **Clustered item factors** (tree paper 004): item vectors
  ``x_i = c_{k(i)} + cluster_spread * eps`` around ``num_clusters`` centres;
  ``item_features = [x_i + feature_noise * eps ; onehot(k(i))]``.
* **Drifting user interests** (MeLON 002, SML 003): user ``u`` has a latent
  ``z_u(t) = z_u(0) + drift_u * W(t / span)``, a Brownian motion in time with a
  per-user rate ``drift_u`` (log-normal around ``drift_scale``).
* **Shifting item popularity**: popularity logits ``b_p(i)`` random-walk over
  ``num_periods`` equal periods of the time span.
* **Timestamps**: int64 seconds in ``[start_time, start_time + time_span)``;
  each user is active in a random sub-interval, so users start at different times.

Items are drawn from ``P(i | u, t) ∝ exp(z_u(t)·x_i / temperature + b_p(t)(i))``
in two cheap stages, vectorised over all interactions of a chunk of users: a
cluster ``k`` from ``softmax(z·c_k / temperature + log sum_{i in k} e^{b(i)})``,
then an item within ``k`` by sampling-importance-resampling: ``num_candidates``
items drawn ∝ ``e^{b(i)}`` and one kept with probability ∝
``exp(z·(x_i - c_k) / temperature)``. The result is close to (not exactly) the
softmax above; the cost is ``O(n (K + num_candidates) d)``.

Generation is by chunks of ``chunk_users`` users (:func:`generate_chunks`), each
chunk an :class:`InteractionLog` of the full index space, so the ``large``
preset (1M users, ~100M interactions) can be streamed. Results depend only on
``(config, seed)``: item-side randomness comes from
``default_rng([seed, 0])`` and chunk ``c`` from ``default_rng([seed, 1, c])``.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Optional, Union

import numpy as np

from jaxrec.data.log import DataError, InteractionLog


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Parameters of the generator (override a preset with ``dataclasses.replace``).

  Attributes:
    num_users: number of users.
    num_items: number of items.
    num_clusters: number of item clusters ``K``.
    dim: latent dimension ``d``.
    alpha: activity exponent in ``P(T) ∝ (T + 1)^-alpha``.
    min_interactions, max_interactions: truncation of ``T`` (inclusive).
    time_span: seconds covered by the log.
    start_time: first timestamp (Unix seconds).
    num_periods: popularity periods (popularity logits random-walk between them).
    temperature: softmax temperature of the affinity ``z·x``.
    cluster_spread: std of items around their cluster centre (centres have norm ~1).
    user_spread: std of a user's initial latent around their favourite centre.
    drift_scale: median per-user drift rate (latent std after the whole span).
    drift_sigma: log-normal spread of the per-user drift rates.
    popularity_scale: std of the initial popularity logits.
    popularity_drift: std of each period-to-period popularity step.
    feature_noise: std of the noise added to latents in ``item_features``.
    num_candidates: candidates of the within-cluster resampling step.
    ratings: also produce a 1..5 rating column (higher for higher affinity).
    chunk_users: users per chunk.
    name: dataset name in reports.
  """

  num_users: int = 200
  num_items: int = 100
  num_clusters: int = 8
  dim: int = 16
  alpha: float = 1.8
  min_interactions: int = 5
  max_interactions: int = 100
  time_span: int = 365 * 24 * 3600
  start_time: int = 1_577_836_800  # 2020-01-01 UTC.
  num_periods: int = 12
  temperature: float = 0.25
  cluster_spread: float = 0.35
  user_spread: float = 0.5
  drift_scale: float = 1.0
  drift_sigma: float = 0.75
  popularity_scale: float = 1.0
  popularity_drift: float = 0.3
  feature_noise: float = 0.1
  num_candidates: int = 16
  ratings: bool = False
  chunk_users: int = 10_000
  name: str = "synthetic"

  def __post_init__(self):
    checks = [
        (self.num_users > 0, "num_users must be > 0"),
        (self.num_items > 0, "num_items must be > 0"),
        (0 < self.num_clusters <= self.num_items, "num_clusters must be in [1, num_items]"),
        (self.dim > 0, "dim must be > 0"),
        (self.alpha > 0, "alpha must be > 0"),
        (1 <= self.min_interactions <= self.max_interactions,
         "need 1 <= min_interactions <= max_interactions"),
        (self.time_span > 0, "time_span must be > 0"),
        (self.num_periods > 0, "num_periods must be > 0"),
        (self.temperature > 0, "temperature must be > 0"),
        (self.num_candidates > 0, "num_candidates must be > 0"),
        (self.chunk_users > 0, "chunk_users must be > 0"),
    ]
    for ok, msg in checks:
      if not ok:
        raise DataError(f"SyntheticConfig: {msg} (got {self})")


PRESETS: dict[str, SyntheticConfig] = {
    # 200 users, 100 items, ~3.4k interactions; well under a second.
    "tiny": SyntheticConfig(name="synthetic-tiny"),
    # 2k users, 1k items, ~54k interactions.
    "small": SyntheticConfig(num_users=2_000, num_items=1_000, num_clusters=20, max_interactions=300,
                             name="synthetic-small"),
    # 10k users, 4k items, ~0.4M interactions (the 2TS experiment).
    "medium": SyntheticConfig(num_users=10_000, num_items=4_000, num_clusters=40, max_interactions=1_000,
                              name="synthetic-medium"),
    # 1M users, 100k items, ~100M interactions; stream it with generate_chunks.
    "large": SyntheticConfig(num_users=1_000_000, num_items=100_000, num_clusters=128,
                             min_interactions=20, max_interactions=1_000, chunk_users=2_000,
                             name="synthetic-large"),
}


@dataclasses.dataclass(frozen=True)
class SyntheticTruth:
  """Ground truth of a generated log.

  Attributes:
    item_cluster: int32 ``[num_items]`` cluster of each item.
    cluster_centres: float32 ``[K, d]``.
    item_vectors: float32 ``[num_items, d]`` latent item factors.
    user_initial: float32 ``[num_users, d]`` latent ``z_u(0)``.
    user_cluster: int32 ``[num_users]`` favourite cluster that ``z_u(0)`` is drawn around.
    drift_rate: float32 ``[num_users]`` per-user drift rate.
    activity: int64 ``[num_users]`` sampled number of interactions ``T``.
    user_start, user_end: int64 ``[num_users]`` active interval of each user.
    popularity_logits: float32 ``[num_periods, num_items]``.
    period_edges: int64 ``[num_periods + 1]`` timestamps delimiting the periods.
  """

  item_cluster: np.ndarray
  cluster_centres: np.ndarray
  item_vectors: np.ndarray
  user_initial: np.ndarray
  user_cluster: np.ndarray
  drift_rate: np.ndarray
  activity: np.ndarray
  user_start: np.ndarray
  user_end: np.ndarray
  popularity_logits: np.ndarray
  period_edges: np.ndarray


def get_config(preset: Union[str, SyntheticConfig]) -> SyntheticConfig:
  """Returns the preset named ``preset`` (or ``preset`` itself if a config)."""
  if isinstance(preset, SyntheticConfig):
    return preset
  if preset not in PRESETS:
    raise DataError(f"unknown synthetic preset {preset!r}; expected one of {sorted(PRESETS)}")
  return PRESETS[preset]


def activity_pmf(config: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
  """Support ``T`` and pmf of the truncated power law ``P(T) ∝ (T + 1)^-alpha``."""
  support = np.arange(config.min_interactions, config.max_interactions + 1, dtype=np.int64)
  w = (support + 1.0) ** -config.alpha
  return support, w / w.sum()


def expected_interactions(config: Union[str, SyntheticConfig]) -> float:
  """Expected number of interactions ``num_users * E[T]`` of a config."""
  config = get_config(config)
  support, pmf = activity_pmf(config)
  return float(config.num_users * (support * pmf).sum())


class _ItemSide:
  """Item-side state shared by every chunk (centres, items, popularity)."""

  def __init__(self, config: SyntheticConfig, seed: int):
    c = config
    rng = np.random.default_rng([seed, 0])
    self.centres = rng.normal(size=(c.num_clusters, c.dim)) / np.sqrt(c.dim)
    # Every cluster gets at least one item; the rest are assigned at random.
    cluster = np.concatenate([np.arange(c.num_clusters),
                              rng.integers(0, c.num_clusters, c.num_items - c.num_clusters)])
    self.cluster = rng.permutation(cluster).astype(np.int32)
    self.vectors = self.centres[self.cluster] + c.cluster_spread * rng.normal(
        size=(c.num_items, c.dim)) / np.sqrt(c.dim)
    noisy = self.vectors + c.feature_noise * rng.normal(size=self.vectors.shape) / np.sqrt(c.dim)
    onehot = np.eye(c.num_clusters, dtype=np.float32)[self.cluster]
    self.centres32 = self.centres.astype(np.float32)
    self.vectors32 = self.vectors.astype(np.float32)
    self.features = np.concatenate([noisy.astype(np.float32), onehot], axis=1)
    steps = rng.normal(size=(c.num_periods, c.num_items))
    steps[0] *= c.popularity_scale
    steps[1:] *= c.popularity_drift
    self.pop = np.cumsum(steps, axis=0)  # [P, I]
    self.period_edges = c.start_time + (np.arange(c.num_periods + 1) * c.time_span) // c.num_periods
    # Items grouped by cluster; per period, a normalised within-cluster CDF made globally
    # increasing (period p occupies [p, p + 1)) so one searchsorted samples any (p, k).
    self.order = np.argsort(self.cluster, kind="stable").astype(np.int32)
    sizes = np.bincount(self.cluster, minlength=c.num_clusters)
    self.cluster_start = np.concatenate([[0], np.cumsum(sizes)])  # [K + 1]
    w = np.exp(self.pop[:, self.order] - self.pop.max(axis=1, keepdims=True))  # [P, I]
    cluster_mass = np.add.reduceat(w, self.cluster_start[:-1], axis=1)  # [P, K]
    self.log_cluster_mass = np.log(cluster_mass)
    cdf = np.cumsum(w, axis=1) / w.sum(axis=1, keepdims=True)
    self.flat_cdf = (cdf + np.arange(c.num_periods)[:, None]).ravel()
    start_cdf = np.concatenate([np.zeros((c.num_periods, 1)), cdf], axis=1)
    self.cdf_lo = start_cdf[:, self.cluster_start[:-1]]  # [P, K]
    self.cdf_hi = start_cdf[:, self.cluster_start[1:]]


def _gumbel(rng: np.random.Generator, shape) -> np.ndarray:
  """float32 standard Gumbel noise (argmax(logits + noise) samples softmax(logits))."""
  u = np.maximum(rng.random(shape, dtype=np.float32), np.float32(1e-30))
  return -np.log(-np.log(u))


def _generate_chunk(config: SyntheticConfig, side: _ItemSide, seed: int, chunk: int):
  """Generates the users ``[chunk * chunk_users, ...)``; returns (log, user-side truth)."""
  c = config
  lo = chunk * c.chunk_users
  hi = min(c.num_users, lo + c.chunk_users)
  m = hi - lo
  rng = np.random.default_rng([seed, 1, chunk])

  # Activity T by inverse CDF of the truncated power law.
  support, pmf = activity_pmf(c)
  cdf = np.cumsum(pmf)
  activity = support[np.minimum(np.searchsorted(cdf, rng.random(m), side="right"), support.size - 1)]

  # Active interval: start uniform in the first 80% of the span, end after it.
  start = rng.random(m) * 0.8 * c.time_span
  end = start + (c.time_span - start) * rng.uniform(0.2, 1.0, m)
  # Users' initial latent around a favourite cluster, per-user drift rates.
  fav = rng.integers(0, c.num_clusters, m).astype(np.int32)
  z0 = side.centres[fav] + c.user_spread * rng.normal(size=(m, c.dim)) / np.sqrt(c.dim)
  drift = c.drift_scale * np.exp(c.drift_sigma * rng.normal(size=m))

  # Interactions of user j occupy rows indptr[j]:indptr[j + 1], in time order.
  n = int(activity.sum())
  user_local = np.repeat(np.arange(m), activity)
  indptr = np.concatenate([[0], np.cumsum(activity)])
  frac = rng.random(n)
  frac = frac[np.lexsort((frac, user_local))]  # sorted within each user
  t = start[user_local] + frac * (end - start)[user_local]
  timestamp = (c.start_time + np.floor(t)).astype(np.int64)

  # Brownian latent drift: increments with variance drift^2 * dt / span.
  prev_t = np.concatenate([[0.0], t[:-1]])
  first = indptr[:-1]
  prev_t[first] = start
  dt = np.maximum(t - prev_t, 0.0) / c.time_span
  inc = rng.normal(size=(n, c.dim)) * (drift[user_local] * np.sqrt(dt))[:, None] / np.sqrt(c.dim)
  csum = np.cumsum(inc, axis=0)
  base = csum[first] - inc[first]
  z = z0[user_local] + csum - base[user_local]  # [n, d]

  # Stage 1: cluster ~ softmax(z·c_k / temperature + log cluster popularity mass).
  period = np.clip(np.searchsorted(side.period_edges, timestamp, side="right") - 1, 0, c.num_periods - 1)
  z32 = z.astype(np.float32)
  logits = z32 @ (side.centres32.T / np.float32(c.temperature)) + side.log_cluster_mass[period].astype(
      np.float32)
  gumbel = _gumbel(rng, logits.shape)
  k = np.argmax(logits + gumbel, axis=1)

  # Stage 2: candidates ∝ popularity within (period, cluster), resampled ∝ exp(z·(x - c_k) / temp).
  lo_cdf = side.cdf_lo[period, k][:, None]
  hi_cdf = side.cdf_hi[period, k][:, None]
  u = period[:, None] + lo_cdf + rng.random((n, c.num_candidates)) * (hi_cdf - lo_cdf)
  pos = np.searchsorted(side.flat_cdf, u, side="right") - period[:, None] * c.num_items
  start_k = side.cluster_start[k][:, None]
  pos = np.clip(pos, start_k, side.cluster_start[k + 1][:, None] - 1)
  cand = side.order[pos]  # [n, C]
  aff = np.einsum("nd,ncd->nc", z32, side.vectors32[cand]) - (z32 * side.centres32[k]).sum(1)[:, None]
  gumbel = _gumbel(rng, aff.shape)
  aff = aff / np.float32(c.temperature)
  item = cand[np.arange(n), np.argmax(aff + gumbel, axis=1)]

  rating = None
  if c.ratings:
    score = np.einsum("nd,nd->n", z, side.vectors[item])
    score = (score - score.mean()) / max(score.std(), 1e-9)
    rating = np.clip(np.round(3.0 + 1.2 * score + 0.5 * rng.normal(size=n)), 1, 5)

  log = InteractionLog.from_arrays(
      user_local + lo, item, timestamp, rating, num_users=c.num_users, num_items=c.num_items,
      item_features=side.features, name=c.name)
  truth = dict(user_initial=z0.astype(np.float32), user_cluster=fav, drift_rate=drift.astype(np.float32),
               activity=activity.astype(np.int64),
               user_start=(c.start_time + np.floor(start)).astype(np.int64),
               user_end=(c.start_time + np.floor(end)).astype(np.int64))
  return log, truth


def num_chunks(preset: Union[str, SyntheticConfig]) -> int:
  """Number of chunks :func:`generate_chunks` yields for a config."""
  config = get_config(preset)
  return -(-config.num_users // config.chunk_users)


def generate_chunks(preset: Union[str, SyntheticConfig], seed: int = 0,
                    chunks: Optional[range] = None) -> Iterator[InteractionLog]:
  """Yields the log chunk by chunk (``chunk_users`` users each, full index space).

  Args:
    preset: a preset name or a :class:`SyntheticConfig`.
    seed: the seed; chunk ``c`` is the same whatever other chunks are generated.
    chunks: which chunks to generate (default all); lets workers split the work.

  Yields:
    One :class:`InteractionLog` per chunk, rows grouped by user in time order,
    all sharing ``num_users``, ``num_items`` and the same ``item_features`` array.
  """
  config = get_config(preset)
  side = _ItemSide(config, seed)
  for chunk in (chunks if chunks is not None else range(num_chunks(config))):
    yield _generate_chunk(config, side, seed, chunk)[0]


def generate(preset: Union[str, SyntheticConfig] = "tiny", seed: int = 0, return_truth: bool = False):
  """Generates a whole log in memory (use :func:`generate_chunks` for ``large``).

  Args:
    preset: a preset name (``tiny``, ``small``, ``medium``, ``large``) or a config.
    seed: the seed; the output depends only on ``(config, seed)``.
    return_truth: also return the :class:`SyntheticTruth`.

  Returns:
    The :class:`InteractionLog` (rows grouped by user, in time order), or
    ``(log, truth)`` when ``return_truth``.
  """
  config = get_config(preset)
  side = _ItemSide(config, seed)
  parts = [_generate_chunk(config, side, seed, ch) for ch in range(num_chunks(config))]
  logs = [p[0] for p in parts]
  cat = lambda f: np.concatenate([getattr(l, f) for l in logs])
  rating = cat("rating") if config.ratings else None
  log = InteractionLog.from_arrays(
      cat("user"), cat("item"), cat("timestamp"), rating, num_users=config.num_users,
      num_items=config.num_items, item_features=side.features, name=config.name)
  if not return_truth:
    return log
  user_truth = {key: np.concatenate([p[1][key] for p in parts]) for key in parts[0][1]}
  truth = SyntheticTruth(
      item_cluster=side.cluster, cluster_centres=side.centres.astype(np.float32),
      item_vectors=side.vectors.astype(np.float32), popularity_logits=side.pop.astype(np.float32),
      period_edges=side.period_edges.astype(np.int64), **user_truth)
  return log, truth
