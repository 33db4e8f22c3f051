"""Tests of jaxrec.eval.paper_protocols: each named protocol applied to a log, end to end."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.data import preprocess, splits, synthetic
from jaxrec.data.log import InteractionLog
from jaxrec.eval import paper_protocols as pp
from jaxrec.eval import protocols as protocols_lib
from jaxrec.eval.queries import Queries


@pytest.fixture(scope="module")
def log():
  return synthetic.generate("tiny", seed=0)


def test_registry_names_each_protocol_once():
  assert {"leave-last-out", "user-holdout", "context-holdout", "2ts-chronological",
          "prequential"} <= set(pp.PROTOCOLS)
  for name, p in pp.PROTOCOLS.items():
    assert p.name == name and p.reference and pp.get(name) is p
    hash(p)  # frozen and hashable
  with pytest.raises(ValueError, match="unknown protocol"):
    pp.get("nope")
  tts = pp.get("2ts-chronological")
  assert (tts.split, tts.options["ratios"], tts.deduplicate, tts.exclude, tts.num_negatives) == (
      "chronological", (0.7, 0.1, 0.2), False, "none", 499)
  llo = pp.get("leave-last-out")
  assert (llo.split, llo.deduplicate, llo.exclude, llo.num_negatives, llo.full_ranking) == (
      "leave_last_out", True, "known", 99, True)


def test_leave_last_out_protocol_has_no_known_test_positives(log):
  p = pp.prepare(log, "leave-last-out")
  assert len(p.test_queries) > 0 and not p.test_queries.positive_is_known().any()
  assert not p.valid_queries.positive_is_known().any()
  assert len(p.log) == len(preprocess.deduplicate(log))
  # Without de-duplication the same split gives known test positives (the bug this guards).
  raw = pp.prepare(log, pp.get("leave-last-out").replace(deduplicate=False))
  assert raw.test_queries.positive_is_known().sum() > 0


@pytest.mark.parametrize("name", ["user-holdout", "context-holdout"])
def test_holdout_protocols_exclude_known_and_drop_repeats(name):
  log = synthetic.generate("small", seed=0)
  p = pp.prepare(log, pp.get(name).with_seed(1))
  assert p.split.info["seed"] == 1
  assert len(p.test_queries) > 0 and not p.test_queries.positive_is_known().any()
  assert p.test_queries.known_items.size > 0
  key = p.split.test.user.astype(np.int64) * log.num_items + p.split.test.item
  assert np.unique(key).size == key.size  # repeats dropped: each test positive once per user


def test_2ts_protocol_keeps_repeats_and_excludes_nothing():
  log = synthetic.generate("small", seed=0)
  p = pp.prepare(log, "2ts-chronological")
  assert len(p.log) == len(log)  # repeat consumption kept
  assert p.test_queries.known_items.size == 0 and p.valid_queries.known_items.size == 0
  ref = splits.chronological(log, (0.7, 0.1, 0.2))
  np.testing.assert_array_equal(p.split.test.item, ref.test.item)
  r = p.rankings()
  assert set(r) == {"full", "sampled499"} and r["sampled499"].num_negatives == 499
  assert not r["sampled499"].popularity
  # 499 negatives drawn from all items but the positive: known items may appear.
  cands = r["sampled499"].draw(p.test_queries, p.num_items).items
  assert cands.shape == (len(p.test_queries), 500)
  assert not np.any(cands[:, 1:] == cands[:, :1])
  known = pp.prepare(log, "chronological").test_queries
  k = known.exclusion_matrix(np.arange(200))
  assert any(np.isin(cands[j, 1:], k[j][k[j] >= 0]).any() for j in range(200))


def test_2ts_filtered_protocol_has_the_same_queries_and_excludes_earlier_items():
  log = synthetic.generate("small", seed=0)
  paper, filt = pp.prepare(log, "2ts-chronological"), pp.prepare(log, "2ts-chronological-filtered")
  for part in ("valid", "test"):
    a, b = getattr(paper.split, part), getattr(filt.split, part)
    np.testing.assert_array_equal(a.user, b.user)
    np.testing.assert_array_equal(a.item, b.item)
  q = filt.test_queries
  assert q.positive_is_known().mean() > 0.05  # repeat consumption: known positives stay as queries
  cands = filt.rankings()["sampled499"].draw(q, filt.num_items).items
  k = q.exclusion_matrix(np.arange(300))
  assert not any(np.isin(cands[j, 1:], k[j][k[j] >= 0]).any() for j in range(300))


def test_rankings_follow_the_fields(log):
  p = pp.get("leave-last-out").replace(num_negatives=20, negatives="popularity", negative_seed=3)
  with pytest.raises(ValueError, match="item_counts"):
    p.rankings()
  r = pp.prepare(log, p).rankings()
  assert isinstance(r["full"], protocols_lib.FullRanking)
  s = r["sampled20"]
  assert s.popularity and s.seed == 3 and s.item_counts.shape == (log.num_items,)
  assert set(p.replace(full_ranking=False).rankings(np.ones(log.num_items))) == {"sampled20"}
  assert set(p.replace(num_negatives=None).rankings()) == {"full"}


def test_tie_order_is_a_protocol_field():
  # u0's last two rows tie at t=5, arriving item 9 then item 2: 2 is the test item, never by id.
  log = InteractionLog.from_arrays([0, 0, 0, 0], [4, 7, 9, 2], [1, 2, 5, 5], num_users=1,
                                   num_items=10)
  p = pp.prepare(log, "leave-last-out")
  assert p.split.test.item.tolist() == [2] and p.split.valid.item.tolist() == [9]
  tests = {pp.prepare(log, pp.get("leave-last-out").replace(ties="shuffle", tie_seed=s))
           .split.test.item[0] for s in range(20)}
  assert tests == {2, 9}


def test_prequential_is_split_only(log):
  p = pp.get("prequential")
  st = p.split_log(log)
  assert isinstance(st, splits.Stream) and st.offline_end == int(0.95 * len(log))
  assert p.rankings() == {}
  with pytest.raises(ValueError, match="prequential"):
    pp.prepare(log, p)


def test_bad_fields_are_rejected():
  with pytest.raises(ValueError, match="split"):
    pp.EvalProtocol("x", "nope")
  with pytest.raises(ValueError, match="options"):
    pp.EvalProtocol("x", "leave_last_out", {"tie_order": "shuffle"})
  with pytest.raises(ValueError, match="options"):
    pp.EvalProtocol("x", "chronological", {"seed": 1})
  for field, value in (("ties", "item"), ("exclude", "all"), ("negatives", "hard")):
    with pytest.raises(ValueError, match=field):
      pp.EvalProtocol("x", "leave_last_out", **{field: value})
  chrono = pp.get("chronological")
  assert dataclasses.replace(chrono).split_options == chrono.split_options


# -- RecBole 1.2.1's protocols ------------------------------------------------------------------------

def _recbole_like_log():
  """Users of 3 .. 40 rows, coarse timestamps (ties) and repeated (user, item) rows."""
  rng = np.random.default_rng(0)
  sizes = np.arange(3, 41)
  user = np.repeat(np.arange(sizes.size), sizes)
  rng.shuffle(user)
  return InteractionLog.from_arrays(user, rng.integers(0, 50, user.size), rng.integers(0, 6, user.size),
                                    num_users=sizes.size, num_items=50)


def test_recbole_random_811_protocol():
  log = _recbole_like_log()
  p = pp.prepare(log, pp.get("recbole-random-811").with_seed(4))
  assert len(p.log) == len(log)  # no de-duplication, no k-core
  assert p.split.info["seed"] == 4 and p.split.info["order"] == "RO"
  np.testing.assert_array_equal(p.split.info["counts"],
                                splits.recbole_split_counts(log.user_counts(), (0.8, 0.1, 0.1)))
  # one query per user with a held-out row: its distinct held-out items are one ground truth
  for q, part in ((p.valid_queries, p.split.valid), (p.test_queries, p.split.test)):
    assert q.group is not None
    np.testing.assert_array_equal(np.unique(q.group), np.unique(part.user))
    pairs = np.unique(part.user.astype(np.int64) * log.num_items + part.item)
    assert len(q) == pairs.size
  # exclusions: training items for validation, training + validation items at test time
  def known(q, u):
    return set(q.known_items[q.known_indptr[u]:q.known_indptr[u + 1]].tolist())
  for u in range(log.num_users):
    tr = set(p.split.train.item[p.split.train.user == u].tolist())
    va = set(p.split.valid.item[p.split.valid.user == u].tolist())
    assert known(p.valid_queries, u) == tr and known(p.test_queries, u) == tr | va
  assert set(p.rankings()) == {"full"}
  assert pp.prepare(log, "recbole-time-811").split.info["order"] == "TO"


def _item_table_scores(params, queries, items):
  """A ScoreFn that scores item i as params[i] for every user."""
  if items.ndim == 1:
    return jnp.broadcast_to(params[items][None], (queries["user"].shape[0], items.shape[0]))
  return params[items]


def test_recbole_random_811_metrics_are_recboles_per_user_metrics():
  # A user with test items {1, 2, 3}: a scorer that ranks item 2 first and item 1 twelfth (items 4..13
  # above it) gives RecBole's Recall@10 = 1/3 and NDCG@10 = (1/log2 2) / (1 + 1/log2 3 + 1/log2 4).
  log = InteractionLog.from_arrays([0] * 3, [1, 2, 3], [0, 0, 0], num_users=1, num_items=20)
  q = pp.prepare(log, pp.EvalProtocol("t", "recbole_ratio", {"ratios": (0.0, 0.0, 1.0)},
                                      exclude="known", num_negatives=None, group_by_user=True)).test_queries
  assert q.group is not None and len(q) == 3
  order = [2] + list(range(4, 14)) + [1, 3] + list(range(14, 20)) + [0]
  scores = np.zeros(20, np.float32)
  scores[order] = np.arange(20, 0, -1)
  res = protocols_lib.evaluate(_item_table_scores, scores, q, protocols_lib.FullRanking(), 20, ks=(10,))
  assert res.summary["Recall@10"] == pytest.approx(1 / 3)
  assert res.summary["NDCG@10"] == pytest.approx(1.0 / (1 + 1 / np.log2(3) + 1 / np.log2(4)))


def test_recbole_leave_one_out_protocol():
  log = _recbole_like_log()
  p = pp.prepare(log, "recbole-leave-one-out")
  proto = p.protocol
  assert (proto.exclude, proto.max_history, proto.group_by_user, proto.deduplicate) == ("none", 50, False,
                                                                                         False)
  assert len(p.log) == len(log)
  # nothing excluded: full ranking over every item, even the user's earlier items
  assert p.test_queries.known_items.size == 0 and p.valid_queries.known_items.size == 0
  counts = log.user_counts()
  assert len(p.test_queries) == np.count_nonzero(counts >= 3)
  assert len(p.valid_queries) == np.count_nonzero(counts >= 4)
  ref = splits.recbole_leave_one_out(log)
  np.testing.assert_array_equal(p.split.test.item, ref.test.item)
  # repeats kept: some test positives are items the user had before (RecBole ranks them anyway)
  assert Queries.from_log(p.split.test, [p.split.train, p.split.valid]).positive_is_known().any()
  assert set(p.rankings()) == {"full"}


def test_recbole_protocol_fields_are_checked():
  with pytest.raises(ValueError, match="group_by_user"):
    pp.EvalProtocol("x", "recbole_ratio", group_by_user=True, num_negatives=99)
  with pytest.raises(ValueError, match="max_history"):
    pp.EvalProtocol("x", "recbole_leave_one_out", num_negatives=None, max_history=0)
  with pytest.raises(ValueError, match="options"):
    pp.EvalProtocol("x", "recbole_ratio", {"tie_order": "shuffle"})


def test_recbole_protocols_read_time_as_recbole_stores_it():
  # two rows a second apart near the end of ML-100K's span tie in RecBole's float32 time
  l = InteractionLog.from_arrays([0] * 6, [4, 7, 9, 1, 2, 3], [874724710, 880000000, 885000000, 893286602,
                                                              893286601, 893286638], num_users=1,
                                 num_items=10)
  p = pp.prepare(l, "recbole-leave-one-out")
  assert p.protocol.timestamps == "minmax-float32"
  assert p.split.test.item.tolist() == [3] and p.split.valid.item.tolist() == [2]
  assert p.log.timestamp.tolist() == splits.recbole_timestamps(l.timestamp).tolist()
  exact = pp.prepare(l, pp.get("recbole-leave-one-out").replace(timestamps="exact"))
  assert exact.split.valid.item.tolist() == [1]
  assert pp.get("recbole-leave-one-out").split_log(l).valid.item.tolist() == [2]
  with pytest.raises(ValueError, match="timestamps"):
    pp.EvalProtocol("x", "recbole_leave_one_out", num_negatives=None, timestamps="float16")
