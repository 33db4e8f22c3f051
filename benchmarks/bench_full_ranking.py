"""Full-ranking evaluation throughput against the bare score-matrix product.

Run: ``python -m benchmarks.bench_full_ranking [--users 10000 --items 10000 --dim 64 --exclusions 20
--batch 1024 --chunk 2048 --repeats 5 --held_out 1]``

``--held_out N`` (N > 1) gives every user N held-out items as one grouped query set (RecBole's 8/1/1
style) and also times the same queries ungrouped (each ranked in its own full ranking): the grouped path
scores each user once.

Times ``evaluate(dot ScoreFn, queries, FullRanking(chunk))`` (positive scoring, chunked counting with
known positives excluded, host batching, metrics) against the same users x items product blocked the
same way (a jitted ``fori_loop`` over the same item chunks, per batch of users, reduced with a row max
so that XLA cannot drop it) and against one unchunked ``[B, N]`` product per batch. All timings are
taken in one process after a warm-up call, with ``block_until_ready``; the figure that matters is the
ratio (target: evaluation <= 2x the bare blocked product).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.data.log import InteractionLog
from jaxrec.eval import protocols
from jaxrec.eval.queries import Queries
from jaxrec.models.common import dot_scores


def _score(params, queries, items):
  user_emb, item_emb = params
  return dot_scores(jnp.take(user_emb, queries["user"], axis=0), item_emb, items)


@functools.partial(jax.jit, static_argnames=("chunk",))
def _bare_blocked(user_emb, idx, item_emb, *, chunk):
  u = jnp.take(user_emb, idx, axis=0)
  n = item_emb.shape[0]
  num_chunks = -(-n // chunk)
  offs = jnp.arange(chunk)

  def body(c, acc):
    ids = jnp.minimum(c * chunk + offs, n - 1)
    s = u @ jnp.take(item_emb, ids, axis=0).T
    return jnp.maximum(acc, s.max(1))

  return jax.lax.fori_loop(0, num_chunks, body, jnp.full((u.shape[0],), -jnp.inf, u.dtype))


@jax.jit
def _bare_full(user_emb, idx, item_emb):
  return jnp.take(user_emb, idx, axis=0) @ item_emb.T


def _time_interleaved(fns, repeats):
  """Best wall and process-CPU time of each function, alternating the functions between repeats.

  On a shared machine the wall time depends on other processes; the CPU time of this process (all its
  threads) measures the work done and is the steadier figure.
  """
  for fn in fns:
    fn()  # warm-up (compile)
  wall = [np.inf] * len(fns)
  cpu = [np.inf] * len(fns)
  for _ in range(repeats):
    for i, fn in enumerate(fns):
      t0, c0 = time.perf_counter(), time.process_time()
      fn()
      wall[i] = min(wall[i], time.perf_counter() - t0)
      cpu[i] = min(cpu[i], time.process_time() - c0)
  return wall, cpu


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--users", type=int, default=10_000)
  p.add_argument("--items", type=int, default=10_000)
  p.add_argument("--dim", type=int, default=64)
  p.add_argument("--exclusions", type=int, default=20)
  p.add_argument("--batch", type=int, default=1024)
  p.add_argument("--chunk", type=int, default=2048)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--held_out", type=int, default=1)
  a = p.parse_args(argv)
  rng = np.random.default_rng(0)
  ue = jnp.asarray(rng.normal(size=(a.users, a.dim)).astype(np.float32))
  ie = jnp.asarray(rng.normal(size=(a.items, a.dim)).astype(np.float32))
  k = a.exclusions
  h = a.held_out
  train_items = np.argsort(rng.random((a.users, a.items)), axis=1)[:, : k + h].astype(np.int32)
  train = InteractionLog.from_arrays(np.repeat(np.arange(a.users), k), train_items[:, :k].ravel(),
                                     num_users=a.users, num_items=a.items)
  test = InteractionLog.from_arrays(np.repeat(np.arange(a.users), h), train_items[:, k:].ravel(),
                                    num_users=a.users, num_items=a.items)
  queries = Queries.from_log(test, [train], group_by_user=h > 1)
  fn, params = _score, (ue, ie)
  proto = protocols.FullRanking(a.chunk)

  result = {}

  def run_eval():
    result["r"] = protocols.evaluate(fn, params, queries, proto, a.items, batch_size=a.batch)

  def run_bare(bare):  # one batch at a time, as evaluate runs them
    for s in range(0, a.users, a.batch):
      jax.block_until_ready(bare(s))

  def run_bare_async(bare):  # all batches dispatched, then one wait
    jax.block_until_ready([bare(s) for s in range(0, a.users, a.batch)])

  def blocked(s):
    idx = np.minimum(np.arange(s, s + a.batch), a.users - 1)
    return _bare_blocked(ue, idx.astype(np.int32), ie, chunk=a.chunk)

  def full(s):
    idx = np.minimum(np.arange(s, s + a.batch), a.users - 1)
    return _bare_full(ue, idx.astype(np.int32), ie)

  names = ["evaluate(FullRanking)", "bare blocked product, batch by batch",
           "bare blocked product, all dispatched", "bare unchunked [B,N] product"]
  fns = [run_eval, lambda: run_bare(blocked), lambda: run_bare_async(blocked), lambda: run_bare(full)]
  if h > 1:
    ungrouped = dataclasses.replace(queries, group=None)
    names.append(f"ranks, {h} held-out items ungrouped")
    names.append(f"ranks, {h} held-out items grouped")
    fns.append(lambda: protocols.rank_queries(fn, params, ungrouped, proto, a.items, batch_size=a.batch))
    fns.append(lambda: protocols.rank_queries(fn, params, queries, proto, a.items, batch_size=a.batch))
  wall, cpu = _time_interleaved(fns, a.repeats)
  args = sys.argv[1:] if argv is None else argv
  print("command: python -m benchmarks.bench_full_ranking " + " ".join(args))
  print(f"device: {jax.devices()[0].device_kind}; users={a.users} items={a.items} dim={a.dim} "
        f"exclusions/user={k} batch={a.batch} chunk={a.chunk}; best of {a.repeats} interleaved repeats")
  print(f"protocol: {result['r'].protocol_desc}; NDCG@10={result['r'].summary['NDCG@10']:.4f}")
  for name, w, c in zip(names, wall, cpu):
    print(f"{name:38s} wall {w:7.3f} s ({a.users / w:8.0f} users/s)  "
          f"cpu {c:7.3f} s ({a.users / c:8.0f} users/s)")
  wb, cb = min(wall[1:3]), min(cpu[1:3])
  print(f"ratio evaluate / faster bare blocked product: wall {wall[0] / wb:.2f}x, cpu {cpu[0] / cb:.2f}x "
        f"(target <= 2x); evaluate / unchunked product: wall {wall[0] / wall[3]:.2f}x, "
        f"cpu {cpu[0] / cpu[3]:.2f}x")
  if h > 1:
    print(f"ratio ungrouped / grouped ranks: wall {wall[4] / wall[5]:.2f}x, cpu {cpu[4] / cpu[5]:.2f}x")


if __name__ == "__main__":
  main()
