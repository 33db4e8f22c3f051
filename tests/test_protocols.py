"""Tests for jaxrec.eval.protocols / queries, jaxrec.models.common and jaxrec.models.nonlearned."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.data.log import DataError, InteractionLog
from jaxrec.eval import protocols
from jaxrec.eval.queries import Queries
from jaxrec.models import common, nonlearned


def _table_scores(table, queries, items):
  """Score function reading a fixed [U, N] table: identical numbers on both item paths."""
  rows = jnp.take(table, queries["user"], axis=0)
  if items.ndim == 1:
    return jnp.take(rows, items, axis=1)
  return jnp.take_along_axis(rows, items, axis=1)


def _dot_fn(params, queries, items):
  user_emb, item_emb = params
  return common.dot_scores(jnp.take(user_emb, queries["user"], axis=0), item_emb, items)


def _brute_ranks(table, user, positive, known_sets):
  ranks = []
  for u, p in zip(user, positive):
    cand = np.ones(table.shape[1], bool)
    cand[list(known_sets[u])] = False
    cand[p] = False
    ranks.append(1 + np.sum(table[u, cand] >= table[u, p]))
  return np.array(ranks)


def _toy(seed=0, num_users=9, num_items=37, num_queries=23, known_per_user=None):
  rng = np.random.default_rng(seed)
  table = rng.integers(0, 5, (num_users, num_items)).astype(np.float32)  # many ties
  users, items = [], []
  for u in range(num_users):
    k = known_per_user if known_per_user is not None else rng.integers(0, 8)
    its = rng.choice(num_items, size=k, replace=False)
    users += [u] * k
    items += list(its)
  train = InteractionLog.from_arrays(users, items, num_users=num_users, num_items=num_items)
  q_user = rng.integers(0, num_users, num_queries)
  q_item = rng.integers(0, num_items, num_queries)
  test = InteractionLog.from_arrays(q_user, q_item, num_users=num_users, num_items=num_items)
  known = [set(np.asarray(items)[np.asarray(users) == u].tolist()) for u in range(num_users)]
  return table, train, test, known


@pytest.mark.parametrize("chunk_size,batch_size", [(37, 23), (5, 8), (16, 7), (64, 4), (1, 23)])
def test_full_ranking_matches_brute_force(chunk_size, batch_size):
  table, train, test, known = _toy()
  queries = Queries.from_log(test, [train])
  fn = (_table_scores, jnp.asarray(table))
  res = protocols.evaluate(*fn, queries, protocols.FullRanking(chunk_size), 37, batch_size=batch_size)
  ref = _brute_ranks(table, test.user, test.item, known)
  np.testing.assert_array_equal(res.ranks, ref)
  ncand = 37 - np.array([len(known[u] - {p}) for u, p in zip(test.user, test.item)])
  np.testing.assert_array_equal(res.num_candidates, ncand)
  assert res.protocol_desc == "full ranking over 37 items, known positives excluded"
  assert res.summary["num_queries"] == 23


def test_positive_in_known_set_is_not_excluded():
  train = InteractionLog.from_arrays([0, 0, 0], [1, 2, 3], num_users=1, num_items=6)
  test = InteractionLog.from_arrays([0, 0], [2, 5], num_users=1, num_items=6)
  queries = Queries.from_log(test, [train])
  np.testing.assert_array_equal(queries.positive_is_known(), [True, False])
  table = jnp.asarray([[0.0, 1.0, 9.0, 9.0, 0.5, 2.0]])
  res = protocols.evaluate(_table_scores, table, queries, protocols.FullRanking(4), 6)
  # Query 0: positive 2 (score 9) among {0, 2, 4, 5}: rank 1. Query 1: item 5 (score 2) among {0,4,5}: 1.
  np.testing.assert_array_equal(res.ranks, [1, 1])
  np.testing.assert_array_equal(res.num_candidates, [4, 3])


def test_ties_count_against_positive():
  _, train, test, _ = _toy(seed=1)
  queries = Queries.from_log(test, [train])
  fn = (_table_scores, jnp.zeros((9, 37)))
  full = protocols.evaluate(*fn, queries, protocols.FullRanking(8), 37, batch_size=8)
  np.testing.assert_array_equal(full.ranks, full.num_candidates)
  assert full.summary["MRR"] < 0.2 and full.summary["AUC"] == 0.0
  samp = protocols.evaluate(*fn, queries, protocols.Sampled(num_negatives=10, seed=3), 37, batch_size=8)
  np.testing.assert_array_equal(samp.ranks, 11)


def test_sampled_with_all_items_equals_full_ranking():
  table, train, test, known = _toy(seed=2, known_per_user=6)
  keep = np.array([p not in known[u] for u, p in zip(test.user, test.item)])
  test = test.take(keep)
  queries = Queries.from_log(test, [train])
  fn = (_table_scores, jnp.asarray(table))
  full = protocols.evaluate(*fn, queries, protocols.FullRanking(10), 37, batch_size=8)
  samp = protocols.evaluate(*fn, queries, protocols.Sampled(num_negatives=37 - 7, seed=5), 37, batch_size=8)
  np.testing.assert_array_equal(samp.ranks, full.ranks)
  np.testing.assert_array_equal(samp.num_candidates, full.num_candidates)
  for name in full.summary:
    assert samp.summary[name] == pytest.approx(full.summary[name])


@pytest.mark.parametrize("popularity", [False, True])
def test_sampled_negatives_valid_and_deterministic(popularity):
  table, train, test, known = _toy(seed=3, num_items=60)
  queries = Queries.from_log(test, [train])
  counts = np.arange(60, dtype=np.float64) % 7  # items with count 0 must never be drawn
  proto = protocols.Sampled(num_negatives=20, seed=11, popularity=popularity, item_counts=counts)
  cand = proto.draw(queries, 60).items
  chex.assert_shape(cand, (23, 21))
  np.testing.assert_array_equal(cand[:, 0], test.item)
  for row, u in zip(cand, test.user):
    neg = row[1:]
    assert len(set(neg.tolist())) == 20
    assert not (set(neg.tolist()) & (known[u] | {row[0]}))
    assert neg.min() >= 0 and neg.max() < 60
    if popularity:
      assert np.all(counts[neg] > 0)
  np.testing.assert_array_equal(cand, proto.draw(queries, 60).items)
  other = protocols.Sampled(20, seed=12, popularity=popularity, item_counts=counts).draw(queries, 60)
  assert not np.array_equal(cand, other.items)
  fn = (_table_scores, jnp.asarray(table))
  res = protocols.evaluate(*fn, queries, proto, 60, batch_size=5)
  s = table[test.user[:, None], cand]
  np.testing.assert_array_equal(res.ranks, 1 + (s[:, 1:] >= s[:, :1]).sum(1))
  assert "seed 11" in res.protocol_desc


def test_uniform_sampling_is_uniform():
  train = InteractionLog.from_arrays([0, 0], [0, 1], num_users=1, num_items=12)
  test = InteractionLog.from_arrays(np.zeros(3000, int), np.full(3000, 2), num_users=1, num_items=12)
  cand = protocols.Sampled(num_negatives=3, seed=0).draw(Queries.from_log(test, [train]), 12).items
  freq = np.bincount(cand[:, 1:].ravel(), minlength=12) / 9000
  assert freq[:3].sum() == 0
  np.testing.assert_allclose(freq[3:], 1 / 9, atol=0.015)


def test_sampled_too_few_items_raises():
  train = InteractionLog.from_arrays([0] * 5, [0, 1, 2, 3, 4], num_users=1, num_items=8)
  test = InteractionLog.from_arrays([0], [5], num_users=1, num_items=8)
  with pytest.raises(DataError, match="user 0 has only 2 items"):
    protocols.Sampled(num_negatives=3).draw(Queries.from_log(test, [train]), 8)


def test_dot_model_full_ranking_and_no_recompile():
  rng = np.random.default_rng(4)
  _, train, test, known = _toy(seed=4)
  queries = Queries.from_log(test, [train])
  ue, ie = rng.normal(size=(9, 8)).astype(np.float32), rng.normal(size=(37, 8)).astype(np.float32)
  fn = (_dot_fn, (jnp.asarray(ue), jnp.asarray(ie)))
  res = protocols.evaluate(*fn, queries, protocols.FullRanking(16), 37, batch_size=8)
  np.testing.assert_array_equal(res.ranks, _brute_ranks(ue @ ie.T, test.user, test.item, known))
  before = protocols._full_ranks._cache_size()
  fn2 = (_dot_fn, (jnp.asarray(ue * 2), jnp.asarray(ie)))  # new params, same shapes
  res2 = protocols.evaluate(*fn2, queries, protocols.FullRanking(16), 37, batch_size=8)
  assert protocols._full_ranks._cache_size() == before
  np.testing.assert_array_equal(res2.ranks, res.ranks)  # positive rescaling keeps the ranking


def test_jit_and_no_jit_agree():
  table, train, test, known = _toy(seed=5)
  queries = Queries.from_log(test, [train]).take(np.arange(5))
  fn = (_table_scores, jnp.asarray(table))
  jitted = protocols.evaluate(*fn, queries, protocols.FullRanking(20), 37, batch_size=5)
  with jax.disable_jit():
    eager = protocols.evaluate(*fn, queries, protocols.FullRanking(20), 37, batch_size=5)
  np.testing.assert_array_equal(jitted.ranks, eager.ranks)
  np.testing.assert_array_equal(jitted.ranks, _brute_ranks(table, test.user[:5], test.item[:5], known))


class DotScoresTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_shared_and_per_query(self):
    rng = np.random.default_rng(0)
    u = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
    t = jnp.asarray(rng.normal(size=(10, 4)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(10,)), jnp.float32)
    f = self.variant(common.dot_scores)
    shared = f(u, t, jnp.array([1, 5, 7]), b)
    chex.assert_shape(shared, (3, 3))
    ref = np.asarray(u) @ np.asarray(t)[[1, 5, 7]].T + np.asarray(b)[[1, 5, 7]]
    chex.assert_trees_all_close(shared, ref, atol=1e-5)
    per = f(u, t, jnp.array([[1, 2], [3, 4], [9, 0]]), b)
    ref2 = np.stack([np.asarray(t)[r] @ np.asarray(u)[i] + np.asarray(b)[r]
                     for i, r in enumerate([[1, 2], [3, 4], [9, 0]])])
    chex.assert_trees_all_close(per, ref2, atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_random_scores_consistent(self):
    fn, seed = nonlearned.random_scores(7)
    fn = functools.partial(fn, seed)
    q = {"user": jnp.array([0, 3, 3])}
    full = self.variant(fn)(q, jnp.arange(20, dtype=jnp.int32))
    chex.assert_shape(full, (3, 20))
    per = self.variant(fn)(q, jnp.array([[4, 9], [4, 9], [0, 19]]))
    np.testing.assert_array_equal(per, np.asarray(full)[[[0, 0], [1, 1], [2, 2]], [[4, 9], [4, 9], [0, 19]]])
    np.testing.assert_array_equal(full[1], full[2])
    assert not np.array_equal(full[0], full[1])
    assert float(full.min()) >= 0 and float(full.max()) < 1
    fn8, seed8 = nonlearned.random_scores(8)
    assert not np.array_equal(full, fn8(seed8, q, jnp.arange(20, dtype=jnp.int32)))


def test_popularity_ranks_most_popular_first():
  train = InteractionLog.from_arrays([0, 1, 2, 3, 0, 1, 2, 0], [4, 4, 4, 4, 2, 2, 2, 1], num_users=5,
                                     num_items=6)
  fn = nonlearned.popularity(train)
  scores = fn[0](fn[1], {"user": jnp.array([4])}, jnp.arange(6, dtype=jnp.int32))
  assert int(jnp.argmax(scores[0])) == 4
  test = InteractionLog.from_arrays([4, 4, 4], [4, 2, 0], num_users=5, num_items=6)
  res = protocols.evaluate(*fn, Queries.from_log(test, [train]), protocols.FullRanking(4), 6)
  # user 4 has no history: 4 first, 2 second, 0 ties with 3 and 5 (count 0) -> worst of 6.
  np.testing.assert_array_equal(res.ranks, [1, 2, 6])


def test_grouped_full_ranking_recall():
  table, train, _, known = _toy(seed=6)
  rng = np.random.default_rng(6)
  users, items = [], []
  for u in range(9):
    cand = np.array(sorted(set(range(37)) - known[u]))
    pos = rng.choice(cand, size=3, replace=False)
    users += [u] * 3
    items += list(pos)
  table = rng.permutation(9 * 37).reshape(9, 37).astype(np.float32)  # no ties
  test = InteractionLog.from_arrays(users + [0], items + [items[0]], num_users=9, num_items=37)  # dup row
  queries = Queries.from_log(test, [train], group_by_user=True)
  assert len(queries) == 27
  res = protocols.evaluate(_table_scores, jnp.asarray(table), queries,
                           protocols.FullRanking(8), 37, ks=(5,))
  np.testing.assert_array_equal(res.users, np.arange(9))
  for u in range(9):
    cand = np.array(sorted(set(range(37)) - known[u]))
    top5 = cand[np.argsort(-table[u, cand])[:5]]
    truth = set(np.array(items)[np.array(users) == u].tolist())
    assert res.per_query["Recall@5"][u] == pytest.approx(len(truth & set(top5.tolist())) / 3)
  with pytest.raises(ValueError, match="FullRanking"):
    protocols.evaluate(_table_scores, jnp.asarray(table), queries,
                       protocols.Sampled(5), 37)


def _ml_like_grouped(seed, num_users=40, num_items=150, dim=8, integer=True):
  """A grouped (8/1/1-style) query set on a log that looks like real data: popular items repeat, users'
  held-out items include items they also have in training (kept positives), and ten items are exact
  copies of others (a cold item at its initial value). ``integer``: embeddings in {-2..2}, so every dot
  product is exact in float32 whatever the computation's shape (many ties, and every path agrees)."""
  rng = np.random.default_rng(seed)
  pop = 1.0 / np.arange(1, num_items + 1) ** 0.8
  pop /= pop.sum()
  users, items = [], []
  for u in range(num_users):
    n = int(rng.integers(3, 40))
    users += [u] * n
    items += list(rng.choice(num_items, size=n, p=pop))
  users, items = np.asarray(users), np.asarray(items)
  held = rng.random(users.size) < 0.2
  held[np.flatnonzero(items >= num_items - 10)[:6]] = True  # some duplicate items are held out
  train = InteractionLog.from_arrays(users[~held], items[~held], num_users=num_users, num_items=num_items)
  test = InteractionLog.from_arrays(users[held], items[held], num_users=num_users, num_items=num_items)
  if integer:
    user_emb = rng.integers(-2, 3, (num_users, dim)).astype(np.float32)
    item_emb = rng.integers(-2, 3, (num_items, dim)).astype(np.float32)
  else:
    user_emb = rng.normal(size=(num_users, dim)).astype(np.float32)
    item_emb = rng.normal(size=(num_items, dim)).astype(np.float32)
  item_emb[num_items - 10:] = item_emb[:10]  # exact duplicates, some of them held-out positives
  return (jnp.asarray(user_emb), jnp.asarray(item_emb)), train, test


