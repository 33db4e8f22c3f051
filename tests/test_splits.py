"""Tests of jaxrec.data.splits: leakage, sizes, ratios and determinism on synthetic data."""

import numpy as np
import pytest

from jaxrec.data import order as order_lib
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


# -- RecBole 1.2.1's splits ---------------------------------------------------------------------------

def _recbole_calcu_split_ids(tot, ratios):
  """RecBole 1.2.1 ``Dataset._calcu_split_ids`` (recbole/data/dataset/dataset.py), verbatim."""
  cnt = [int(ratios[i] * tot) for i in range(len(ratios))]
  cnt[0] = tot - sum(cnt[1:])
  for i in range(1, len(ratios)):
    if cnt[0] <= 1:
      break
    if 0 < ratios[-i] * tot < 1:
      cnt[-i] += 1
      cnt[0] -= 1
  return list(np.cumsum(cnt)[:-1])


def _recbole_counts(tot, ratios):
  """Part sizes from RecBole's split ids, after ``split_by_ratio``'s normalisation."""
  tot_ratio = sum(ratios)
  ratios = [r / tot_ratio for r in ratios]
  ids = [0] + _recbole_calcu_split_ids(tot, ratios) + [tot]
  return [int(b - a) for a, b in zip(ids[:-1], ids[1:])]


def _recbole_leave_one_out(n, leave_one_num):
  """RecBole 1.2.1 ``_split_index_by_leave_one_out`` on one user's ``n - 1`` augmented targets
  (``SequentialDataset.data_augmentation``: every row but the first), as row positions 1 .. n-1."""
  index = list(range(1, n))
  parts = [[] for _ in range(leave_one_num + 1)]
  legal = min(leave_one_num, len(index) - 1)
  pr = len(index) - legal
  parts[0].extend(index[:pr])
  for i in range(legal):
    parts[-legal + i].append(index[pr])
    pr += 1
  return parts


def _realistic_log(seed=0, users=60):
  """Users of 1 .. 60 rows with coarse timestamps (many ties, ties not in item-id order) and repeats."""
  rng = np.random.default_rng(seed)
  sizes = np.concatenate([np.arange(1, 31), rng.integers(1, 61, users - 30)])
  user = np.repeat(np.arange(users), sizes)
  rng.shuffle(user)  # rows of different users interleave, as in a real file
  item = rng.integers(0, 40, user.size)  # 40 items: many repeated (user, item) rows
  ts = rng.integers(0, 8, user.size) * 1000  # 8 distinct timestamps: heavy ties
  return InteractionLog.from_arrays(user, item, ts, num_users=users, num_items=40)


@pytest.mark.parametrize("ratios", [(0.8, 0.1, 0.1), (0.7, 0.2, 0.1), (0.6, 0.2, 0.2), (8, 1, 1),
                                    (0.9, 0.05, 0.05)])
def test_recbole_split_counts_follow_recboles_rounding(ratios):
  sizes = np.arange(0, 400)
  got = splits.recbole_split_counts(sizes, ratios)
  want = np.array([_recbole_counts(int(t), list(ratios)) for t in sizes])
  np.testing.assert_array_equal(got, want)
  # the rule's corners: float truncation (0.1 * 30 = 3.0000000000000004), small users' single rows
  assert _recbole_counts(30, [0.8, 0.1, 0.1]) == [24, 3, 3]
  assert splits.recbole_split_counts(np.array([3, 2, 1]), (0.8, 0.1, 0.1)).tolist() == [
      [1, 1, 1], [1, 0, 1], [1, 0, 0]]
  with pytest.raises(ValueError, match="ratios"):
    splits.recbole_split_counts(np.array([5]), (1.0,))


@pytest.mark.parametrize("order", ["RO", "TO"])
def test_recbole_ratio_split_sizes_partition_and_no_leakage(order):
  log = _realistic_log()
  s = splits.recbole_ratio(log, (0.8, 0.1, 0.1), order=order, seed=3)
  _is_partition(log, s)  # every row once, repeats kept (no de-duplication)
  sizes = log.user_counts()
  want = np.array([_recbole_counts(int(t), [0.8, 0.1, 0.1]) for t in sizes])
  np.testing.assert_array_equal(s.info["counts"], want)
  for k, part in enumerate((s.train, s.valid, s.test)):
    np.testing.assert_array_equal(np.bincount(part.user, minlength=log.num_users), want[:, k])
  # row identity (not just (user, item, time)): each input row lands in one part
  tag = InteractionLog.from_arrays(log.user, np.arange(len(log)), log.timestamp, num_users=log.num_users,
                                   num_items=len(log))
  t = splits.recbole_ratio(tag, (0.8, 0.1, 0.1), order=order, seed=3)
  rows = np.concatenate([t.train.item, t.valid.item, t.test.item])
  np.testing.assert_array_equal(np.sort(rows), np.arange(len(log)))
  if order == "TO":
    # per user, train rows come no later than valid rows, valid no later than test (time, then file order)
    pos = order_lib.user_positions(log.user, log.timestamp, log.num_users).row_position
    for a, b in ((t.train, t.valid), (t.valid, t.test)):
      for u in range(log.num_users):
        pa, pb = pos[a.item[a.user == u]], pos[b.item[b.user == u]]
        if pa.size and pb.size:
          assert pa.max() < pb.min()


