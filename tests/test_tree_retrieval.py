"""Tests of jaxrec.retrieval.tree and jaxrec.retrieval.beam_search."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.retrieval import beam_search as bs
from jaxrec.retrieval import tree as tree_lib


def test_layout_arithmetic():
  t = tree_lib.from_item_order(np.arange(10), 3)
  assert (t.height, t.num_leaves, t.num_nodes) == (3, 27, 40)
  assert [t.offset(l) for l in range(4)] == [0, 1, 4, 13]
  np.testing.assert_array_equal(tree_lib.children_positions(t, jnp.array(2)), [6, 7, 8])
  assert int(tree_lib.parent_position(t, jnp.array(8))) == 2
  # Leaf 7 = position 7 at level 3; ancestors: level1 pos 0, level2 pos 2, level3 pos 7.
  np.testing.assert_array_equal(tree_lib.ancestors(t, jnp.array(7)), [1, 4 + 2, 13 + 7])
  np.testing.assert_array_equal(tree_lib.ancestors(t, jnp.array(7), include_root=True), [0, 1, 6, 20])
  valid = np.asarray(t.node_valid)
  assert valid[:13].sum() == 1 + 2 + 4 and valid[13:].sum() == 10
  assert valid[13 + 9] and not valid[13 + 10]


def test_height_for():
  assert [tree_lib.height_for(n, 2) for n in (1, 2, 3, 4, 5, 64, 65)] == [1, 1, 2, 2, 3, 6, 7]
  with pytest.raises(ValueError):
    tree_lib.height_for(4, 1)


def test_from_leaf_items_rejects_duplicates():
  with pytest.raises(ValueError):
    tree_lib.from_leaf_items(np.array([0, 0, 1, -1]), 3, 2)


def test_item_leaf_maps_inverse_and_ancestors_consistent():
  rng = np.random.default_rng(0)
  order = rng.permutation(23)
  t = tree_lib.from_item_order(order, 4)
  l2i, i2l = np.asarray(t.leaf_to_item), np.asarray(t.item_to_leaf)
  np.testing.assert_array_equal(l2i[i2l], np.arange(23))
  anc = np.asarray(tree_lib.item_ancestors(t, jnp.arange(23), include_root=True))
  for lvl in range(1, t.height + 1):  # parent of the level-l ancestor is the level-(l-1) ancestor.
    pos = anc[:, lvl] - t.offset(lvl)
    np.testing.assert_array_equal(pos // 4 + t.offset(lvl - 1), anc[:, lvl - 1])


def test_balanced_kmeans_groups_clusters():
  rng = np.random.default_rng(1)
  centers = np.array([[10.0, 0], [-10, 0], [0, 10], [0, -10]])
  lab = np.repeat(np.arange(4), 8)
  emb = centers[lab] + rng.normal(size=(32, 2))
  t = tree_lib.build_balanced_kmeans(emb, 4, seed=0)
  assert t.height == 3
  leaves = np.asarray(t.leaf_to_item).reshape(4, 16)  # subtrees of the root's children.
  for sub in leaves:
    items = sub[sub >= 0]
    assert len(items) == 8 and len(set(lab[items])) == 1
  l2i = np.asarray(t.leaf_to_item)
  assert sorted(l2i[l2i >= 0].tolist()) == list(range(32))


def loop_build_balanced_kmeans(item_emb, branching, seed=0, iters=10):
  """The recursive build the vectorised one replaced (a Python loop over N x B pairs): the reference."""
  item_emb = np.asarray(item_emb, np.float64)
  n = item_emb.shape[0]
  height = tree_lib.height_for(n, branching)
  rng = np.random.default_rng(seed)
  leaves = np.full(branching**height, -1, np.int64)

  def assign_greedy(z, centers, sizes):
    dist = ((z[:, None, :] - centers[None, :, :]) ** 2).sum(-1)
    assign = np.full(z.shape[0], -1, np.int64)
    left = sizes.copy()
    for flat in np.argsort(dist, axis=None, kind="stable"):
      i, c = divmod(int(flat), centers.shape[0])
      if assign[i] < 0 and left[c] > 0:
        assign[i] = c
        left[c] -= 1
    return assign

  def split(items, first_leaf, h):
    if h == 0:
      leaves[first_leaf] = items[0]
      return
    k = len(items)
    sizes = np.full(branching, k // branching) + (np.arange(branching) < k % branching)
    z = item_emb[items]
    if k <= branching:
      assign = np.arange(k)
    else:
      centers = z[rng.choice(k, branching, replace=False)]
      for _ in range(iters):
        assign = assign_greedy(z, centers, sizes)
        centers = np.stack([z[assign == c].mean(0) for c in range(branching)])
      assign = assign_greedy(z, centers, sizes)
    span = branching ** (h - 1)
    for c in range(branching):
      if (assign == c).any():
        split(items[assign == c], first_leaf + c * span, h - 1)

  split(np.arange(n), 0, height)
  return tree_lib.from_leaf_items(leaves, n, branching)


def _subtree_sizes(t):
  held = (np.asarray(t.leaf_to_item) >= 0).astype(np.int64)
  out = [held]
  for _ in range(t.height):
    out.append(out[-1].reshape(-1, t.branching).sum(1))
  return out[::-1]


def _max_imbalance(t):
  """Largest spread of children's item counts over the internal nodes holding items."""
  sizes = _subtree_sizes(t)
  worst = 0
  for level in range(t.height):
    kids = sizes[level + 1].reshape(-1, t.branching)
    used = sizes[level] > 0
    worst = max(worst, int((kids[used].max(1) - kids[used].min(1)).max()))
  return worst


