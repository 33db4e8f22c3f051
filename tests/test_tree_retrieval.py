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