def _history_scores(params, queries, items):
  """A sequence-style scorer: the user state is the sum of the history's item embeddings."""
  _, item_emb = params
  h = jnp.take(item_emb, queries["history"], axis=0) * queries["history_mask"][..., None]
  return common.dot_scores(h.sum(1), item_emb, items)


@pytest.mark.parametrize("chunk_size,batch_size", [(150, 256), (64, 32), (7, 5), (1, 3)])
def test_grouped_full_ranking_gives_the_per_query_ranks(chunk_size, batch_size):
  """Grouped queries under full ranking (each group's row scored once) give exactly the per-query and
  brute-force ranks: ties, duplicate items, known positives, a partial last chunk, user ids and history
  features; features that differ within a group fall back to the per-query path."""
  params, train, test = _ml_like_grouped(3)
  grouped = Queries.from_log(test, [train], group_by_user=True)
  assert np.bincount(grouped.group).max() > 4 and grouped.positive_is_known().any()
  protocol = protocols.FullRanking(chunk_size)
  per_query = dataclasses.replace(grouped, group=None)
  want, ncand = protocols.rank_queries(_dot_fn, params, per_query, protocol, 150, batch_size=batch_size)
  got, gcand = protocols.rank_queries(_dot_fn, params, grouped, protocol, 150, batch_size=batch_size)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(gcand, ncand)
  table = np.asarray(_dot_fn(params, {"user": jnp.arange(40)}, jnp.arange(150)))
  known = [set(train.item[train.user == u].tolist()) for u in range(40)]
  np.testing.assert_array_equal(got, _brute_ranks(table, grouped.user, grouped.positive, known))
  hist = np.asarray(np.random.default_rng(0).integers(0, 150, (40, 6)))
  feats = {"history": hist[grouped.user], "history_mask": np.ones((len(grouped), 6), bool)}
  fq = dataclasses.replace(grouped, features=feats)
  assert protocols._groups_share_inputs(fq)
  got_f, _ = protocols.rank_queries(_history_scores, params, fq, protocol, 150, batch_size=batch_size)
  want_f, _ = protocols.rank_queries(_history_scores, params, dataclasses.replace(fq, group=None), protocol,
                                     150, batch_size=batch_size)
  np.testing.assert_array_equal(got_f, want_f)
  feats["history"] = feats["history"].copy()
  feats["history"][1, 0] = (feats["history"][1, 0] + 1) % 150
  assert not protocols._groups_share_inputs(dataclasses.replace(grouped, features=feats))


