"""Step time of dense Adam vs row-sparse table updates (`jaxrec.train.sparse`) as the user table grows.

MF-BPR (registry `mf-bpr`, dim 64, 4 negatives per row) and 2TS stage 1 (CCF, Eq. 10: d_id 64, offer
sets of p = 20 sampled in the step) at 10k, 100k and 1M users with a fixed item catalogue, batch 1024,
uniform random users and items (the most distinct rows a batch can touch). Three updates each:

* `dense-adam`: `gradient_learner(loss, adam)`, the path every method uses today (MF: `optax.adam`;
  2TS: `tts.stage_learner(cfg, params, "stage1")`): the gradient is a dense `[rows, d]` table and Adam
  reads and writes every row of the table and both moments each step;
* `lazy-adam` and `rowwise-adagrad`: `sparse.row_sparse_learner` (MF: `mf.row_lookups` /
  `mf.compact_loss_fn`; 2TS: `tts.training.sparse_stage1_learner`): gradient at the gathered rows,
  update of those rows only, in place under the donated jit.

Each update is `learner.jit_update(learner)` (state donated) on pre-built device batches (host work
excluded): 3 warm-up steps (compilation), then `--windows` windows of `--steps` steps, each window
closed by `jax.block_until_ready`; the reported time per step is the median window / steps. All rows
come from one run. Ratios printed: each update's step time at the largest vs the smallest user count
(target for the row-sparse updates: <= 1.5x from 10k to 1M users), and dense / sparse at each size.

Run:  python -m benchmarks.bench_sparse_optim [--users=10000,100000,1000000] [--items=100000]
      [--batch=1024] [--dim=64] [--steps=10] [--windows=3] [--models=mf-bpr,2ts-stage1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrec.methods import two_time_scale as tts
from jaxrec.models import mf, registry
from jaxrec.train import learner as learner_lib
from jaxrec.train import sparse

UPDATES = ("dense-adam", "lazy-adam", "rowwise-adagrad")


def _mf(num_users, num_items, args, update):
  spec = registry.get("mf-bpr")
  module = spec.make(num_users, num_items, dim=args.dim)
  params = spec.init(jax.random.key(0), module, registry.sample_batch("user"))
  if update == "dense-adam":
    learner = learner_lib.gradient_learner(spec.loss_fn(module), optax.adam(args.lr))
  else:
    learner = sparse.row_sparse_learner(mf.compact_loss_fn(module, "bpr"),
                                        sparse.RowLookups(**mf.row_lookups(module)),
                                        sparse.get(update, args.lr))
  rng = np.random.default_rng(0)
  batches = [{"user": jnp.asarray(rng.integers(0, num_users, args.batch), jnp.int32),
              "positive": jnp.asarray(rng.integers(0, num_items, args.batch), jnp.int32),
              "negatives": jnp.asarray(rng.integers(0, num_items, (args.batch, 4)), jnp.int32),
              "mask": jnp.ones((args.batch,), bool)} for _ in range(4)]
  return learner, params, batches


def _tts(num_users, num_items, args, update):
  cfg = tts.TwoTimeScaleConfig(variant="ccf", d_id=args.dim, num_offered=20, lr_stage1=args.lr,
                               batch_stage1=args.batch)
  params = tts.init_params(cfg, jax.random.key(0), num_users, num_items)
  if update == "dense-adam":
    learner = tts.stage_learner(cfg, params, "stage1")
  else:
    learner = tts.training.sparse_stage1_learner(cfg.static(), update)
  rng = np.random.default_rng(0)
  batches = [{"user": jnp.asarray(rng.integers(0, num_users, args.batch), jnp.int32),
              "item": jnp.asarray(rng.integers(0, num_items, args.batch), jnp.int32)} for _ in range(4)]
  return learner, params, batches


MODELS = {"mf-bpr": _mf, "2ts-stage1": _tts}


def time_update(learner, params, batches, steps: int, windows: int) -> float:
  """Median seconds per step over ``windows`` windows of ``steps`` donated, jitted updates."""
  update = learner_lib.jit_update(learner)
  state = learner.init(params, jax.random.key(0))
  del params
  key = jax.random.key(1)
  for i in range(3):  # compile + warm up
    state, m = update(state, batches[i % len(batches)], jax.random.fold_in(key, i))
  jax.block_until_ready(state)
  times = []
  for w in range(windows):
    t0 = time.perf_counter()
    for i in range(steps):
      state, m = update(state, batches[i % len(batches)], jax.random.fold_in(key, 10 + w * steps + i))
    jax.block_until_ready((state, m))
    times.append((time.perf_counter() - t0) / steps)
  if not np.isfinite(float(m["loss"])):
    raise RuntimeError("non-finite loss in the benchmark")
  return statistics.median(times)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--users", default="10000,100000,1000000")
  ap.add_argument("--items", type=int, default=100_000)
  ap.add_argument("--batch", type=int, default=1024)
  ap.add_argument("--dim", type=int, default=64)
  ap.add_argument("--lr", type=float, default=1e-3)
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--windows", type=int, default=3)
  ap.add_argument("--models", default="mf-bpr,2ts-stage1")
  args = ap.parse_args(argv)
  users = [int(u) for u in args.users.split(",")]
  models = args.models.split(",")
  for m in models:
    if m not in MODELS:
      print(f"--models: unknown {m!r}; expected some of {sorted(MODELS)}", file=sys.stderr)
      return 2
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs; load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; items {args.items}, batch {args.batch}, "
        f"dim {args.dim}, {args.windows} x {args.steps} timed steps")
  t_start = time.perf_counter()
  res = {}
  for model in models:
    for u in users:
      for upd in UPDATES:
        learner, params, batches = MODELS[model](u, args.items, args, upd)
        res[model, u, upd] = time_update(learner, params, batches, args.steps, args.windows)
        print(f"{model:11s} users {u:>8d}  {upd:16s} {1e3 * res[model, u, upd]:9.2f} ms/step", flush=True)
        del learner, params, batches
  cols = " | ".join(f"{x} ms/step" for x in UPDATES)
  print(f"\n| model | users | {cols} | dense / lazy | dense / rowwise |")
  print("|" + " --- |" * (4 + len(UPDATES)))
  for model in models:
    for u in users:
      r = [res[model, u, x] for x in UPDATES]
      print(f"| {model} | {u:,} | {' | '.join(f'{1e3 * x:.1f}' for x in r)} | {r[0] / r[1]:.1f}x | "
            f"{r[0] / r[2]:.1f}x |")
  lo, hi = users[0], users[-1]
  print(f"\nstep time at {hi:,} / at {lo:,} users (target for the row-sparse updates: <= 1.5x)")
  for model in models:
    print(f"  {model}: " + ", ".join(f"{x} {res[model, hi, x] / res[model, lo, x]:.2f}x" for x in UPDATES))
  print(f"total {time.perf_counter() - t_start:.0f} s; load average at the end "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
