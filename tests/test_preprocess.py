"""Tests of jaxrec.data.preprocess against slow reference implementations."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrec.data import preprocess, synthetic
from jaxrec.data.log import DataError, InteractionLog


def _random_log(seed, n=300, users=20, items=15, rating=False):
  rng = np.random.default_rng(seed)
  return InteractionLog.from_arrays(
      rng.integers(0, users, n), rng.integers(0, items, n), rng.integers(0, 50, n),
      rng.integers(1, 6, n) if rating else None, num_users=users, num_items=items)


def test_implicit():
  log = synthetic.generate(dataclasses.replace(synthetic.PRESETS["tiny"], ratings=True))
  out = preprocess.implicit(log, 4)
  assert out.rating is None
  assert len(out) == int((log.rating >= 4).sum())
  np.testing.assert_array_equal(out.item, log.item[log.rating >= 4])
  with pytest.raises(DataError, match="implicit.*removed all"):
    preprocess.implicit(log, 6)
  with pytest.raises(DataError, match="no"):
    preprocess.implicit(dataclasses.replace(log, rating=None), 4)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(["first", "last"]))
def test_deduplicate_matches_reference(seed, keep):
  log = _random_log(seed)
  out = preprocess.deduplicate(log, keep)
  ref = {}
  for r in range(len(log)):  # reference: first/last in (time, row) order
    key = (int(log.user[r]), int(log.item[r]))
    t = (int(log.timestamp[r]), r)
    if key not in ref or (t < ref[key] if keep == "first" else t > ref[key]):
      ref[key] = t
  rows = sorted(t[1] for t in ref.values())
  np.testing.assert_array_equal(out.user, log.user[rows])
  np.testing.assert_array_equal(out.timestamp, log.timestamp[rows])


def _k_core_reference(log, uk, ik):
  rows = set(range(len(log)))
  while True:
    uc, ic = {}, {}
    for r in rows:
      uc[log.user[r]] = uc.get(log.user[r], 0) + 1
      ic[log.item[r]] = ic.get(log.item[r], 0) + 1
    new = {r for r in rows if uc[log.user[r]] >= uk and ic[log.item[r]] >= ik}
    if new == rows:
      return sorted(rows)
    rows = new


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 25), st.integers(0, 30))
def test_k_core_matches_reference(seed, uk, ik):
  log = _random_log(seed)
  ref = _k_core_reference(log, uk, ik)
  if not ref:
    with pytest.raises(DataError, match="k_core"):
      preprocess.k_core(log, uk, ik)
    return
  out = preprocess.k_core(log, uk, ik)
  np.testing.assert_array_equal(out.user, log.user[ref])
  np.testing.assert_array_equal(out.item, log.item[ref])
  assert out.user_counts()[out.user_counts() > 0].min() >= uk
  assert out.item_counts()[out.item_counts() > 0].min() >= ik


def test_compact_keeps_vocab_and_features():
  log = synthetic.generate("tiny")
  keep = (log.user % 3 == 0) & (log.item % 2 == 0)
  sub = log.take(keep)
  out = preprocess.compact(sub)
  assert out.num_users == len(np.unique(sub.user)) and out.num_items == len(np.unique(sub.item))
  np.testing.assert_array_equal(out.user_vocab.decode(out.user), sub.user)
  np.testing.assert_array_equal(out.item_vocab.decode(out.item), sub.item)
  np.testing.assert_array_equal(out.item_features, log.item_features[np.unique(sub.item)])
  # With raw vocabularies, raw ids survive the re-indexing.
  raw = InteractionLog.from_raw(np.array(["b", "a", "c", "a"]), np.array([10, 20, 30, 10]))
  out = preprocess.compact(raw.take(np.array([0, 2])))
  assert out.user_vocab.decode(out.user).tolist() == ["b", "c"]
  assert out.item_vocab.decode(out.item).tolist() == [10, 30]
