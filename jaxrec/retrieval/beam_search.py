"""Beam search over a tree index (paper Sec. 3.2.1, the Top-K recursion B_{i+1}(x)).

Zhang et al. (NeurIPS 2024) define beam search of width K as

    B_1(x) = T^K_{c in D(root)} f(x, c),    B_{i+1}(x) = T^K_{c in D(B_i(x))} f(x, c),

with T^K the top-K operator (all candidates when fewer than K), D(v) the children of v and the leaf
rule D(v) = {v} for a leaf. B(x) is the final set of K leaves.

`beam_search` is the jit-able, static-shape version for the complete padded tree of
`jaxrec.retrieval.tree` (all leaves sit at level H, so the leaf rule never fires there): at each level
the K beam nodes expand to K * B candidates, padding nodes and the children of empty beam slots are
masked to -inf, and `lax.top_k` keeps K (ties go to the earlier candidate). The levels are a
`lax.scan` (one traced step whatever the height, so compile time does not grow with H). It works on
one input and is meant to be `jax.vmap`-ed over a batch. `beam_search_reference` is a plain-Python
version for any rooted tree (leaves at any depth, with the leaf rule), used to test the jitted one and
the theory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.retrieval.tree import ScoreNodesFn, TreeIndex


class BeamTrace(NamedTuple):
  """What beam search saw at levels 1..H (leading axis H).

  Attributes:
    cand_nodes: int32 [H, K * B] global ids of the candidates D(B_{l-1}(x)) at level l.
    cand_scores: float [H, K * B] their scores, -inf where masked (padding or empty beam slot).
    beam_nodes: int32 [H, K] global ids of B_l(x).
    beam_valid: bool [H, K] whether each beam slot holds a real node.
  """

  cand_nodes: jax.Array
  cand_scores: jax.Array
  beam_nodes: jax.Array
  beam_valid: jax.Array


class BeamResult(NamedTuple):
  """Result of a beam search for one input.

  Attributes:
    items: int32 [K] retrieved items, best first; -1 in empty slots (when fewer than K items).
    scores: float [K] their leaf scores f(x, leaf); -inf in empty slots.
    leaves: int32 [K] leaf positions of the retrieved items.
    valid: bool [K] whether each slot holds an item.
    trace: `BeamTrace` when requested, else None.
  """

  items: jax.Array
  scores: jax.Array
  leaves: jax.Array
  valid: jax.Array
  trace: BeamTrace | None = None


def beam_search(score_fn: ScoreNodesFn, params: object, tree: TreeIndex, x: jax.Array,
                beam_width: int, return_trace: bool = False) -> BeamResult:
  """Beam search of width K for one input x (static shapes; jit and vmap over x).

  Args:
    score_fn: `score_fn(params, x, node_ids [C]) -> [C]`, e.g. `jaxrec.retrieval.tree.linear_score`.
    params: the scorer's parameters (node vectors for the linear scorer).
    tree: the `TreeIndex`.
    x: one input (user representation) in whatever form `score_fn` takes.
    beam_width: K (static).
    return_trace: whether to return the per-level candidates and beams.

  Returns:
    A `BeamResult`.
  """
  k, b = beam_width, tree.branching

  def level_step(carry, level):
    beam_pos, beam_valid = carry
    offset = (jnp.power(b, level) - 1) // (b - 1)
    cand_pos = (beam_pos[:, None] * b + jnp.arange(b, dtype=jnp.int32)).reshape(-1)
    cand_ids = cand_pos + offset
    cand_ok = jnp.repeat(beam_valid, b) & tree.node_valid[cand_ids]
    scores = jnp.where(cand_ok, score_fn(params, x, cand_ids), -jnp.inf)
    top_scores, top = jax.lax.top_k(scores, k)  # K < K * B since B >= 2.
    beam_pos, beam_valid = cand_pos[top], cand_ok[top]
    out = (cand_ids, scores, beam_pos + offset, beam_valid, jnp.where(beam_valid, top_scores, -jnp.inf))
    return (beam_pos, beam_valid), out

  init = (jnp.zeros((k,), jnp.int32), jnp.arange(k) == 0)
  levels = jnp.arange(1, tree.height + 1, dtype=jnp.int32)
  (beam_pos, beam_valid), per_level = jax.lax.scan(level_step, init, levels)
  items = jnp.where(beam_valid, tree.leaf_to_item[beam_pos], -1)
  trace = BeamTrace(*per_level[:4]) if return_trace else None
  return BeamResult(items=items, scores=per_level[4][-1], leaves=beam_pos, valid=beam_valid, trace=trace)


def batched_beam_search(score_fn: ScoreNodesFn, params: object, tree: TreeIndex, xs: jax.Array,
                        beam_width: int) -> BeamResult:
  """`beam_search` vmapped over the leading axis of xs (wrap in `jax.jit` with K static)."""
  fn = lambda x: beam_search(score_fn, params, tree, x, beam_width)
  return jax.vmap(fn)(xs)


class ReferenceBeam(NamedTuple):
  """Plain-Python beam search output.

  Attributes:
    leaves: the selected leaves B(x), best first.
    beams: beams[d] is B_{d+1}(x) (lists of node ids), best first.
    candidates: candidates[d] is D(B_d(x)), in expansion order.
  """

  leaves: list[int]
  beams: list[list[int]]
  candidates: list[list[int]]


def tree_children(tree: TreeIndex) -> list[list[int]]:
  """Children lists (global ids, padding subtrees dropped) of a `TreeIndex`, for the reference."""
  valid = np.asarray(tree.node_valid)
  out = [[] for _ in range(tree.num_nodes)]
  for level in range(tree.height):
    for p in range(tree.branching**level):
      node = tree.offset(level) + p
      kids = [tree.offset(level + 1) + p * tree.branching + c for c in range(tree.branching)]
      out[node] = [c for c in kids if valid[c]]
  return out


def beam_search_reference(children: Sequence[Sequence[int]], scores: Sequence[float], beam_width: int,
                          root: int = 0, num_levels: int | None = None) -> ReferenceBeam:
  """Beam search of the paper on any rooted tree, in plain Python.

  Args:
    children: children[v] lists the children of node v (empty for a leaf).
    scores: scores[v] = f(x, v) for the input x.
    beam_width: K.
    root: the root's id.
    num_levels: number of expansions; by default until the beam holds only leaves (further steps
      would not change it under the leaf rule).

  Returns:
    A `ReferenceBeam`. Candidates are D(B_i) in beam order with the leaf rule D(v) = {v}; the top K are
    taken by score, ties to the earlier candidate (as `lax.top_k`). It stops when the beam holds only
    leaves, or after `num_levels` steps.
  """
  beam = [root]
  beams, cands = [], []
  while True:
    if num_levels is None and beams and all(not children[v] for v in beam):
      break
    if num_levels is not None and len(beams) == num_levels:
      break
    cand = [c for v in beam for c in (children[v] if children[v] else [v])]
    order = sorted(range(len(cand)), key=lambda i: (-scores[cand[i]], i))
    beam = [cand[i] for i in order[:beam_width]]
    beams.append(beam)
    cands.append(cand)
  return ReferenceBeam(leaves=beam, beams=beams, candidates=cands)
