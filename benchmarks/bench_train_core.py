"""Overhead of the training loop (`jaxrec.train.loop.train`) over bare jitted optax steps.

BPR-MF, 10k users x 5k items x dim 64, batch 1024, Adam. One epoch through `train()` (batches
streamed from host numpy triples with per-epoch shuffling and uniform negative sampling, padded last
batch with a mask, tqdm progress, absl logging, NaN checks; no evaluation) versus the same number of
bare jitted steps on pre-built device batches. Both after warm-up, in one process, alternating,
median (and best) of `--repeats`. Target: ratio <= 1.3.

Run:  python3 benchmarks/bench_train_core.py [--interactions 200000] [--repeats 3] [--workdir]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.train import loop as loop_lib
from jaxrec.train import state as state_lib
from benchmarks.common import peak_rss_mib
from jaxrec.train import learner as learner_lib

USERS, ITEMS, DIM, BATCH = 10_000, 5_000, 64, 1024


def _model():
  """(init_params, loss_fn) of BPR-MF: jaxrec.models.mf if importable, else an inline twin."""
  try:
    from jaxrec.models import mf  # pylint: disable=import-outside-toplevel
    module = mf.MF(USERS, ITEMS, DIM)
    dummy = {"user": jnp.zeros((1,), jnp.int32), "positive": jnp.zeros((1,), jnp.int32),
             "negatives": jnp.zeros((1, 1), jnp.int32), "mask": jnp.ones((1,), bool)}
    params = module.init(jax.random.key(0), dummy, mf.candidates(dummy), method=module.score)
    return params, mf.make_loss_fn(module, "bpr"), "jaxrec.models.mf"
  except Exception as e:  # pylint: disable=broad-except
    print(f"jaxrec.models.mf unavailable ({e!r}); using the inline BPR-MF", file=sys.stderr)

  k1, k2 = jax.random.split(jax.random.key(0))
  params = {"user": 0.1 * jax.random.normal(k1, (USERS, DIM)),
            "item": 0.1 * jax.random.normal(k2, (ITEMS, DIM))}

  def loss_fn(p, batch, rng):
    del rng
    u = p["user"][batch["user"]]
    diff = jnp.sum(u * (p["item"][batch["positive"]] - p["item"][batch["negatives"][:, 0]]), -1)
    mask = batch["mask"].astype(jnp.float32)
    loss = -jnp.sum(jax.nn.log_sigmoid(diff) * mask) / jnp.maximum(mask.sum(), 1.0)
    return loss, {}
  return params, loss_fn, "inline"


def _triples(n, seed=0):
  rs = np.random.default_rng(seed)
  users = rs.integers(0, USERS, n).astype(np.int32)
  items = np.minimum(rs.zipf(1.3, n) - 1, ITEMS - 1).astype(np.int32)  # Popularity skew.
  return users, items


def make_batches_fn(users, items, seed=0):
  """Epoch -> padded, masked batches; order and negatives depend on (seed, epoch) only."""
  n = len(users)

  def batches_fn(epoch):
    rs = np.random.default_rng([seed, epoch])
    perm = rs.permutation(n)
    negs = rs.integers(0, ITEMS, n, dtype=np.int32)
    for start in range(0, n, BATCH):
      idx = perm[start:start + BATCH]
      m = len(idx)
      if m < BATCH:
        idx = np.concatenate([idx, np.zeros(BATCH - m, idx.dtype)])
      yield {"user": users[idx], "positive": items[idx], "negatives": negs[start:start + BATCH, None]
             if m == BATCH else np.pad(negs[start:], (0, BATCH - m))[:, None],
             "mask": np.arange(BATCH) < m}
  return batches_fn


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--interactions", type=int, default=200_000)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--prefetch", type=int, default=2)
  ap.add_argument("--workdir", action="store_true",
                  help="also checkpoint (epoch end) and write metrics.jsonl")
  args = ap.parse_args()

  params, loss_fn, which = _model()
  tx = state_lib.make_optimizer("adam", 1e-3)
  learner = learner_lib.gradient_learner(loss_fn, tx)
  step = learner_lib.jit_update(learner)
  users, items = _triples(args.interactions)
  batches_fn = make_batches_fn(users, items)
  steps = -(-args.interactions // BATCH)
  cfg = loop_lib.LoopConfig(num_epochs=1, log_every=100, eval_at_epoch_end=False, progress=True,
                            steps_per_epoch=steps, prefetch=args.prefetch)
  rng = jax.random.key(0)
  device_batches = [jax.device_put(b) for b in batches_fn(0)]

  def run_loop():
    state = state_lib.create(params, tx)
    jax.block_until_ready(state)
    workdir = tempfile.mkdtemp() if args.workdir else None
    t0, c0 = time.perf_counter(), time.process_time()
    final, _ = loop_lib.train(cfg, learner, state, batches_fn, workdir=workdir, rng=rng)
    jax.block_until_ready(final)
    return time.perf_counter() - t0, time.process_time() - c0

  def run_bare():
    state = state_lib.create(params, tx)
    jax.block_until_ready(state)
    t0, c0 = time.perf_counter(), time.process_time()
    for i, b in enumerate(device_batches):
      state, metrics = step(state, b, jax.random.fold_in(rng, i))
    jax.block_until_ready((state, metrics))
    return time.perf_counter() - t0, time.process_time() - c0

  run_bare(), run_loop()  # Warm-up (compile).
  wall, cpu = {"bare": [], "loop": []}, {"bare": [], "loop": []}
  for _ in range(args.repeats):
    for name, fn in (("bare", run_bare), ("loop", run_loop)):
      w, c = fn()
      wall[name].append(w)
      cpu[name].append(c)
  print(f"model={which} backend={jax.default_backend()} devices={jax.device_count()} steps/epoch={steps} "
        f"interactions={args.interactions} workdir={args.workdir} prefetch={args.prefetch}")
  for name in ("bare", "loop"):
    t = statistics.median(wall[name])
    print(f"{name}: {steps / t:7.1f} steps/s (median wall {t:.3f} s/epoch, best {min(wall[name]):.3f}; "
          f"median process CPU {statistics.median(cpu[name]):.3f} s)")
  ratio = {k: statistics.median(v["loop"]) / statistics.median(v["bare"]) for k, v in
           (("wall", wall), ("cpu", cpu))}
  print(f"ratio loop/bare: wall {ratio['wall']:.3f} (medians), {min(wall['loop']) / min(wall['bare']):.3f} "
        f"(best runs); process CPU {ratio['cpu']:.3f}  (target <= 1.3)")
  print(f"peak memory VmHWM : {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
  main()
