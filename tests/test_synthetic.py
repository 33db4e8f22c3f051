"""Tests of jaxrec.data.synthetic: each planted property is measured on generated data."""

import dataclasses

import numpy as np
import pytest
from scipy import stats

from jaxrec.data import synthetic
from jaxrec.data.log import DataError


@pytest.fixture(scope="module")
def small():
  return synthetic.generate("small", seed=0, return_truth=True)


def test_tiny_shapes_and_determinism():
  log = synthetic.generate("tiny", seed=3)
  again = synthetic.generate("tiny", seed=3)
  other = synthetic.generate("tiny", seed=4)
  cfg = synthetic.PRESETS["tiny"]
  assert (log.num_users, log.num_items) == (cfg.num_users, cfg.num_items)
  assert 2_000 <= len(log) <= 6_000
  assert log.user.dtype == np.int32 and log.item.dtype == np.int32 and log.timestamp.dtype == np.int64
  np.testing.assert_array_equal(log.item, again.item)
  np.testing.assert_array_equal(log.timestamp, again.timestamp)
  assert not np.array_equal(log.item[:500], other.item[:500])
  assert log.item_features.shape == (cfg.num_items, cfg.dim + cfg.num_clusters)


def test_sizes_match_expectation():
  for preset in ("tiny", "small"):
    log = synthetic.generate(preset)
    exp = synthetic.expected_interactions(preset)
    assert abs(len(log) - exp) < 0.15 * exp, (preset, len(log), exp)
  assert 0.3e6 <= synthetic.expected_interactions("medium") <= 0.5e6
  assert 0.9e8 <= synthetic.expected_interactions("large") <= 1.1e8


def test_power_law_activity(small):
  log, truth = small
  cfg = synthetic.PRESETS["small"]
  counts = log.user_counts()
  np.testing.assert_array_equal(counts, truth.activity)
  support, pmf = synthetic.activity_pmf(cfg)
  # Independent pmf from the Hurwitz zeta function: P(T) = (T+1)^-a / sum_{T=lo}^{hi} (T+1)^-a.
  from scipy.special import zeta
  norm = zeta(cfg.alpha, cfg.min_interactions + 1) - zeta(cfg.alpha, cfg.max_interactions + 2)
  np.testing.assert_allclose(pmf, (support + 1.0) ** -cfg.alpha / norm, rtol=1e-9)
  # Empirical CDF vs pmf: Kolmogorov distance within the 1% critical value.
  emp = np.searchsorted(np.sort(counts), support, side="right") / counts.size
  assert np.max(np.abs(emp - np.cumsum(pmf))) < 1.63 / np.sqrt(counts.size)
  # Fraction of users below 20 interactions.
  assert abs((counts < 20).mean() - pmf[support < 20].sum()) < 0.04
  # Maximum-likelihood tail exponent recovers alpha.
  grid = np.linspace(1.2, 2.4, 121)
  ll = [-(a * np.log(counts + 1.0)).sum() - counts.size * np.log(((support + 1.0) ** -a).sum()) for a in grid]
  assert abs(grid[int(np.argmax(ll))] - cfg.alpha) < 0.1


def test_clustered_items(small):
  log, truth = small
  k = truth.cluster_centres.shape[0]
  d = truth.item_vectors.shape[1]
  dist = ((truth.item_vectors[:, None, :] - truth.cluster_centres[None]) ** 2).sum(-1)
  assert (dist.argmin(1) == truth.item_cluster).mean() > 0.9
  np.testing.assert_array_equal(log.item_features[:, d:].argmax(1), truth.item_cluster)
  np.testing.assert_allclose(log.item_features[:, d:].sum(1), 1.0)
  noise = log.item_features[:, :d] - truth.item_vectors
  assert 0 < noise.std() < 0.1
  # Users concentrate on few clusters: share of each user's top cluster >> 1/K.
  c = truth.item_cluster[log.item]
  key = log.user.astype(np.int64) * k + c
  per = np.bincount(key, minlength=log.num_users * k).reshape(log.num_users, k)
  top_share = per.max(1) / per.sum(1)
  assert np.median(top_share) > 3.0 / k


def test_affinity_drives_choices(small):
  log, truth = small
  # Interacted items align with the user's initial latent far better than random items.
  rng = np.random.default_rng(0)
  aff_pos = (truth.user_initial[log.user] * truth.item_vectors[log.item]).sum(1)
  rand = rng.integers(0, log.num_items, len(log))
  aff_rand = (truth.user_initial[log.user] * truth.item_vectors[rand]).sum(1)
  assert aff_pos.mean() > aff_rand.mean() + 3 * aff_rand.std() / np.sqrt(len(log)) + 0.1


