"""Tests of jaxrec.data.splits: leakage, sizes, ratios and determinism on synthetic data."""

import numpy as np
import pytest

from jaxrec.data import preprocess, splits, synthetic
from jaxrec.data.log import InteractionLog
from jaxrec.eval.queries import Queries


@pytest.fixture(scope="module")
def log():
  return synthetic.generate("tiny", seed=0)


def _rows(l):
  return set(zip(l.user.tolist(), l.item.tolist(), l.timestamp.tolist()))


def _is_partition(log, split):
  parts = [split.train, split.valid, split.test]
  assert sum(len(p) for p in parts) == len(log)
  key = lambda l: sorted(zip(l.user.tolist(), l.item.tolist(), l.timestamp.tolist()))
  cat = parts[0].concat(parts[1]).concat(parts[2])
  assert key(cat) == key(log)
  for p in parts:
    assert (p.num_users, p.num_items) == (log.num_users, log.num_items)


@pytest.mark.parametrize("ties", ["split", "earlier"])
def test_chronological(log, ties):
  s = splits.chronological(log, (0.7, 0.1, 0.2), ties=ties)
  _is_partition(log, s)
  assert s.train.timestamp.max() <= s.valid.timestamp.min() <= s.test.timestamp.min()
  if ties == "split":
    assert len(s.train) == int(0.7 * len(log)) and len(s.valid) == int(0.8 * len(log)) - int(0.7 * len(log))
  else:
    assert s.train.timestamp.max() < s.valid.timestamp.min() < s.test.timestamp.min()
  again = splits.chronological(log, (0.7, 0.1, 0.2), ties=ties)
  np.testing.assert_array_equal(again.test.item, s.test.item)


def test_chronological_ties():
  # All rows share 3 timestamps: "earlier" keeps tied rows together.
  l = InteractionLog.from_arrays(np.arange(10) % 4, np.arange(10) % 5, np.repeat([1, 2, 3], [4, 4, 2]))
  s = splits.chronological(l, (0.5, 0.2, 0.3), ties="earlier")
  assert set(s.train.timestamp.tolist()) == {1, 2} and len(s.valid) == 0 and len(s.test) == 2
  s = splits.chronological(l, (0.5, 0.2, 0.3))
  assert (len(s.train), len(s.valid), len(s.test)) == (5, 2, 3)
  with pytest.raises(ValueError, match="sum"):
    splits.chronological(l, (0.5, 0.2, 0.2))


@pytest.mark.parametrize("mode", ["count", "calendar"])
def test_periods(log, mode):
  ps = splits.periods(log, 6, mode=mode)
  assert len(ps) == 6 and sum(len(p) for p in ps) == len(log)
  for a, b in zip(ps[:-1], ps[1:]):
    assert a.timestamp.max() <= b.timestamp.min()
  if mode == "count":
    assert max(len(p) for p in ps) - min(len(p) for p in ps) <= 1
  else:
    span = (log.timestamp.max() + 1 - log.timestamp.min()) / 6
    for p in ps:
      assert p.timestamp.max() - p.timestamp.min() < span
  r = splits.period_ranges(10, num_valid=2, num_test=3, num_pretrain=1)
  assert (list(r["pretrain"]), list(r["train"]), list(r["valid"]), list(r["test"])) == (
      [0], [1, 2, 3, 4], [5, 6], [7, 8, 9])
  with pytest.raises(ValueError):
    splits.period_ranges(3, 2, 2)


@pytest.mark.parametrize("deduplicate", [True, False])
def test_leave_last_out(log, deduplicate):
  s = splits.leave_last_out(log, deduplicate=deduplicate)
  log = preprocess.deduplicate(log) if deduplicate else log
  _is_partition(log, s)
  counts = log.user_counts()
  eligible = np.flatnonzero(counts >= 3)
  np.testing.assert_array_equal(np.sort(s.test.user), eligible)
  np.testing.assert_array_equal(np.sort(s.valid.user), eligible)
  np.testing.assert_array_equal(s.info["eval_users"], eligible)
  # Per user: every train row <= valid row <= test row in time.
  tmax = np.full(log.num_users, -1, np.int64)
  np.maximum.at(tmax, s.train.user, s.train.timestamp)
  vt = np.full(log.num_users, -1, np.int64)
  vt[s.valid.user] = s.valid.timestamp
  tt = np.full(log.num_users, -1, np.int64)
  tt[s.test.user] = s.test.timestamp
  assert np.all(tmax[eligible] <= vt[eligible]) and np.all(vt[eligible] <= tt[eligible])
  # Users with < 3 interactions stay in train only.
  few = InteractionLog.from_arrays([0, 0, 1, 1, 1], [0, 1, 0, 1, 2], [1, 2, 1, 2, 3])
  s = splits.leave_last_out(few)
  assert s.train.user.tolist() == [0, 0, 1] and s.valid.item.tolist() == [1] and s.test.item.tolist() == [2]