@pytest.mark.parametrize("chunk_size", [150, 7])
def test_grouped_full_ranking_counts_an_exact_duplicate_against_the_positive(chunk_size):
  """Float (not integer) embeddings: a held-out positive with an exact copy among its candidates is
  beaten by it (the tie counts against the positive), however the chunks fall: moving the copy far
  away improves the rank by exactly one."""
  params, train, test = _ml_like_grouped(5, integer=False)
  grouped = Queries.from_log(test, [train], group_by_user=True)
  protocol = protocols.FullRanking(chunk_size)
  got, _ = protocols.rank_queries(_dot_fn, params, grouped, protocol, 150)
  known = [set(train.item[train.user == u].tolist()) for u in range(40)]
  twin = {i: i + 140 for i in range(10)} | {i + 140: i for i in range(10)}
  checked = 0
  for q in range(len(grouped)):
    u, p = int(grouped.user[q]), int(grouped.positive[q])
    if p not in twin or twin[p] in known[u]:
      continue
    user_emb, item_emb = params
    far = item_emb.at[twin[p]].set(-100.0 * jnp.sign(user_emb[u]))
    alone, _ = protocols.rank_queries(_dot_fn, (user_emb, far), grouped.take([q]), protocol, 150)
    assert got[q] == alone[0] + 1, (q, p)
    checked += 1
  assert checked >= 3