def test_interest_drift_rate(small):
  log, truth = small
  # For users with >= 40 interactions, distance between the mean item vector of the first
  # and last quarter of their rows grows with their drift rate (times sqrt of their active time).
  counts = log.user_counts()
  users = np.flatnonzero(counts >= 40)
  order = np.lexsort((log.timestamp, log.user))
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  pos = np.arange(len(log)) - starts[log.user[order]]
  frac = pos / counts[log.user[order]]
  vec = truth.item_vectors[log.item[order]]
  u = log.user[order]
  dim = vec.shape[1]
  early = np.zeros((log.num_users, dim))
  late = np.zeros((log.num_users, dim))
  np.add.at(early, u[frac < 0.25], vec[frac < 0.25])
  np.add.at(late, u[frac >= 0.75], vec[frac >= 0.75])
  n_e = np.bincount(u[frac < 0.25], minlength=log.num_users)[:, None]
  n_l = np.bincount(u[frac >= 0.75], minlength=log.num_users)[:, None]
  shift = np.linalg.norm(early / np.maximum(n_e, 1) - late / np.maximum(n_l, 1), axis=1)
  # Expected displacement of a Brownian latent: rate * sqrt(active duration).
  expected = truth.drift_rate * np.sqrt(truth.user_end - truth.user_start)
  rho = stats.spearmanr(expected[users], shift[users]).correlation
  assert rho > 0.2, rho  # ~0.36 at seed 0; p < 1e-3 for 300+ users
  assert truth.drift_rate.min() > 0 and truth.drift_rate.std() > 0


def test_popularity_shift(small):
  log, truth = small
  pop = truth.popularity_logits
  p = pop.shape[0]
  period = np.searchsorted(truth.period_edges, log.timestamp, side="right") - 1
  assert period.min() >= 0 and period.max() <= p - 1
  counts = np.zeros((p, log.num_items))
  np.add.at(counts, (period, log.item), 1)
  # Counts of the last period follow its own popularity more than the first period's.
  last = np.log1p(counts[-1])
  r_same = stats.spearmanr(last, pop[-1]).correlation
  r_first = stats.spearmanr(last, pop[0]).correlation
  assert r_same > r_first + 0.1, (r_same, r_first)
  # Logits random-walk: adjacent periods are more alike than distant ones.
  assert np.corrcoef(pop[0], pop[1])[0, 1] > np.corrcoef(pop[0], pop[-1])[0, 1]


def test_timestamps(small):
  log, truth = small
  cfg = synthetic.PRESETS["small"]
  assert log.timestamp.min() >= cfg.start_time
  assert log.timestamp.max() < cfg.start_time + cfg.time_span
  first = np.full(log.num_users, np.iinfo(np.int64).max)
  np.minimum.at(first, log.user, log.timestamp)
  assert np.all(first >= truth.user_start)
  # Users start at different times over the span.
  assert np.std(first) > 0.15 * cfg.time_span
  # Within a user, rows are time-ordered.
  same = log.user[1:] == log.user[:-1]
  assert np.all(log.timestamp[1:][same] >= log.timestamp[:-1][same])


def test_chunks_match_generate_and_share_index_space():
  cfg = dataclasses.replace(synthetic.PRESETS["tiny"], chunk_users=70)
  chunks = list(synthetic.generate_chunks(cfg, seed=1))
  assert len(chunks) == synthetic.num_chunks(cfg) == 3
  whole = synthetic.generate(cfg, seed=1)
  np.testing.assert_array_equal(np.concatenate([c.item for c in chunks]), whole.item)
  for i, c in enumerate(chunks):
    assert (c.num_users, c.num_items) == (cfg.num_users, cfg.num_items)
    assert c.user.min() >= 70 * i and c.user.max() < 70 * (i + 1)
    assert c.item_features is chunks[0].item_features
  only_last = next(synthetic.generate_chunks(cfg, seed=1, chunks=range(2, 3)))
  np.testing.assert_array_equal(only_last.item, chunks[2].item)


def test_ratings_and_config_errors():
  cfg = dataclasses.replace(synthetic.PRESETS["tiny"], ratings=True)
  log = synthetic.generate(cfg)
  assert log.rating is not None and set(np.unique(log.rating)) <= {1, 2, 3, 4, 5}
  with pytest.raises(DataError, match="min_interactions"):
    dataclasses.replace(cfg, min_interactions=10, max_interactions=5)
  with pytest.raises(DataError, match="unknown synthetic preset"):
    synthetic.generate("huge")