@pytest.mark.parametrize("deduplicate", [True, False])
def test_user_holdout(log, deduplicate):
  s = splits.user_holdout(log, new_fraction=0.2, valid_fraction=0.1, seed=3, deduplicate=deduplicate)
  log = preprocess.deduplicate(log) if deduplicate else log
  _is_partition(log, s)
  tr, va, te = (set(np.unique(p.user).tolist()) for p in (s.train, s.valid, s.test))
  assert not (tr & va) and not (tr & te) and not (va & te)
  assert te == set(s.info["new_users"].tolist()) and len(te) == 40 and len(va) == 20
  # All rows of a new user are held out.
  np.testing.assert_array_equal(np.bincount(s.test.user, minlength=log.num_users)[s.info["new_users"]],
                                log.user_counts()[s.info["new_users"]])
  again = splits.user_holdout(log, new_fraction=0.2, valid_fraction=0.1, seed=3)
  np.testing.assert_array_equal(again.info["new_users"], s.info["new_users"])
  other = splits.user_holdout(log, new_fraction=0.2, valid_fraction=0.1, seed=4)
  assert not np.array_equal(other.info["new_users"], s.info["new_users"])


@pytest.mark.parametrize("deduplicate", [True, False])
def test_context_holdout(log, deduplicate):
  frac = 0.05 if deduplicate else 0.1  # only 24 users keep >= 16 distinct items
  s = splits.context_holdout(log, frac, frac, min_interactions=16, seed=0, deduplicate=deduplicate)
  log = preprocess.deduplicate(log) if deduplicate else log
  _is_partition(log, s)
  vu, tu = s.info["valid_users"], s.info["test_users"]
  assert len(vu) == len(tu) == int(frac * 200) and not set(vu.tolist()) & set(tu.tolist())
  counts = log.user_counts()
  assert counts[vu].min() >= 16 and counts[tu].min() >= 16
  np.testing.assert_array_equal(np.unique(s.valid.user), vu)
  np.testing.assert_array_equal(np.unique(s.test.user), tu)
  for users, part in ((vu, s.valid), (tu, s.test)):
    truth_n = np.bincount(part.user, minlength=log.num_users)[users]
    np.testing.assert_array_equal(truth_n, counts[users] - counts[users] // 2)
    # Context (in train) precedes the ground truth in time.
    cmax = np.full(log.num_users, -1, np.int64)
    np.maximum.at(cmax, s.train.user, s.train.timestamp)
    gmin = np.full(log.num_users, np.iinfo(np.int64).max)
    np.minimum.at(gmin, part.user, part.timestamp)
    assert np.all(cmax[users] <= gmin[users])
    assert np.all(np.bincount(s.train.user, minlength=log.num_users)[users] == counts[users] // 2)


def test_prequential(log):
  st = splits.prequential(log, 0.9, 0.02, 0.08, batch_size=16)
  n = len(log)
  assert st.offline_end == int(0.9 * n) and st.valid_end == int(0.92 * n)
  assert len(st.offline) + len(st.valid) + len(st.test) == n
  assert st.offline.timestamp.max() <= st.valid.timestamp.min() <= st.test.timestamp.min()
  for batches, part in ((st.valid_batches, st.valid), (st.test_batches, st.test)):
    nb = -(-len(part) // 16)
    for v in batches.values():
      assert v.shape == (nb, 16)
    m = batches["mask"]
    assert m.sum() == len(part) and np.all(m.ravel()[: len(part)]) and not m.ravel()[len(part):].any()
    np.testing.assert_array_equal(batches["item"][m], part.item)
    ts = batches["timestamp"][m]
    assert np.all(np.diff(ts) >= 0)  # batches in time order
    np.testing.assert_array_equal(st.log.item[batches["index"][m]], part.item)
  assert st.valid_batches["timestamp"][st.valid_batches["mask"]].max() <= st.test.timestamp.min()


# -- tie order (issue 8): equal timestamps keep the file's order, never the item-id order -----------

def _tied_log():
  """User 0's last two rows share t=5 and arrive as item 9 then item 2 (ids not sorted)."""
  return InteractionLog.from_arrays([0, 0, 0, 0, 1, 1, 1], [4, 7, 9, 2, 1, 3, 0],
                                    [1, 2, 5, 5, 1, 2, 3], num_users=2, num_items=10)


def test_leave_last_out_ties_follow_arrival_not_item_id():
  s = splits.leave_last_out(_tied_log())
  u0 = lambda part: part.item[part.user == 0].tolist()
  assert u0(s.test) == [2] and u0(s.valid) == [9] and u0(s.train) == [4, 7]
  assert s.train.item.tolist() == [4, 7, 1]  # parts emitted in (user, time, arrival) order


def test_context_holdout_ties_follow_arrival():
  l = InteractionLog.from_arrays([0] * 4 + [1] * 4, [4, 9, 2, 7, 1, 3, 0, 5], [1, 5, 5, 6, 1, 2, 3, 4],
                                 num_users=2, num_items=10)
  s = splits.context_holdout(l, 0.0, 0.5, min_interactions=4, seed=0)
  (tu,) = s.info["test_users"].tolist()
  if tu == 0:  # context = first half in arrival order: items 4, 9; truth 2, 7
    assert s.test.item.tolist() == [2, 7] and s.train.item[s.train.user == 0].tolist() == [4, 9]
  else:
    assert s.test.item.tolist() == [0, 5]


def test_chronological_and_prequential_ties_follow_arrival():
  # Neither users nor items are sorted in arrival order.
  l = InteractionLog.from_arrays([3, 1, 2, 0], [9, 2, 5, 1], [1, 1, 1, 1], num_users=4, num_items=10)
  s = splits.chronological(l, (0.5, 0.25, 0.25))
  assert s.train.item.tolist() == [9, 2] and s.valid.item.tolist() == [5] and s.test.item.tolist() == [1]
  assert splits.prequential(l, 0.5, 0.25, 0.25, batch_size=1).log.item.tolist() == [9, 2, 5, 1]
  assert [p.item.tolist() for p in splits.periods(l, 2)] == [[9, 2], [5, 1]]


def test_shuffled_ties_are_deterministic_per_seed(log):
  # Coarsen time so that many rows tie; tests/test_order.py checks the permutations themselves.
  coarse = InteractionLog.from_arrays(log.user, log.item, log.timestamp // 10**6,
                                      num_users=log.num_users, num_items=log.num_items)
  a, b, c = (splits.leave_last_out(coarse, tie_order="shuffle", tie_seed=k) for k in (0, 0, 1))
  np.testing.assert_array_equal(a.test.item, b.test.item)
  assert not np.array_equal(a.test.item, c.test.item)
  _is_partition(preprocess.deduplicate(coarse), c)
  with pytest.raises(ValueError, match="ties"):
    splits.leave_last_out(coarse, tie_order="item")


# -- repeats: the library path must not give known items as test positives --------------------------

def test_library_leave_last_out_deduplicates_by_default(log):
  """``splits.leave_last_out(log)`` on raw synthetic data: no test positive is a known item."""
  for s in (splits.leave_last_out(log), splits.make_split(log, "leave_last_out")):
    q = Queries.from_log(s.test, [s.train, s.valid])
    assert len(q) > 0 and not q.positive_is_known().any()
    assert not Queries.from_log(s.valid, [s.train]).positive_is_known().any()
    assert s.info["deduplicated"] and s.info["duplicates_dropped"] > 0
  raw = splits.leave_last_out(log, deduplicate=False)  # the documented opt-out keeps repeats
  assert Queries.from_log(raw.test, [raw.train, raw.valid]).positive_is_known().sum() > 0


@pytest.mark.parametrize("name", ["user_holdout", "context_holdout"])
def test_library_holdouts_deduplicate_by_default(log, name):
  options = {"valid_fraction": 0.05, "test_fraction": 0.05} if name == "context_holdout" else {}
  s = splits.make_split(log, name, seed=0, **options)
  assert len(s.test) > 0 and not Queries.from_log(s.test, [s.train, s.valid]).positive_is_known().any()
  key = s.test.user.astype(np.int64) * log.num_items + s.test.item
  assert np.unique(key).size == key.size