def test_bad_inputs_raise():
  train = InteractionLog.from_arrays([0], [1], num_users=2, num_items=5)
  other = InteractionLog.from_arrays([0], [1], num_users=2, num_items=6)
  with pytest.raises(DataError, match="index spaces"):
    Queries.from_log(other, [train])
  q = Queries.from_log(train, [train])
  with pytest.raises(DataError, match="positive"):
    protocols.evaluate(*nonlearned.random_scores(0), q, protocols.FullRanking(), 1)
  with pytest.raises(DataError, match="feature 'history'"):
    Queries.from_log(train, [train], features={"history": np.zeros((3, 2))})


# -- exact ties on real-looking models: duplicated items ----------------------------------------------


def _duplicate_items(params, num_items):
  """Copies item j to item j + N/2 in every item-indexed leaf (leading dim N, or N + 1 with a pad row)."""
  half = num_items // 2

  def dup(x):
    x = np.asarray(x)
    if x.ndim >= 1 and x.shape[0] in (num_items, num_items + 1):
      x = x.copy()
      x[half:2 * half] = x[:half]
    return jnp.asarray(x)

  return jax.tree.map(dup, params)


@pytest.mark.parametrize("name, chunk_size", [
    *((n, 64) for n in ("mf-bpr", "mf-log", "ncf", "gru4rec", "caser", "sasrec", "sumpool")),
    ("mf-bpr", 300), ("sasrec", 300)])