def _kmeans_cost(t, emb, level):
  """Sum over the nodes of `level` of the squared distances of their items to the node's mean."""
  groups = np.asarray(t.leaf_to_item).reshape(t.branching**level, -1)
  return sum(float(((emb[g[g >= 0]] - emb[g[g >= 0]].mean(0)) ** 2).sum()) for g in groups if (g >= 0).any())


def _clustered(rng, n, d, k):
  centres = 4.0 * rng.normal(size=(k, d)) / np.sqrt(d)
  emb = centres[rng.integers(k, size=n)] + rng.normal(size=(n, d))
  emb[: n // 10] = emb[n // 10: 2 * (n // 10)]  # exact duplicates (ties)
  return emb


@pytest.mark.parametrize("b,n", [(2, 200), (3, 100), (4, 77), (8, 300), (5, 26)])
def test_vectorised_build_balanced_deterministic_and_no_worse_than_loop(b, n):
  rng = np.random.default_rng(b * 1000 + n)
  emb = _clustered(rng, n, 6, 7)
  t = tree_lib.build_balanced_kmeans(emb, b, seed=3)
  ref = loop_build_balanced_kmeans(emb, b, seed=3)
  assert _max_imbalance(t) <= 1 and _max_imbalance(t) <= _max_imbalance(ref)
  again = tree_lib.build_balanced_kmeans(emb, b, seed=3)
  np.testing.assert_array_equal(np.asarray(again.leaf_to_item), np.asarray(t.leaf_to_item))
  l2i = np.asarray(t.leaf_to_item)
  assert sorted(l2i[l2i >= 0].tolist()) == list(range(n))
  # Clustering quality of the first split: within 5% of the loop's greedy assignment (or better).
  assert _kmeans_cost(t, emb, 1) <= 1.05 * _kmeans_cost(ref, emb, 1)


def test_balanced_assign_is_exact_and_optimal_for_two_centres():
  rng = np.random.default_rng(11)
  g, s = 5, 9
  dist = rng.normal(size=(g, s, 2))
  mask = np.ones((g, s), bool)
  mask[2, 7:] = False
  counts = mask.sum(1)
  sizes = np.stack([counts - counts // 2, counts // 2], 1)
  a = tree_lib._balanced_assign(dist, mask, sizes)
  for gi in range(g):
    got = a[gi][mask[gi]]
    np.testing.assert_array_equal(np.bincount(got, minlength=2), sizes[gi])
    # Optimum for B = 2: the sizes[0] points with the smallest d0 - d1 go to centre 0.
    diff = dist[gi, mask[gi], 0] - dist[gi, mask[gi], 1]
    best = np.sort(diff)[: sizes[gi, 0]].sum() + dist[gi, mask[gi], 1].sum()
    cost = np.where(got == 0, dist[gi, mask[gi], 0], dist[gi, mask[gi], 1]).sum()
    np.testing.assert_allclose(cost, best, rtol=1e-12)
  assert np.all(a[~mask] == -1)


def test_build_small_and_degenerate_inputs():
  for n, b in [(1, 2), (2, 2), (3, 4), (17, 16), (33, 32)]:
    emb = np.zeros((n, 3))  # every item identical: ties everywhere
    t = tree_lib.build_balanced_kmeans(emb, b)
    l2i = np.asarray(t.leaf_to_item)
    assert sorted(l2i[l2i >= 0].tolist()) == list(range(n)) and _max_imbalance(t) <= 1


def test_node_vectors_from_items_is_mean():
  rng = np.random.default_rng(2)
  emb = rng.normal(size=(5, 3)).astype(np.float32)
  t = tree_lib.from_item_order(np.array([4, 3, 2, 1, 0]), 2)
  w = np.asarray(tree_lib.node_vectors_from_items(t, emb))
  np.testing.assert_allclose(w[0], emb.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(w[1], emb[[4, 3, 2, 1]].mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(w[t.offset(3) + 4], emb[0], rtol=1e-6)


def _ref_leaves(t, scores, k):
  ref = bs.beam_search_reference(bs.tree_children(t), scores, k)
  return [v - t.offset(t.height) for v in ref.leaves]


class BeamSearchTest(chex.TestCase):

  @chex.variants(with_jit=True)
  def test_matches_reference_on_random_trees(self):
    rng = np.random.default_rng(3)
    for b, n, k in [(2, 13, 3), (3, 10, 4), (4, 50, 5)]:
      t = tree_lib.from_item_order(rng.permutation(n), b)
      search = self.variant(jax.vmap(lambda x, t=t, k=k: bs.beam_search(tree_lib.table_score, None, t, x, k)))
      scores = rng.normal(size=(4, t.num_nodes)).astype(np.float32)
      res = search(jnp.asarray(scores))
      for i in range(4):
        ref = _ref_leaves(t, scores[i].tolist(), k)
        got = np.asarray(res.leaves[i])[np.asarray(res.valid[i])].tolist()
        assert got == ref
        np.testing.assert_array_equal(np.asarray(res.items[i])[: len(ref)], np.asarray(t.leaf_to_item)[ref])

  @chex.variants(with_jit=True, without_jit=True)
  def test_equals_brute_force_when_beam_covers_leaves(self):
    rng = np.random.default_rng(4)
    t = tree_lib.from_item_order(rng.permutation(20), 3)
    w = jnp.asarray(rng.normal(size=(t.num_nodes, 4)), jnp.float32)
    x = jnp.asarray(rng.normal(size=4), jnp.float32)
    res = self.variant(lambda x: bs.beam_search(tree_lib.linear_score, w, t, x, 27))(x)
    item_scores = np.asarray(w[t.offset(t.height) + t.item_to_leaf] @ x)
    order = np.argsort(-item_scores)
    np.testing.assert_array_equal(np.asarray(res.items)[:20], order)
    assert not np.asarray(res.valid)[20:].any() and np.all(np.asarray(res.items)[20:] == -1)
    np.testing.assert_allclose(np.asarray(res.scores)[:20], item_scores[order], rtol=1e-6)

  @chex.variants(with_jit=True)
  def test_max_heap_tree_gives_exact_top_k(self):
    rng = np.random.default_rng(5)
    for b, n, k in [(2, 30, 5), (4, 60, 3)]:
      t = tree_lib.from_item_order(rng.permutation(n), b)
      leaf = np.full(t.num_leaves, -np.inf)
      leaf[np.asarray(t.item_to_leaf)] = rng.normal(size=n)
      levels = [leaf]
      for _ in range(t.height):
        levels.append(levels[-1].reshape(-1, b).max(1))
      scores = jnp.asarray(np.concatenate(levels[::-1]), jnp.float32)
      res = self.variant(lambda s, t=t, k=k: bs.beam_search(tree_lib.table_score, None, t, s, k))(scores)
      item_scores = leaf[np.asarray(t.item_to_leaf)]
      np.testing.assert_array_equal(np.asarray(res.items), np.argsort(-item_scores)[:k])

  def test_vmap_and_no_recompile(self):
    rng = np.random.default_rng(6)
    t = tree_lib.from_item_order(rng.permutation(40), 4)
    w = jnp.asarray(rng.normal(size=(t.num_nodes, 5)), jnp.float32)
    xs = jnp.asarray(rng.normal(size=(7, 5)), jnp.float32)
    fn = jax.jit(bs.batched_beam_search, static_argnames=("score_fn", "beam_width"))
    out = fn(tree_lib.linear_score, w, t, xs, beam_width=6)
    chex.assert_shape(out.items, (7, 6))
    single = jax.jit(bs.beam_search, static_argnames=("score_fn", "beam_width", "return_trace"))
    for i in range(7):
      np.testing.assert_array_equal(out.items[i], single(tree_lib.linear_score, w, t, xs[i], 6).items)
    fn(tree_lib.linear_score, w + 1.0, t, xs + 1.0, beam_width=6)
    assert fn._cache_size() == 1

  def test_trace_shapes_and_candidates(self):
    rng = np.random.default_rng(7)
    t = tree_lib.from_item_order(rng.permutation(9), 3)
    scores = rng.normal(size=t.num_nodes).astype(np.float32)
    res = bs.beam_search(tree_lib.table_score, None, t, jnp.asarray(scores), 2, return_trace=True)
    chex.assert_shape(res.trace.cand_nodes, (2, 6))
    ref = bs.beam_search_reference(bs.tree_children(t), scores.tolist(), 2)
    for lvl in range(2):
      ok = np.isfinite(np.asarray(res.trace.cand_scores[lvl]))
      assert np.asarray(res.trace.cand_nodes[lvl])[ok].tolist() == ref.candidates[lvl]


def test_reference_leaf_rule_keeps_shallow_leaf():
  # root 0 -> {1 (leaf), 2}; 2 -> {3, 4}. The shallow leaf 1 competes again at depth 2 (D(1) = {1}).
  children = [[1, 2], [], [3, 4], [], []]
  ref = bs.beam_search_reference(children, [0.0, 5.0, 1.0, 0.5, 0.2], 2)
  assert ref.candidates[1] == [1, 3, 4] and ref.leaves == [1, 3]
