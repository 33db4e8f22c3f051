"""Tests of jaxrec.data.samplers against slow pure-Python references."""

import chex
import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrec.data import samplers, splits, synthetic
from jaxrec.data.log import DataError, InteractionLog


def _random_log(seed, n=200, users=12, items=30, tmax=40):
  rng = np.random.default_rng(seed)
  return InteractionLog.from_arrays(rng.integers(0, users, n), rng.integers(0, items, n),
                                    rng.integers(0, tmax, n), num_users=users, num_items=items)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 40), st.booleans())
def test_negatives_never_known(seed, num_items, use_pop):
  log = _random_log(seed, n=150, users=8, items=num_items)
  rng = np.random.default_rng(seed)
  csr = log.user_item_csr()
  known = [set(csr[1][csr[0][u]:csr[0][u + 1]].tolist()) for u in range(log.num_users)]
  pop = rng.random(num_items) if use_pop else None
  users = np.array([u for u in range(log.num_users) if len(known[u]) < num_items] * 3)
  if users.size == 0:
    return
  neg = samplers.sample_negatives(rng, users, 7, num_items, csr, pop)
  chex.assert_shape(neg, (users.size, 7))
  assert neg.dtype == np.int32 and neg.min() >= 0 and neg.max() < num_items
  for u, row in zip(users, neg):
    assert not set(row.tolist()) & known[u]


def test_negatives_distribution_and_errors():
  rng = np.random.default_rng(0)
  num_items = 10
  log = InteractionLog.from_arrays([0, 0, 1], [0, 1, 9], num_users=3, num_items=num_items)
  csr = log.user_item_csr()
  neg = samplers.sample_negatives(rng, np.full(20_000, 0), 1, num_items, csr).ravel()
  freq = np.bincount(neg, minlength=num_items) / neg.size
  np.testing.assert_allclose(freq, np.r_[0, 0, np.full(8, 1 / 8)], atol=0.015)
  pop = np.arange(1.0, num_items + 1)
  neg = samplers.sample_negatives(rng, np.full(20_000, 1), 1, num_items, csr, pop).ravel()
  expect = pop.copy()
  expect[[0, 1, 9]] = 0  # user 1 knows item 9; items 0, 1 are fine for it
  expect[[0, 1]] = pop[[0, 1]]
  freq = np.bincount(neg, minlength=num_items) / neg.size
  np.testing.assert_allclose(freq, expect / expect.sum(), atol=0.015)
  # A user knowing every item but one always gets that one (exact fallback).
  full = InteractionLog.from_arrays(np.zeros(9, int), np.arange(9), num_users=1, num_items=10)
  np.testing.assert_array_equal(samplers.sample_negatives(rng, [0, 0], 5, 10, full.user_item_csr()), 9)
  full = InteractionLog.from_arrays(np.zeros(10, int), np.arange(10), num_users=1, num_items=10)
  with pytest.raises(DataError, match="no admissible negative"):
    samplers.sample_negatives(rng, [0], 1, 10, full.user_item_csr())
  with pytest.raises(DataError, match="no admissible"):
    samplers.sample_negatives(rng, [1], 1, 10, csr, np.eye(10)[9])


def test_sequences_follow_arrival_order_on_time_ties():
  """Equal timestamps keep the file order (item 9 then item 2), never the item-id order (issue 8)."""
  log = InteractionLog.from_arrays([0, 0, 0, 1, 1], [4, 9, 2, 8, 1], [1, 5, 5, 3, 3], num_users=2,
                                   num_items=10)
  w = samplers.last_windows(log, 3, pad_id=-1)
  assert w.history[2].tolist() == [-1, 4, 9] and w.history[1].tolist() == [-1, -1, 4]
  assert w.history[4].tolist() == [-1, -1, 8]
  h, _ = samplers.user_histories(log, 3, pad_id=-1)
  assert h.tolist() == [[4, 9, 2], [-1, 8, 1]]
  # train.concat(valid): the valid row is the most recent even when it ties with a larger train id.
  train, valid = log.take(np.array([0, 1, 3, 4])), log.take(np.array([2]))
  h, _ = samplers.user_histories(valid, 3, previous=train, pad_id=-1)
  assert h[0].tolist() == [4, 9, 2]
  # Split and samplers agree: the validation item ends the test-time history.
  sp = splits.leave_last_out(log)
  assert sp.valid.item.tolist() == [9] and sp.test.item.tolist() == [2]
  h, _ = samplers.user_histories(sp.valid, 3, previous=sp.train, pad_id=-1)
  assert h[0].tolist() == [-1, 4, 9]
  batches = next(samplers.per_user_task_batches(None, log, 2, batch_users=2, num_support=1))
  assert batches["target"][0].tolist() == [2]  # latest support sequence: arrival breaks the tie


def _windows_reference(log, length, pad):
  hist = np.full((len(log), length), pad)
  mask = np.zeros((len(log), length), bool)
  for r in range(len(log)):
    prev = [j for j in range(len(log)) if log.user[j] == log.user[r]
            and (log.timestamp[j], j) < (log.timestamp[r], r)]
    prev = sorted(prev, key=lambda j: (log.timestamp[j], j))[-length:]
    for c, j in enumerate(prev):
      hist[r, length - len(prev) + c] = log.item[j]
      mask[r, length - len(prev) + c] = True
  return hist, mask


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 6))
def test_last_windows_matches_reference(seed, length):
  log = _random_log(seed, n=60, users=5, tmax=10)  # many time ties
  w = samplers.last_windows(log, length, pad_id=-1)
  h, m = _windows_reference(log, length, -1)
  np.testing.assert_array_equal(w.history, h)
  np.testing.assert_array_equal(w.mask, m)
  np.testing.assert_array_equal(w.target, log.item)
  np.testing.assert_array_equal(w.user, log.user)