def test_recbole_ratio_random_order_is_seeded_and_global_grouping():
  log = _realistic_log(1)
  a, b, c = (splits.recbole_ratio(log, seed=k) for k in (0, 0, 1))
  np.testing.assert_array_equal(a.test.item, b.test.item)
  assert not np.array_equal(a.test.item, c.test.item)
  assert not np.array_equal(a.test.item, splits.recbole_ratio(log, order="TO").test.item)
  g = splits.recbole_ratio(log, (0.8, 0.1, 0.1), group_by="none", order="TO")
  n = len(log)
  assert (len(g.train), len(g.valid), len(g.test)) == tuple(_recbole_counts(n, [0.8, 0.1, 0.1]))
  assert g.train.timestamp.max() <= g.valid.timestamp.min() <= g.test.timestamp.min()
  with pytest.raises(ValueError, match="order"):
    splits.recbole_ratio(log, order="XO")


def test_recbole_ratio_time_order_keeps_ties_in_file_order():
  # one user, 10 rows all at t=0 arriving as items 9, 8, ..., 0: TO's stable sort keeps the file order,
  # so the last (test) row is item 0 and the validation row item 1, never decided by item id.
  l = InteractionLog.from_arrays(np.zeros(10, int), np.arange(9, -1, -1), np.zeros(10, int), num_users=1,
                                 num_items=10)
  s = splits.recbole_ratio(l, (0.8, 0.1, 0.1), order="TO")
  assert s.train.item.tolist() == list(range(9, 1, -1))
  assert s.valid.item.tolist() == [1] and s.test.item.tolist() == [0]


@pytest.mark.parametrize("mode", ["valid_and_test", "valid_only", "test_only"])
def test_recbole_leave_one_out_matches_recboles_rule(mode):
  log = _realistic_log(2)
  s = splits.recbole_leave_one_out(log, mode=mode)
  _is_partition(log, s)
  up = order_lib.user_positions(log.user, log.timestamp, log.num_users)
  items = log.item[up.order]
  num = splits.RECBOLE_LS_MODES[mode]
  for u in range(log.num_users):
    n = int(up.counts[u])
    mine = items[up.starts[u]:up.starts[u] + n]
    parts = _recbole_leave_one_out(n, num)
    if mode == "valid_and_test":
      train_t, valid_t, test_t = parts
    elif mode == "valid_only":
      (train_t, valid_t), test_t = parts, []
    else:
      (train_t, test_t), valid_t = parts, []
    assert s.valid.item[s.valid.user == u].tolist() == mine[valid_t].tolist()
    assert s.test.item[s.test.user == u].tolist() == mine[test_t].tolist()
    # train rows: the user's first row (input only) and every training target
    assert s.train.item[s.train.user == u].tolist() == mine[[0] + train_t if n else []].tolist()
  counts = log.user_counts()
  # users with 3 rows: a test row and no validation row (RecBole holds out min(2, targets - 1) = 1)
  three = np.flatnonzero(counts == 3)
  if mode == "valid_and_test":
    assert three.size and not np.isin(s.valid.user, three).any()
    assert np.array_equal(np.sort(s.test.user[np.isin(s.test.user, three)]), three)
  assert not np.isin(np.concatenate([s.valid.user, s.test.user]), np.flatnonzero(counts <= 2)).any()


def test_recbole_leave_one_out_ties_in_file_order_and_repeats_kept():
  # u0: rows at t = 1, 2, 5, 5, 5 arriving as items 4, 7, 9, 2, 7 (a repeat of 7, ties not by id)
  l = InteractionLog.from_arrays([0] * 5, [4, 7, 9, 2, 7], [1, 2, 5, 5, 5], num_users=1, num_items=10)
  s = splits.recbole_leave_one_out(l)
  assert s.test.item.tolist() == [7] and s.valid.item.tolist() == [2] and s.train.item.tolist() == [4, 7, 9]
  q = Queries.from_log(s.test, [s.train, s.valid])
  assert q.positive_is_known().all()  # the repeat is a test positive that is also a training item
  with pytest.raises(ValueError, match="mode"):
    splits.recbole_leave_one_out(l, mode="both")


def test_recbole_timestamps_tie_what_float32_cannot_tell_apart():
  # ML-100K's span (874724710 .. 893286638, unix seconds): min-max normalised to [0, 1] in float32 the
  # step near 1 is 2^-24 * 18.6M s ~ 1.1 s, so 893286601 and 893286602 tie; the ends stay apart.
  t = np.array([874724710, 893286602, 893286601, 880000000, 893286638, 874724711])
  r = splits.recbole_timestamps(t)
  assert r.dtype == np.int64 and r[1] == r[2] and r[0] < r[5] < r[3] < r[1] < r[4]
  np.testing.assert_array_equal(splits.recbole_timestamps(t, "exact"), np.argsort(np.argsort(t)))
  raw = splits.recbole_timestamps(t, "float32")  # raw unix seconds in float32: steps of 64 s
  assert raw[1] == raw[2] and raw[0] == raw[5] and raw[3] < raw[1]
  np.testing.assert_array_equal(splits.recbole_timestamps(np.array([5, 5])), [0, 0])
  # tied rows keep the file's order: item 2 arrives after item 1 and is validated after it, although
  # its exact time is a second earlier
  l = InteractionLog.from_arrays([0] * 6, [4, 7, 9, 1, 2, 3], [874724710, 880000000, 885000000, 893286602,
                                                              893286601, 893286638], num_users=1,
                                 num_items=10)
  exact = splits.recbole_leave_one_out(l)
  assert exact.test.item.tolist() == [3] and exact.valid.item.tolist() == [1]
  l2 = InteractionLog.from_arrays(l.user, l.item, splits.recbole_timestamps(l.timestamp), num_users=1,
                                  num_items=10)
  s = splits.recbole_leave_one_out(l2)
  assert s.test.item.tolist() == [3] and s.valid.item.tolist() == [2]
  with pytest.raises(ValueError, match="mode"):
    splits.recbole_timestamps(t, "float16")
