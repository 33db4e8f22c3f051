"""Build time of the balanced hierarchical k-means tree (`jaxrec.retrieval.tree.build_balanced_kmeans`).

Items are clustered Gaussian vectors (``--clusters`` centres, unit noise around centres of norm 4, as
the synthetic generator's clustered items), ``--dim`` dimensions, for each size in ``--sizes`` and
each branching in ``--branchings``. Printed per (N, B): the height, the build's wall time (numpy on
the host, single process), the k-means cost of the root split (sum of squared distances of items to
their cluster means), and that the tree is exactly balanced (every node's children hold sizes that
differ by at most one). ``--loop_max`` also times the old recursive build (a Python loop over the N x B
(item, centre) pairs of every node and Lloyd iteration, kept in ``tests/test_tree_retrieval.py`` as the
reference) for the sizes up to it, to show the speed-up on the same input.

Run:  python -m benchmarks.bench_tree_build [--sizes=10000,100000,1000000] [--branchings=2,32]
      [--dim=24] [--iters=10] [--loop_max=10000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from jaxrec.retrieval import tree as tree_lib


def clustered_items(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(clusters, dim))
  centres *= 4.0 / np.linalg.norm(centres, axis=1, keepdims=True)
  return (centres[rng.integers(clusters, size=n)] + rng.normal(size=(n, dim))).astype(np.float32)


def subtree_sizes(tree: tree_lib.TreeIndex) -> list[np.ndarray]:
  """Items under each node, level by level ([B^l] per level l = 0..H)."""
  held = (np.asarray(tree.leaf_to_item) >= 0).astype(np.int64)
  out = [held]
  for _ in range(tree.height):
    out.append(out[-1].reshape(-1, tree.branching).sum(1))
  return out[::-1]


def is_balanced(tree: tree_lib.TreeIndex) -> bool:
  """Every internal node's children hold item counts that differ by at most one."""
  sizes = subtree_sizes(tree)
  for level in range(tree.height):
    kids = sizes[level + 1].reshape(-1, tree.branching)
    used = sizes[level] > 0
    if np.any(kids[used].max(1) - kids[used].min(1) > 1):
      return False
  return True


def root_cost(tree: tree_lib.TreeIndex, emb: np.ndarray) -> float:
  """k-means cost of the root's split: squared distances of the items to their child's mean."""
  l2i = np.asarray(tree.leaf_to_item).reshape(tree.branching, -1)
  cost = 0.0
  for c in range(tree.branching):
    items = l2i[c][l2i[c] >= 0]
    if items.size:
      cost += float(((emb[items] - emb[items].mean(0)) ** 2).sum())
  return cost


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--sizes", default="10000,100000,1000000")
  ap.add_argument("--branchings", default="2,32")
  ap.add_argument("--dim", type=int, default=24)
  ap.add_argument("--clusters", type=int, default=50)
  ap.add_argument("--iters", type=int, default=10)
  ap.add_argument("--loop_max", type=int, default=0, help="also time the loop build for N <= this")
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args()
  sizes = [int(s) for s in args.sizes.split(",")]
  branchings = [int(b) for b in args.branchings.split(",")]
  print("N | B | H | build s | root cost | balanced | loop build s | loop root cost")
  for n in sizes:
    emb = clustered_items(n, args.dim, args.clusters, args.seed)
    for b in branchings:
      t0 = time.perf_counter()
      tree = tree_lib.build_balanced_kmeans(emb, b, seed=args.seed, iters=args.iters)
      sec = time.perf_counter() - t0
      loop_s = loop_cost = "-"
      if n <= args.loop_max:
        from tests.test_tree_retrieval import loop_build_balanced_kmeans  # pylint: disable=import-outside-toplevel
        t0 = time.perf_counter()
        ref = loop_build_balanced_kmeans(emb, b, seed=args.seed, iters=args.iters)
        loop_s = f"{time.perf_counter() - t0:.2f}"
        loop_cost = f"{root_cost(ref, emb):.1f}"
      print(f"{n} | {b} | {tree.height} | {sec:.2f} | {root_cost(tree, emb):.1f} | {is_balanced(tree)} | "
            f"{loop_s} | {loop_cost}", flush=True)


if __name__ == "__main__":
  main()
