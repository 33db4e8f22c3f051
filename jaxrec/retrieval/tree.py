"""Complete B-ary tree index over N items (array layout, node parameters, construction).

The retriever of the tree two-stage method (Zhang et al., NeurIPS 2024, Sec. 3.2.1; TDM, Zhu et al.
2018) scores tree nodes against a user representation and descends the tree by beam search
(`jaxrec.retrieval.beam_search`). This module holds only the tree:

* Layout. A complete B-ary tree of height H (root at level 0, leaves at level H, H the smallest
  integer with B^H >= N). Nodes are stored breadth first: level l occupies global ids
  [offset(l), offset(l) + B^l) with offset(l) = (B^l - 1) / (B - 1); inside a level a node is named by
  its position p, its children are the positions p * B + c (c < B) and its parent is p // B. The B^H
  leaves hold the N items; the remaining B^H - N leaves are padding, masked by `node_valid` (an
  internal node is valid iff its subtree holds at least one item), so every array has a static shape.
* Parameters. Node vectors are a plain [num_nodes, d] array (a pytree leaf). A node scorer has the
  signature `score_fn(params, x, node_ids) -> scores` (x one input, node_ids int32 [C], scores [C]);
  `linear_score` is the paper's f_lin(x, v) = <x, w_v> (Eq. 7), a learned scorer (MLP, target
  attention, Eqs. 8-9) plugs in with the same signature.
* Construction. From a given item order (leaf j holds item order[j]) or by recursive balanced k-means
  on item embeddings (Sec. 3.2.1: "clustered into B categories ... recursively ... balanced").
* Ancestors. `ancestors` gives the node of a leaf at every level, the positives of the level-wise
  softmax (Appendix A, Eq. 13; DeFoRec).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

ScoreNodesFn = Callable[[object, jax.Array, jax.Array], jax.Array]


@flax.struct.dataclass
class TreeIndex:
  """A complete B-ary tree over `num_items` items (a pytree; the sizes are static fields).

  Attributes:
    leaf_to_item: int32 [B^H], the item held by each leaf position, -1 for a padding leaf.
    item_to_leaf: int32 [N], the leaf position (0 .. B^H - 1) of each item.
    node_valid: bool [num_nodes], whether the node's subtree holds at least one item (global ids).
    branching: B (static).
    height: H, the level of the leaves (static).
    num_items: N (static).
  """

  leaf_to_item: jax.Array
  item_to_leaf: jax.Array
  node_valid: jax.Array
  branching: int = flax.struct.field(pytree_node=False)
  height: int = flax.struct.field(pytree_node=False)
  num_items: int = flax.struct.field(pytree_node=False)

  @property
  def num_leaves(self) -> int:
    return self.branching**self.height

  @property
  def num_nodes(self) -> int:
    return num_nodes(self.branching, self.height)

  def offset(self, level: int) -> int:
    return level_offset(self.branching, level)


def height_for(num_items: int, branching: int) -> int:
  """Smallest H >= 1 with branching^H >= num_items."""
  if branching < 2:
    raise ValueError(f"branching must be >= 2, got {branching}")
  if num_items < 1:
    raise ValueError(f"num_items must be >= 1, got {num_items}")
  h = 1
  while branching**h < num_items:
    h += 1
  return h


def level_offset(branching: int, level: int) -> int:
  """Global id of the first node of `level`: (B^level - 1) / (B - 1)."""
  return (branching**level - 1) // (branching - 1)


def num_nodes(branching: int, height: int) -> int:
  """Number of nodes of the complete tree, levels 0..height."""
  return level_offset(branching, height + 1)


def global_id(tree: TreeIndex, level: int, position: jax.Array) -> jax.Array:
  """Global node id of the node at `position` in `level`."""
  return position + tree.offset(level)


def children_positions(tree: TreeIndex, position: jax.Array) -> jax.Array:
  """Positions (in the next level) of the children of `position`: [..., B]."""
  position = jnp.asarray(position)
  return position[..., None] * tree.branching + jnp.arange(tree.branching, dtype=position.dtype)


def parent_position(tree: TreeIndex, position: jax.Array) -> jax.Array:
  """Position (in the previous level) of the parent of `position`."""
  return jnp.asarray(position) // tree.branching


def ancestors(tree: TreeIndex, leaf: jax.Array, include_root: bool = False) -> jax.Array:
  """Global ids of the ancestors of leaf positions at every level, the leaf itself last.

  Args:
    tree: the tree.
    leaf: int [...] leaf positions.
    include_root: whether to return level 0 too.

  Returns:
    int32 [..., H] (levels 1..H), or [..., H + 1] (levels 0..H) with `include_root`.
  """
  leaf = jnp.asarray(leaf, jnp.int32)
  first = 0 if include_root else 1
  levels = range(first, tree.height + 1)
  ids = [leaf // tree.branching**(tree.height - l) + tree.offset(l) for l in levels]
  return jnp.stack(ids, axis=-1).astype(jnp.int32)


def item_ancestors(tree: TreeIndex, items: jax.Array, include_root: bool = False) -> jax.Array:
  """`ancestors` of the leaves holding `items` (int [...]): [..., H] or [..., H + 1]."""
  return ancestors(tree, tree.item_to_leaf[jnp.asarray(items)], include_root)


def _node_valid_from_leaves(leaf_valid: np.ndarray, branching: int, height: int) -> np.ndarray:
  levels = [leaf_valid]
  for _ in range(height):
    levels.append(levels[-1].reshape(-1, branching).any(axis=1))
  return np.concatenate(levels[::-1])


def from_leaf_items(leaf_to_item: np.ndarray, num_items: int, branching: int) -> TreeIndex:
  """Builds a tree from the item held by each leaf (-1 for padding); every item exactly once."""
  leaf_to_item = np.asarray(leaf_to_item, np.int64)
  height = height_for(num_items, branching)
  if leaf_to_item.shape != (branching**height,):
    raise ValueError(f"leaf_to_item must have {branching ** height} entries, got {leaf_to_item.shape}")
  held = np.sort(leaf_to_item[leaf_to_item >= 0])
  if not np.array_equal(held, np.arange(num_items)):
    raise ValueError("leaf_to_item must hold every item 0..num_items-1 exactly once")
  item_to_leaf = np.empty(num_items, np.int64)
  item_to_leaf[leaf_to_item[leaf_to_item >= 0]] = np.nonzero(leaf_to_item >= 0)[0]
  valid = _node_valid_from_leaves(leaf_to_item >= 0, branching, height)
  return TreeIndex(
      leaf_to_item=jnp.asarray(leaf_to_item, jnp.int32),
      item_to_leaf=jnp.asarray(item_to_leaf, jnp.int32),
      node_valid=jnp.asarray(valid),
      branching=branching,
      height=height,
      num_items=num_items,
  )


def from_item_order(order: np.ndarray, branching: int) -> TreeIndex:
  """Tree whose leaf j holds item order[j] (j < N); the B^H - N last leaves are padding."""
  order = np.asarray(order, np.int64)
  n = order.shape[0]
  leaves = np.full(branching**height_for(n, branching), -1, np.int64)
  leaves[:n] = order
  return from_leaf_items(leaves, n, branching)


def _balanced_assign(dist: np.ndarray, mask: np.ndarray, sizes: np.ndarray) -> np.ndarray:
  """Capacity-constrained assignment of every group's points to its B centres, over arrays.

  Args:
    dist: float [G, S, B] cost of point s of group g at centre b (padding slots ignored).
    mask: bool [G, S] real points.
    sizes: int [G, B] how many points each centre takes (sum over b = the group's point count).

  Returns:
    int64 [G, S]: the centre of each point (-1 in padding slots); centre b of group g gets exactly
    sizes[g, b] points.

  Rounds of proposals (deferred acceptance without re-opening): every unassigned point proposes to
  its cheapest centre that still has room; each centre accepts its most deserving proposers up to its
  room, by the regret key ``cost(best) - cost(second best open centre)`` (for B = 2 this is the
  exact optimum: the points sorted by d_0 - d_1 and cut at the capacity). A rejected point's centre is
  full after the round, so every round closes at least one centre of every group that still has
  points to place: at most B rounds, each one sort of the open proposals (no loop over points). Ties
  go to the earlier slot.
  """
  g_num, _, b = dist.shape
  assign = np.full(mask.shape, -1, np.int64)
  room = sizes.astype(np.int64).copy()
  todo = mask.copy()
  while todo.any():
    gi, si = np.nonzero(todo)
    cost = np.where(room[gi] > 0, dist[gi, si], np.inf)  # [P, B]
    best = np.argmin(cost, axis=1)
    d_best = cost[np.arange(gi.size), best]
    cost[np.arange(gi.size), best] = np.inf
    regret = d_best - cost.min(axis=1)  # -inf when only one centre is open
    o = np.lexsort((regret, best, gi))
    key = gi[o] * b + best[o]
    first = np.ones(key.size, bool)
    first[1:] = key[1:] != key[:-1]
    run_start = np.maximum.accumulate(np.where(first, np.arange(key.size), 0))
    ok = (np.arange(key.size) - run_start) < room.reshape(-1)[key]
    assign[gi[o][ok], si[o][ok]] = best[o][ok]
    todo[gi[o][ok], si[o][ok]] = False
    room -= np.bincount(key[ok], minlength=g_num * b).reshape(g_num, b)
  return assign


def _centre_costs(z: np.ndarray, centers: np.ndarray) -> np.ndarray:
  """||c||^2 - 2 <z, c> per (group, slot, centre): the squared distance less ||z||^2 (same argmin and
  the same regret differences)."""
  return (centers**2).sum(-1)[:, None, :] - 2.0 * np.einsum("gsd,gbd->gsb", z, centers)


def _split_level(z: np.ndarray, pos: np.ndarray, branching: int, rng: np.random.Generator,
                 iters: int) -> np.ndarray:
  """The child (0..B-1) of every item when every node of one level is split at once.

  Items are laid out as [G, S] (G non-empty nodes of the level, S the largest node; sizes differ by
  at most one in a balanced tree, so the padding is small). A node of k <= B items gives them children
  0..k-1 in item order; a larger node runs capacity-constrained Lloyd iterations with child sizes
  k // B + (c < k % B), all nodes together (batched distances, one-hot sums for the centres).
  """
  b = branching
  n = pos.shape[0]
  order = np.argsort(pos, kind="stable")
  _, counts = np.unique(pos[order], return_counts=True)
  g_num, s_max = counts.size, int(counts.max())
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  group = np.repeat(np.arange(g_num), counts)
  slot = np.arange(n) - starts[group]
  child = np.empty(n, np.int64)
  child[order] = slot  # nodes of <= B items: one child each, in item order
  big = np.flatnonzero(counts > b)
  if big.size:
    layout = np.full((g_num, s_max), -1, np.int64)
    layout[group, slot] = order
    layout = layout[big]
    mask = layout >= 0
    zb = np.where(mask[..., None], z[np.maximum(layout, 0)], 0.0)
    k = counts[big]
    sizes = k[:, None] // b + (np.arange(b)[None, :] < (k % b)[:, None])
    keys = np.where(mask, rng.random(mask.shape), np.inf)
    init = np.argsort(keys, axis=1, kind="stable")[:, :b]  # B distinct random items per node
    centers = np.take_along_axis(zb, init[..., None], axis=1)
    for _ in range(iters):
      a = _balanced_assign(_centre_costs(zb, centers), mask, sizes)
      onehot = (a[..., None] == np.arange(b)).astype(zb.dtype)
      centers = np.einsum("gsb,gsd->gbd", onehot, zb) / sizes[..., None]
    a = _balanced_assign(_centre_costs(zb, centers), mask, sizes)
    child[layout[mask]] = a[mask]
  return child


def build_balanced_kmeans(item_emb: np.ndarray, branching: int, seed: int = 0,
                          iters: int = 10) -> TreeIndex:
  """Tree from recursive balanced k-means of item embeddings (paper Sec. 3.2.1; RecForest).

  At each node the items are split into B clusters whose sizes differ by at most one (capacity
  constrained Lloyd iterations, `_balanced_assign`), recursively down to single items; child c of a
  node holds its c-th cluster. The recursion runs level by level, every node of a level at once over
  arrays (no Python loop over items or nodes): H levels, each `iters` + 1 assignments of at most B
  sorting rounds. Cluster sizes at every level differ by at most one, so a node of k items fits its
  subtree (ceil(k / B) <= B^(h-1)); the B^H - N padding leaves are spread across the tree and
  `node_valid` masks the empty subtrees.

  Departure from the recursive loop it replaces: centres are initialised from one random draw per
  level (B distinct items of each node), and the assignment is by proposal rounds with a regret key
  rather than the flat greedy over all (item, centre) pairs sorted by distance; both give exactly
  balanced clusters (tested), the clustering cost is no worse on clustered data (tested against the
  loop), and the build is a function of (embeddings, B, seed, iters) only.

  Args:
    item_emb: float [N, d] item representations.
    branching: B >= 2.
    seed: seed of the `np.random.Generator` used for the centre initialisation.
    iters: Lloyd iterations per split.

  Returns:
    The `TreeIndex`.
  """
  z = np.asarray(item_emb, np.float64)
  if z.ndim != 2:
    raise ValueError(f"item_emb must be [N, d], got shape {z.shape}")
  n = z.shape[0]
  height = height_for(n, branching)
  rng = np.random.default_rng(seed)
  pos = np.zeros(n, np.int64)
  for _ in range(height):
    pos = pos * branching + _split_level(z, pos, branching, rng, iters)
  leaves = np.full(branching**height, -1, np.int64)
  leaves[pos] = np.arange(n)
  return from_leaf_items(leaves, n, branching)


def init_node_vectors(key: jax.Array, tree: TreeIndex, dim: int, scale: float = 0.01) -> jax.Array:
  """Gaussian node vectors [num_nodes, dim] (the tree's learnable parameter w_v)."""
  return scale * jax.random.normal(key, (tree.num_nodes, dim))


def node_vectors_from_items(tree: TreeIndex, item_emb: jax.Array) -> jax.Array:
  """Node vectors [num_nodes, d]: leaves take their item's embedding, a node the mean of its items."""
  item_emb = jnp.asarray(item_emb)
  valid = tree.leaf_to_item >= 0
  leaf_vec = jnp.where(valid[:, None], item_emb[jnp.maximum(tree.leaf_to_item, 0)], 0.0)
  sums, counts = [leaf_vec], [valid.astype(item_emb.dtype)]
  for _ in range(tree.height):
    sums.append(sums[-1].reshape(-1, tree.branching, item_emb.shape[1]).sum(1))
    counts.append(counts[-1].reshape(-1, tree.branching).sum(1))
  total = jnp.concatenate(sums[::-1])
  count = jnp.concatenate(counts[::-1])
  return total / jnp.maximum(count, 1.0)[:, None]


def linear_score(params: jax.Array, x: jax.Array, node_ids: jax.Array) -> jax.Array:
  """f_lin(x, v) = <x, w_v> (paper Eq. 7) for the nodes `node_ids` [C]; params = w [num_nodes, d]."""
  return params[node_ids] @ x


def table_score(params: object, x: jax.Array, node_ids: jax.Array) -> jax.Array:
  """Scorer whose input is already the score of every node: x [num_nodes] (tests, oracles)."""
  del params
  return x[node_ids]
