"""Beam search over the tree vs brute-force full scoring: users/s and Recall@K as the catalogue grows.

For each N in ``--sizes``: clustered item vectors (``bench_tree_build.clustered_items``, d = ``--dim``),
the balanced k-means tree over them (build time printed), node vectors = the mean of the items under
each node (leaves: the item's vector), and users near random items (x = item vector + noise). The linear
scorer f(x, v) = <x, w_v> (Eq. 7) is then a maximum-inner-product search:

* brute force: x @ W_items^T and ``lax.top_k`` (jitted, the exact top-K), users/s;
* beam search of width ``beam`` (``jaxrec.retrieval.beam_search``, jitted, vmapped), users/s, and its
  Recall@K against the brute-force top-K (K = ``--k``).

An approximate nearest-neighbour index from PyPI (FAISS / ScaNN) would be the inner-product baseline a
user would otherwise pick; it is not installed here (see the closing note). The MLP and attention scorers
have no inner-product form, so brute force is their only alternative: ``--mlp`` also times brute-force
MLP scoring against the beam with an MLP scorer of random weights (speed only).

Run:  python -m benchmarks.bench_tree_retrieval [--sizes=10000,100000] [--branching=16] [--beams=20,50,100]
      [--k=20] [--users=512] [--dim=24] [--mlp]
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.bench_tree_build import clustered_items
from jaxrec.retrieval import beam_search as bs
from jaxrec.retrieval import tree as tree_lib


@functools.partial(jax.jit, static_argnames=("k",))
def _brute(xs, items, k):
  return jax.lax.top_k(xs @ items.T, k)[1]


@functools.partial(jax.jit, static_argnames=("k",))
def _beam(w, tree, xs, k):
  return bs.batched_beam_search(tree_lib.linear_score, w, tree, xs, k).items


def _mlp_score(params, x, node_ids):
  w1, w2 = params["w1"], params["w2"]
  v = params["nodes"][node_ids]
  h = jax.nn.relu(jnp.concatenate([jnp.broadcast_to(x, v.shape), v], -1) @ w1)
  return (h @ w2)[:, 0]


@functools.partial(jax.jit, static_argnames=("k",))
def _mlp_beam(params, tree, xs, k):
  return bs.batched_beam_search(_mlp_score, params, tree, xs, k).items


@functools.partial(jax.jit, static_argnames=("k",))
def _mlp_brute(params, leaf_ids, xs, k):
  # one user at a time: [N, hidden] live, never [users, N, hidden]
  return jax.lax.map(lambda x: jax.lax.top_k(_mlp_score(params, x, leaf_ids), k)[1], xs)


def _time(fn, *args, repeats=3):
  jax.block_until_ready(fn(*args))  # compile
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t0)
  return best


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--sizes", default="10000,100000")
  ap.add_argument("--branching", type=int, default=16)
  ap.add_argument("--beams", default="20,50,100")
  ap.add_argument("--k", type=int, default=20)
  ap.add_argument("--users", type=int, default=512)
  ap.add_argument("--dim", type=int, default=24)
  ap.add_argument("--mlp", action="store_true")
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args()
  beams = [int(b) for b in args.beams.split(",")]
  print("N | B | build s | method | users/s | Recall@K vs brute force")
  for n in [int(s) for s in args.sizes.split(",")]:
    emb = clustered_items(n, args.dim, 50, args.seed)
    t0 = time.perf_counter()
    tree = tree_lib.build_balanced_kmeans(emb, args.branching, seed=args.seed)
    build = time.perf_counter() - t0
    w = tree_lib.node_vectors_from_items(tree, jnp.asarray(emb))
    rng = np.random.default_rng(args.seed + 1)
    xs = jnp.asarray(emb[rng.integers(n, size=args.users)] + rng.normal(size=(args.users, args.dim)),
                     jnp.float32)
    items = jnp.asarray(emb)
    sec = _time(_brute, xs, items, args.k)
    exact = np.asarray(_brute(xs, items, args.k))
    print(f"{n} | {args.branching} | {build:.1f} | brute force | {args.users / sec:.0f} | 1.000", flush=True)
    for beam in beams:
      sec = _time(_beam, w, tree, xs, beam)
      got = np.asarray(_beam(w, tree, xs, beam))[:, :args.k]
      recall = np.mean([len(set(g) & set(e)) / args.k for g, e in zip(got, exact)])
      print(f"{n} | {args.branching} | {build:.1f} | beam {beam} | {args.users / sec:.0f} | {recall:.3f}",
            flush=True)
    if args.mlp:
      key = jax.random.PRNGKey(args.seed)
      params = {"w1": jax.random.normal(key, (2 * args.dim, 64)) / np.sqrt(2 * args.dim),
                "w2": jax.random.normal(jax.random.fold_in(key, 1), (64, 1)) / 8.0, "nodes": w}
      leaf_ids = jnp.asarray(tree.offset(tree.height) + np.asarray(tree.item_to_leaf))
      few = xs[:64]
      sec = _time(_mlp_brute, params, leaf_ids, few, args.k, repeats=1)
      print(f"{n} | {args.branching} | {build:.1f} | MLP brute force | {few.shape[0] / sec:.0f} | -",
            flush=True)
      sec = _time(_mlp_beam, params, tree, few, max(beams), repeats=1)
      print(f"{n} | {args.branching} | {build:.1f} | MLP beam {max(beams)} | {few.shape[0] / sec:.0f} | -",
            flush=True)


if __name__ == "__main__":
  main()
