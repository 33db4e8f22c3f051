"""Tests for jaxrec.eval.metrics: property tests on single-positive metrics, brute force on groups."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrec.eval import metrics

KS = (1, 3, 5, 10)


@st.composite
def ranks_and_candidates(draw):
  q = draw(st.integers(1, 30))
  ncand = np.array(draw(st.lists(st.integers(1, 200), min_size=q, max_size=q)))
  frac = np.array(draw(st.lists(st.floats(0, 1), min_size=q, max_size=q)))
  ranks = 1 + np.floor(frac * (ncand - 1)).astype(np.int64)
  return ranks, ncand


@settings(max_examples=60, deadline=None)
@given(ranks_and_candidates())
def test_single_positive_properties(rc):
  ranks, ncand = rc
  m = metrics.metrics_from_ranks(ranks, ncand, KS)
  for name, v in m.items():
    assert v.shape == ranks.shape
    assert np.all((v >= 0) & (v <= 1)), name
  np.testing.assert_allclose(m["MRR"], 1.0 / ranks)
  for k in KS:
    np.testing.assert_array_equal(m[f"NDCG@{k}"] == 1.0, ranks == 1)
    np.testing.assert_array_equal(m[f"HR@{k}"], (ranks <= k).astype(float))
    np.testing.assert_array_equal(m[f"Recall@{k}"], m[f"HR@{k}"])
    np.testing.assert_allclose(m[f"Precision@{k}"] * k, m[f"HR@{k}"])
    np.testing.assert_array_less(m[f"NDCG@{k}"], m[f"HR@{k}"] + 1e-12)
  for k1, k2 in zip(KS[:-1], KS[1:]):
    assert np.all(m[f"HR@{k1}"] <= m[f"HR@{k2}"])
    assert np.all(m[f"NDCG@{k1}"] <= m[f"NDCG@{k2}"])
  auc_ref = np.where(ncand > 1, (ncand - ranks) / np.maximum(ncand - 1, 1), 1.0)
  np.testing.assert_allclose(m["AUC"], auc_ref)


def test_known_values():
  m = metrics.metrics_from_ranks(np.array([1, 2, 3, 11]), 11, ks=(10,))
  np.testing.assert_allclose(m["NDCG@10"], [1.0, 1 / np.log2(3), 0.5, 0.0])
  np.testing.assert_allclose(m["HR@10"], [1, 1, 1, 0])
  np.testing.assert_allclose(m["AUC"], [1.0, 0.9, 0.8, 0.0])
  s = metrics.summarize(m)
  assert s["HR@10"] == pytest.approx(0.75)
  assert metrics.summarize(m, weights=np.array([1, 0, 0, 0]))["MRR"] == pytest.approx(1.0)


def test_bad_ranks_raise():
  with pytest.raises(ValueError, match=">= 1"):
    metrics.metrics_from_ranks(np.array([0, 1]), 5)
  with pytest.raises(ValueError, match="num_candidates"):
    metrics.metrics_from_ranks(np.array([6]), 5)


def _brute_group(scores, truth, k):
  """Reference: rank all candidates (ties broken against positives), score the top-K set."""
  n = scores.shape[0]
  is_pos = np.zeros(n, bool)
  is_pos[truth] = True
  # Ties against positives: sort by score desc, positives after negatives on ties.
  order = np.lexsort((is_pos, -scores))
  topk = order[:k]
  hits = is_pos[topk]
  dcg = (hits / np.log2(np.arange(2, k + 2))[: len(hits)]).sum()
  idcg = (1 / np.log2(np.arange(2, min(len(truth), k) + 2))).sum()
  pos_scores = scores[truth]
  neg_scores = scores[~is_pos]
  auc = np.mean([(neg_scores < s).mean() for s in pos_scores])
  return {"HR": float(hits.any()), "Recall": hits.sum() / len(truth), "Precision": hits.sum() / k,
          "AUC": auc}, dcg / idcg


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000))
def test_grouped_against_brute_force(seed):
  rng = np.random.default_rng(seed)
  n = 12
  ranks, group, refs = [], [], []
  for g in range(4):
    scores = rng.integers(0, 6, n).astype(float)  # many ties
    truth = rng.choice(n, size=rng.integers(1, 5), replace=False)
    # Positives tie with negatives but not with each other (tied positives each count the other).
    scores[truth] = rng.choice(6, size=len(truth), replace=False)
    for t in truth:
      ranks.append(1 + np.sum(np.delete(scores, t) >= scores[t]))
      group.append(10 + g)
    refs.append((scores, truth))
  gids, m = metrics.grouped_metrics(np.array(ranks), n, np.array(group), ks=(1, 3, 5))
  np.testing.assert_array_equal(gids, [10, 11, 12, 13])
  for g, (scores, truth) in enumerate(refs):
    for k in (1, 3, 5):
      ref, _ = _brute_group(scores, truth, k)
      assert m[f"HR@{k}"][g] == pytest.approx(ref["HR"])
      assert m[f"Recall@{k}"][g] == pytest.approx(ref["Recall"])
      assert m[f"Precision@{k}"][g] == pytest.approx(ref["Precision"])
      assert 0 <= m[f"NDCG@{k}"][g] <= 1 + 1e-12
    assert m["AUC"][g] == pytest.approx(ref["AUC"])


def test_grouped_ndcg_without_ties_matches_brute_force():
  rng = np.random.default_rng(3)
  scores = rng.permutation(20).astype(float)
  truth = np.array([2, 7, 11])
  ranks = np.array([1 + np.sum(scores > scores[t]) for t in truth])
  _, m = metrics.grouped_metrics(ranks, 20, np.zeros(3, int), ks=(5, 10))
  for k in (5, 10):
    _, ndcg = _brute_group(scores, truth, k)
    assert m[f"NDCG@{k}"][0] == pytest.approx(ndcg)


def test_grouped_single_positive_equals_ungrouped():
  ranks = np.array([1, 4, 9, 30])
  single = metrics.metrics_from_ranks(ranks, 30, KS)
  _, grouped = metrics.grouped_metrics(ranks, 30, np.arange(4), KS)
  for name in single:
    np.testing.assert_allclose(grouped[name], single[name], err_msg=name)