def test_user_histories_continue_previous():
  log = _random_log(3, n=80, users=6)
  train, valid = log.take(np.arange(50)), log.take(np.arange(50, 80))
  h, m = samplers.user_histories(valid, 4, previous=train, pad_id=-1)
  chex.assert_shape([h, m], (6, 4))
  for u in range(6):
    rows = [j for j in range(80) if log.user[j] == u]
    rows = sorted(rows, key=lambda j: (log.timestamp[j], j))[-4:]
    np.testing.assert_array_equal(h[u][4 - len(rows):], log.item[rows])
    assert m[u].sum() == len(rows) and np.all(h[u][: 4 - len(rows)] == -1)
  h2, _ = samplers.user_histories(valid, 4, users=np.array([2, 5]), previous=train, pad_id=-1)
  np.testing.assert_array_equal(h2, h[[2, 5]])


def test_per_user_task_batches():
  log = synthetic.generate("tiny")
  win = samplers.last_windows(log, 5)
  batches = list(samplers.per_user_task_batches(None, log, 5, batch_users=64, num_support=8))
  assert len(batches) == 4  # 200 users with >= 2 rows -> 4 batches of 64
  seen = []
  for b in batches:
    chex.assert_shape(b["history"], (64, 8, 5))
    chex.assert_shape([b["target"], b["support_mask"]], (64, 8))
    for k in range(64):
      if not b["user_mask"][k]:
        assert not b["support_mask"][k].any()
        continue
      u = b["user"][k]
      seen.append(u)
      rows = np.flatnonzero((log.user == u) & (win.mask.sum(1) >= 1))
      rows = rows[np.lexsort((rows, log.timestamp[rows]))][::-1][:8]  # latest first
      s = b["support_mask"][k]
      assert s.sum() == len(rows)
      np.testing.assert_array_equal(b["target"][k][s], log.item[rows])
      np.testing.assert_array_equal(b["history"][k][s], win.history[rows])
  assert sorted(seen) == list(range(200))
  rb = next(samplers.per_user_task_batches(np.random.default_rng(0), log, 5, 16, 4))
  assert len(set(rb["user"].tolist())) == 16 and rb["user_mask"].all()
  assert not np.array_equal(rb["user"], np.arange(16))  # users shuffled
  for k, u in enumerate(rb["user"]):
    rows = np.flatnonzero((log.user == u) & (win.mask.sum(1) >= 1))
    assert rb["support_mask"][k].sum() == min(4, len(rows))
    assert set(rb["target"][k][rb["support_mask"][k]].tolist()) <= set(log.item[rows].tolist())


def _lookup_reference(log, strict):
  n = len(log)
  out = {k: np.full(n, -1) for k in ("user_prev_index", "item_prev_index")}
  for r in range(n):
    for name, col in (("user", log.user), ("item", log.item)):
      cands = [j for j in range(r)
               if col[j] == col[r] and (not strict or log.timestamp[j] < log.timestamp[r])]
      if cands:
        out[f"{name}_prev_index"][r] = cands[-1]
  return out


@pytest.mark.parametrize("strict", [False, True])
def test_last_interaction_lookup(strict):
  log = _random_log(5, n=120, users=7, items=9, tmax=30).sorted_by_time()
  got = samplers.last_interaction_lookup(log.user, log.item, log.timestamp, strict_time=strict)
  ref = _lookup_reference(log, strict)
  for name in ("user", "item"):
    np.testing.assert_array_equal(got[f"{name}_prev_index"], ref[f"{name}_prev_index"])
    idx = got[f"{name}_prev_index"]
    np.testing.assert_array_equal(got[f"{name}_prev_time"], np.where(idx >= 0, log.timestamp[idx], -1))
  with pytest.raises(DataError, match="non-decreasing"):
    samplers.last_interaction_lookup([0, 1], [0, 1], [5, 3])


def test_iterate_batches_static_shapes():
  arrays = {"user": np.arange(10, dtype=np.int32), "x": np.arange(20.0).reshape(10, 2)}
  traces = []

  @jax.jit
  def f(batch):
    traces.append(1)
    return (batch["x"].sum(1) * batch["mask"]).sum()

  batches = list(samplers.iterate_batches(arrays, 4, rng=np.random.default_rng(0)))
  assert len(batches) == 3
  total = sum(float(f(b)) for b in batches)
  assert len(traces) == 1 and total == pytest.approx(arrays["x"].sum())
  users = np.concatenate([b["user"][b["mask"]] for b in batches])
  assert sorted(users.tolist()) == list(range(10)) and not np.array_equal(users, np.arange(10))
  assert batches[-1]["mask"].tolist() == [True, True, False, False]
  assert len(list(samplers.iterate_batches(arrays, 4, drop_remainder=True))) == 2
  with pytest.raises(DataError, match="leading"):
    next(samplers.iterate_batches({"a": np.zeros(3), "b": np.zeros(4)}, 2))
