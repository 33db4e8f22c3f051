"""Tests of jaxrec.data.order: time order with ties in arrival order, or shuffled with a seed."""

import numpy as np
import pytest

from jaxrec.data import order, synthetic


def _reference(user, timestamp, key):
  """Pure-Python sort by (user, timestamp, key)."""
  return sorted(range(len(user)), key=lambda r: (user[r], timestamp[r], key[r]))


def test_ties_keep_arrival_order_not_item_order():
  # File order: (u0, item 9, t=5) then (u0, item 2, t=5); the later-arriving item 2 is last.
  user = np.array([0, 0, 0, 1])
  item = np.array([3, 9, 2, 5])
  ts = np.array([1, 5, 5, 0])
  up = order.user_positions(user, ts)
  assert item[up.order].tolist() == [3, 9, 2, 5]
  assert up.position.tolist() == [0, 1, 2, 0] and up.from_end.tolist() == [2, 1, 0, 0]
  assert up.counts.tolist() == [3, 1] and up.starts.tolist() == [0, 3]
  assert item[order.time_order(ts)].tolist() == [5, 3, 9, 2]
  # Reversed file order reverses the tie.
  p = [0, 2, 1, 3]
  assert item[p][order.user_time_order(user[p], ts[p])].tolist() == [3, 2, 9, 5]


def test_matches_reference_on_many_ties():
  rng = np.random.default_rng(0)
  user, ts = rng.integers(0, 6, 300), rng.integers(0, 5, 300)
  np.testing.assert_array_equal(order.user_time_order(user, ts), _reference(user, ts, np.arange(300)))
  np.testing.assert_array_equal(order.time_order(ts), _reference(np.zeros(300), ts, np.arange(300)))
  up = order.user_positions(user, ts, num_users=8)
  assert up.counts.shape == (8,) and up.counts[6:].tolist() == [0, 0]
  for j, r in enumerate(up.order):
    earlier = [q for q in range(300) if user[q] == user[r] and (ts[q], q) < (ts[r], r)]
    assert up.position[j] == len(earlier)
  np.testing.assert_array_equal(up.row_position[up.order], up.position)
  np.testing.assert_array_equal(up.order[up.starts[user[up.order]] + up.position], up.order)


def test_shuffle_is_deterministic_per_seed_and_only_reorders_ties():
  rng = np.random.default_rng(1)
  user, ts = rng.integers(0, 4, 200), rng.integers(0, 3, 200)
  a = order.user_time_order(user, ts, ties="shuffle", seed=0)
  b = order.user_time_order(user, ts, ties="shuffle", seed=0)
  c = order.user_time_order(user, ts, ties="shuffle", seed=1)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c) and not np.array_equal(a, order.user_time_order(user, ts))
  for o in (a, c):  # still grouped by user in time order, a permutation of the rows
    assert sorted(o.tolist()) == list(range(200))
    key = user[o] * 10 + ts[o]
    assert np.all(np.diff(key) >= 0)
  g = order.time_order(ts, ties="shuffle", seed=3)
  assert np.all(np.diff(ts[g]) >= 0)
  np.testing.assert_array_equal(g, order.time_order(ts, ties="shuffle", seed=3))
  assert not np.array_equal(g, order.time_order(ts, ties="shuffle", seed=4))
  # Shuffled ties of one pair land both ways across seeds.
  firsts = {int(order.time_order(np.array([5, 5]), ties="shuffle", seed=s)[0]) for s in range(20)}
  assert firsts == {0, 1}


def test_concatenated_logs_keep_earlier_part_first():
  log = synthetic.generate("tiny", seed=0)
  train, valid = log.take(np.arange(0, len(log), 2)), log.take(np.arange(1, len(log), 2))
  coarse_t = np.concatenate([train.timestamp, valid.timestamp]) // 10**7  # many ties
  user = np.concatenate([train.user, valid.user])
  o = order.user_time_order(user, coarse_t)
  from_valid = o >= len(train)
  grp = user[o].astype(np.int64) * 10**6 + coarse_t[o]
  same = grp[1:] == grp[:-1]
  assert same.any()
  assert not np.any(same & from_valid[:-1] & ~from_valid[1:])  # never a valid row before a train row


def test_errors():
  with pytest.raises(ValueError, match="ties"):
    order.time_order(np.zeros(3), ties="item")
  with pytest.raises(ValueError, match="shape"):
    order.user_time_order(np.zeros(3, int), np.zeros(2))
  empty = order.user_positions(np.zeros(0, int), np.zeros(0), num_users=2)
  assert empty.order.size == 0 and empty.counts.tolist() == [0, 0] and empty.starts.tolist() == [0, 0]
