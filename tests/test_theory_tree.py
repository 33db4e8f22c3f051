"""Tests of theory/tree_bounds.py (Zhang et al., NeurIPS 2024, Sec. 4)."""

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrec.retrieval import beam_search as bs
from jaxrec.retrieval import tree as tree_lib
from theory import tree_bounds as tb


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), max_b=st.integers(2, 4), max_depth=st.integers(1, 4),
       k=st.integers(1, 5))
def test_prop_4_3_extended_path_holds_without_ties(seed, max_b, max_depth, k):
  rng = np.random.default_rng(seed)
  children, depth = tb.random_tree(rng, max_b, max_depth)
  scores = rng.normal(size=len(children)).tolist()
  retrieved = set(bs.beam_search_reference(children, scores, k).leaves)
  for y in (v for v in range(len(children)) if not children[v]):
    assert (tb.gf_reference(children, depth, scores, k, y, "extended") >= 0) == (y in retrieved)


def test_prop_4_3_literal_ancestors_fail_counterexample():
  # root 0 -> {1, 2}; 1 -> {3, 4}; K = 1. Ancestor 1 wins, but y = 4 loses to its sibling 3.
  children, depth = [[1, 2], [3, 4], [], [], []], [0, 1, 1, 2, 2]
  scores = [0.0, 1.0, 0.0, 2.0, 1.5]
  assert bs.beam_search_reference(children, scores, 1).leaves == [3]
  assert tb.gf_reference(children, depth, scores, 1, 4, "literal") == 0.0  # >= 0 but y not in B(x).
  assert tb.gf_reference(children, depth, scores, 1, 4, "path") == -0.5


def test_prop_4_3_path_without_leaf_copies_fails_on_unbalanced_tree():
  # root -> {1 (leaf), 2}; 2 -> {3, 4}; K = 2: leaf 1 passes level 1 but loses to 3, 4 at level 2.
  children, depth = [[1, 2], [], [3, 4], [], []], [0, 1, 1, 2, 2]
  scores = [0.0, 1.0, 0.5, 3.0, 2.0]
  assert bs.beam_search_reference(children, scores, 2).leaves == [3, 4]
  assert tb.gf_reference(children, depth, scores, 2, 1, "path") == 0.5
  assert tb.gf_reference(children, depth, scores, 2, 1, "extended") == -1.0


def test_prop_4_3_counts():
  out = tb.check_prop_4_3(0, 80)
  assert out["extended"]["mismatch"] == 0 and out["literal"]["mismatch"] > 0
  ties = tb.check_prop_4_3(1, 80, integer_scores=True)
  assert ties["extended"]["mismatch"] > 0  # ties break the "<=" direction.


def test_gf_margins_jit_matches_reference():
  rng = np.random.default_rng(0)
  t = tree_lib.from_item_order(rng.permutation(20), 3)
  children = bs.tree_children(t)
  depth = [0] * t.num_nodes
  for lvl in range(t.height + 1):
    for v in range(t.offset(lvl), t.offset(lvl + 1)):
      depth[v] = lvl
  for k in (1, 3):
    scores = rng.normal(size=t.num_nodes).astype(np.float32)
    gf = lambda s, l, k=k: tb.gf_margins(tree_lib.table_score, None, t, s, l, k).min()
    g = np.asarray(jax.jit(jax.vmap(gf, in_axes=(None, 0)))(jnp.asarray(scores), t.item_to_leaf))
    for item in range(20):
      leaf = int(t.item_to_leaf[item])
      ref = tb.gf_reference(children, depth, scores.tolist(), k, t.offset(t.height) + leaf, "path")
      assert g[item] == pytest.approx(ref, abs=1e-6)


def test_prop_4_1_and_cor_4_2_exact():
  s = tb.simulate_two_stage(0, num_items=30, branching=3, beam_width=3, num_users=20, dim=6,
                            retriever_noise=0.2, ranker_noise=0.5)
  assert isinstance(s["p_two"], Fraction)
  assert s["p_two"] == s["eq3_rhs"]
  assert s["cor42_lhs"] == s["cor42_rhs"]
  assert s["eq6_mismatch"] == 0
  assert 0 < s["p_ret"] < 1


def test_counting_inequality_exact():
  # Exact integers: B = 2, N = 5: levels of 2 and 4 nodes and 5 leaves: 2*1 + 4*3 + 5*4 = 34 > 100/3.
  assert tb.pair_count_tree(2, 5) == 34 and 34 * 3 > 25 * 4
  assert tb.pair_count_paper(2, 5) == 22  # the paper's middle expression drops the 4-node level.
  rows = tb.check_counting((2, 3, 4, 8), 300)["rows"]
  assert all(r[2] for r in rows)  # the paper's own expression is below the bound ...
  assert any(not r[3] for r in rows)  # ... but the true count is not ...
  assert all(r[5] for r in rows)  # ... the corrected bound N^2 (2B^2 - 1) / (B^2 - 1) holds.
  for b in (2, 3, 4, 8):  # at N = B^H the inequality holds.
    for h in (1, 2, 3):
      n = b**h
      assert tb.pair_count_tree(b, n) * (b * b - 1) <= n * n * b * b


def test_theorem_formulas():
  assert tb.tree_factor(2, 64) == pytest.approx(128 / math.sqrt(3))
  assert tb.thm_4_5_bound(1, 2, 100, 2, 64) == pytest.approx(4 * 2 * 128 / math.sqrt(3) / 10)
  mlp = tb.thm_4_6_bound(1.0, 2, 2.0, 1.0, 1.0, 4, 2, 4)
  assert mlp == pytest.approx(8 * 4 * 2 * tb.tree_factor(2, 4) / 2)
  bw = tb.ta_bw(1.0, 2.0, 1.0, 1.0)
  assert bw == 12.0
  assert tb.thm_4_7_bound(1.0, 1, 1.0, 2.0, 1.0, 1.0, 3, 1, 2, 4) == pytest.approx(4 * (36 + 1) *
                                                                                 tb.tree_factor(2, 4))
  assert tb.thm_4_9_bound("lin", 4, b0=2.0, bx=3.0) == 3.0
  # The tree factor decreases with B at fixed N (the paper's "more branches generalise better").
  assert tb.tree_factor(2, 64) > tb.tree_factor(4, 64) > tb.tree_factor(8, 64)


def test_rademacher_pi1_below_thm_4_9():
  r = tb.rademacher_pi1_linear(0, 50, 8, 500)
  assert 0.8 < r["ratio"] <= 1.0


@pytest.mark.slow
def test_rademacher_gf_small_is_below_theorem_4_5():
  rows = tb.rademacher_gf_linear(0, 4, 16, (20,), beam_width=2, dim=4, num_eps=3, num_starts=2, steps=10)
  r = rows[0]
  assert 0 < r["estimate"] <= r["trivial"] and r["ratio"] < 1


@pytest.mark.slow
def test_run_section_quick(tmp_path):
  out = tb.run_section(str(tmp_path), quick=True)
  assert set(out) == {"markdown", "figures", "results"}
  assert all(p.endswith(".png") and (tmp_path / p.split("/")[-1]).exists() for p in out["figures"])
  assert out["results"]["prop_4_1"]["eq3_exact"]
