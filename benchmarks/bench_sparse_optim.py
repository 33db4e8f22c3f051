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
excluded): every cell is built, compiled and warmed up (3 steps) first, then `--windows` rounds run one
window of `--steps` steps of every cell in turn (so a change of the machine's load hits every cell
alike), each window closed by `jax.block_until_ready`. The table and the ratios use the best window's
wall time per step (the least disturbed by other processes on a shared machine); the median window
and the median process CPU time per step are printed beside it. All rows come from one run. Ratios
printed: each update's step time at the largest vs the smallest user count (target for the row-sparse
updates: <= 1.5x from 10k to 1M users), and dense / sparse at each size.

Run:  python -m benchmarks.bench_sparse_optim [--users=10000,100000,1000000] [--items=100000]
      [--batch=1024] [--dim=64] [--steps=10] [--windows=5] [--models=mf-bpr,2ts-stage1]
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


class Timed:
  """One (model, users, update) cell: its jitted donated update, its state and its batches."""

  def __init__(self, learner, params, batches):
    self.update = learner_lib.jit_update(learner)
    self.state = learner.init(params, jax.random.key(0))
    self.batches = batches
    self.key = jax.random.key(1)
    self.calls = 0
    self.window(3)  # compile + warm up
    self.wall, self.cpu = [], []

  def window(self, steps: int):
    """Runs ``steps`` updates, blocks, and returns (wall, process CPU) seconds per step."""
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
      self.state, m = self.update(self.state, self.batches[self.calls % len(self.batches)],
                                  jax.random.fold_in(self.key, self.calls))
      self.calls += 1
    jax.block_until_ready((self.state, m))
    if not np.isfinite(float(m["loss"])):
      raise RuntimeError("non-finite loss in the benchmark")
    return (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--users", default="10000,100000,1000000")
  ap.add_argument("--items", type=int, default=100_000)
  ap.add_argument("--batch", type=int, default=1024)
  ap.add_argument("--dim", type=int, default=64)
  ap.add_argument("--lr", type=float, default=1e-3)
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--windows", type=int, default=5)
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
  cells = {}
  for model in models:
    for u in users:
      for upd in UPDATES:
        cells[model, u, upd] = Timed(*MODELS[model](u, args.items, args, upd))
  print(f"built and compiled {len(cells)} cells in {time.perf_counter() - t_start:.0f} s", flush=True)
  # Rounds over every cell, so that the machine's load drifts over all cells alike.
  for _ in range(args.windows):
    for cell in cells.values():
      wall, cpu = cell.window(args.steps)
      cell.wall.append(wall)
      cell.cpu.append(cpu)
  res = {k: min(c.wall) for k, c in cells.items()}
  for (model, u, upd), c in cells.items():
    print(f"{model:11s} users {u:>8d}  {upd:16s} wall ms/step min {1e3 * min(c.wall):8.2f} median "
          f"{1e3 * statistics.median(c.wall):8.2f}; process CPU ms/step median "
          f"{1e3 * statistics.median(c.cpu):8.2f}")
  cols = " | ".join(f"{x} ms/step" for x in UPDATES)
  print("\nbest window, wall ms/step:")
  print(f"| model | users | {cols} | dense / lazy | dense / rowwise |")
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