def test_duplicated_items_tie_under_full_ranking(name, chunk_size):
  """Item j + N/2 is an exact copy of item j: it must count against the positive, both ways round.

  Every model with chunks of 64 (copies in other chunks, a padded last chunk); one dot-product and one
  sequence model with the whole catalogue in one chunk (each chunk size is its own compile)."""
  from jaxrec.models import registry
  num_users, num_items, hist = 64, 300, 5
  spec = registry.get(name)
  module = spec.make(num_users, num_items)
  sample = registry.sample_batch(spec.family, history_len=hist)
  params = spec.init(jax.random.PRNGKey(0), module, sample)
  params = _duplicate_items(params, num_items)
  rng = np.random.default_rng(0)
  users = rng.permutation(num_users)
  pos = rng.integers(0, num_items // 2, num_users)
  feats = {}
  if spec.family == "sequence":
    h = rng.integers(0, num_items, (num_users, hist)).astype(np.int32)
    feats = {"history": np.concatenate([h, h]), "history_mask": np.ones((2 * num_users, hist), bool)}
  copies = np.concatenate([pos, pos + num_items // 2])
  log = InteractionLog.from_arrays(np.concatenate([users, users]), copies,
                                   num_users=num_users, num_items=num_items)
  queries = Queries(user=log.user.astype(np.int32), positive=log.item.astype(np.int32),
                    time=np.zeros(len(log), np.int64), known_indptr=np.zeros(num_users + 1, np.int64),
                    known_items=np.zeros(0, np.int32), features=feats)
  score_fn = spec.score_fn(module)
  full = protocols.evaluate(score_fn, params, queries, protocols.FullRanking(chunk_size), num_items,
                            batch_size=64).ranks
  np.testing.assert_array_equal(full[:num_users], full[num_users:])  # the copy ranks like the original
  # Brute force from one [B, N] matrix product: every item at least as good as the positive counts.
  s = np.asarray(score_fn(params, {"user": queries.user, **feats}, jnp.arange(num_items, dtype=jnp.int32)))
  ref = (s >= s[np.arange(len(queries)), queries.positive][:, None]).sum(1)
  np.testing.assert_array_equal(full, ref)
  assert np.all(full >= 2)
  # Sampled: the copy among the negatives ties with the positive and counts against it.
  cands = np.stack([pos, pos + num_items // 2, rng.integers(0, num_items, num_users)], axis=1)
  samp = protocols.evaluate(score_fn, params, queries.take(np.arange(num_users)),
                            protocols.Candidates(cands.astype(np.int32), "copy"), num_items).ranks
  assert np.all(samp >= 2)


def test_popularity_negatives_follow_successive_sampling():
  """Two negatives from 5 allowed items: each pair's frequency matches the without-replacement law."""
  import itertools
  w = np.array([3.0, 1.0, 0.0, 2.0, 5.0, 4.0, 1.0])  # item 0 positive, item 2 never drawn, 6 known
  n_rows = 20000
  train = InteractionLog.from_arrays([0], [6], num_users=1, num_items=7)
  test = InteractionLog.from_arrays(np.zeros(n_rows, int), np.zeros(n_rows, int), num_users=1, num_items=7)
  cand = protocols.Sampled(2, seed=1, popularity=True, item_counts=w).draw(
      Queries.from_log(test, [train]), 7).items[:, 1:]
  allowed = [1, 3, 4, 5]
  total = w[allowed].sum()
  for a, b in itertools.combinations(allowed, 2):
    p = w[a] / total * w[b] / (total - w[a]) + w[b] / total * w[a] / (total - w[b])
    freq = np.mean(((cand[:, 0] == a) & (cand[:, 1] == b)) | ((cand[:, 0] == b) & (cand[:, 1] == a)))
    assert abs(freq - p) < 4 * np.sqrt(p * (1 - p) / n_rows), (a, b, freq, p)


def test_growing_known_sets_reuse_compiled_kernels():
  """Known sets that grow (a stream's blocks) stay within power-of-two padded exclusion widths."""
  rng = np.random.default_rng(9)
  table = jnp.asarray(rng.normal(size=(9, 37)).astype(np.float32))
  test = InteractionLog.from_arrays(np.arange(9), rng.integers(0, 37, 9), num_users=9, num_items=37)
  sizes = []
  for k in (5, 6, 7, 8):
    train = InteractionLog.from_arrays(np.repeat(np.arange(9), k), rng.integers(0, 37, 9 * k),
                                       num_users=9, num_items=37)
    queries = Queries.from_log(test, [train])
    res = protocols.evaluate(_table_scores, table, queries, protocols.FullRanking(16), 37, batch_size=9)
    known = [set(train.item[train.user == u].tolist()) for u in range(9)]
    np.testing.assert_array_equal(res.ranks, _brute_ranks(np.asarray(table), test.user, test.item, known))
    sizes.append(protocols._full_ranks._cache_size())
  assert sizes[-1] == sizes[0]  # widths 5..8 share the padded width 8: one compilation
