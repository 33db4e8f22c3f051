"""Peak memory of 2TS stage 1 streamed from on-disk shards vs the same log held in memory.

The first `--chunks` chunks of the `large` synthetic preset (2k users each, in the full 1M-user /
100k-item index space, so the tables have their full size) are written once as `.npy` shards
(`jaxrec.data.shards.write`, into `--dir`; skipped when they exist). Then, in a fresh process per mode
(each peak RSS is its own process's `VmHWM`):

* `stream`: `shards.epoch_batches` (memory-mapped shards, `--window` shards shuffled together) feeds
  `loop.train` with 2TS stage 1 (`tts.training.sparse_stage1_learner`, row-sparse `--optimizer`);
* `memory`: the shards are first loaded whole (`ShardedLog.to_log()`, as an in-memory loader would hold
  the log), then the same batches are cut from the in-memory columns (one global permutation per epoch,
  as `two_time_scale.batches.stage_batches` does).

Each trains `--steps` steps of batch `--batch` (the first 20 are a warm-up, excluded from the rate) and
prints interactions/s and peak RSS. The streamed peak should not grow with `--chunks`; the in-memory
one grows with the rows held (16 bytes a row for user, item and timestamp, plus the permutation).

Run:  python -m benchmarks.bench_shards [--chunks=50] [--steps=300] [--batch=1024] [--dim=64] [--p=20]
      [--window=2] [--optimizer=rowwise-adagrad] [--dir=/tmp/jaxrec-shards-large] [--modes=stream,memory]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from benchmarks.common import peak_rss_mib


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--chunks", type=int, default=50)
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--batch", type=int, default=1024)
  p.add_argument("--dim", type=int, default=64)
  p.add_argument("--p", type=int, default=20)
  p.add_argument("--window", type=int, default=2)
  p.add_argument("--optimizer", default="rowwise-adagrad")
  p.add_argument("--dir", default="/tmp/jaxrec-shards-large")
  p.add_argument("--modes", default="stream,memory")
  p.add_argument("--mode", default=None, help=argparse.SUPPRESS)  # one measurement, in a child process
  args = p.parse_args(argv)
  for name in ("chunks", "steps", "batch", "dim", "p", "window"):
    if getattr(args, name) < 1:
      p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
  for m in args.modes.split(","):
    if m not in ("stream", "memory"):
      p.error(f"--modes must list stream and/or memory, got {m!r}")
  return args


def _measure(args) -> None:
  import jax
  import numpy as np

  from jaxrec.data import shards
  from jaxrec.methods import two_time_scale as tts
  from jaxrec.train import loop

  log = shards.open_log(args.dir)
  base = peak_rss_mib()
  if args.mode == "stream":
    def batches_fn(epoch):
      return shards.epoch_batches(log, args.batch, seed=0, epoch=epoch, window=args.window)
  else:
    held = log.to_log()
    user, item = held.user, held.item

    def batches_fn(epoch):
      perm = np.random.default_rng([0, epoch]).permutation(user.shape[0])
      for s in range(0, perm.shape[0] - args.batch + 1, args.batch):
        idx = perm[s:s + args.batch]
        yield {"user": user[idx], "item": item[idx], "mask": np.ones(args.batch, bool)}
  cfg = tts.TwoTimeScaleConfig(variant="ccf", d_id=args.dim, num_offered=args.p)
  params = tts.init_params(cfg, jax.random.key(0), log.num_users, log.num_items, 0)
  learner = tts.training.sparse_stage1_learner(cfg, args.optimizer)
  state = learner.init(params, jax.random.key(0))
  warm = 20
  config = loop.LoopConfig(num_epochs=1000, max_steps=warm, log_every=warm)
  state, _ = loop.train(config, learner, state, batches_fn, rng=jax.random.key(1))
  jax.block_until_ready(state)
  t = time.perf_counter()
  config = loop.LoopConfig(num_epochs=1000, max_steps=args.steps - warm,
                           log_every=args.steps - warm)
  state, history = loop.train(config, learner, state, batches_fn, rng=jax.random.key(2))
  jax.block_until_ready(state)
  dt = time.perf_counter() - t
  rate = (args.steps - warm) * args.batch / dt
  print(f"| {args.mode} | {log.num_rows:,} | {rate:,.0f} | {peak_rss_mib():,.0f} | "
        f"{peak_rss_mib() - base:,.0f} | {history[-1]['loss']:.4f} |", flush=True)


def main(argv=None):
  args = _parse(sys.argv[1:] if argv is None else argv)
  if args.mode:
    _measure(args)
    return
  from jaxrec.data import shards, synthetic

  t = time.perf_counter()
  chunks = synthetic.generate_chunks("large", chunks=range(args.chunks))
  log = shards.write(args.dir, chunks)
  if log.num_shards != args.chunks:  # shards of another --chunks: write these
    chunks = synthetic.generate_chunks("large", chunks=range(args.chunks))
    log = shards.write(args.dir, chunks, overwrite=True)
  size = sum(os.path.getsize(os.path.join(args.dir, f)) for f in os.listdir(args.dir))
  print(f"# shards: {log.num_shards} of {synthetic.num_chunks('large')} chunks of `large`, {log.num_rows:,} "
        f"rows, {size / 2**20:,.0f} MiB on disk in {args.dir} (ready in {time.perf_counter() - t:.1f} s)")
  print(f"# 2TS stage 1 ({args.optimizer}), users {log.num_users:,}, items {log.num_items:,}, "
        f"dim {args.dim}, "
        f"p {args.p}, batch {args.batch}, {args.steps} steps (20 warm-up), window {args.window}")
  print("| mode | rows | interactions/s | peak RSS MiB | peak - after opening MiB | last loss |")
  print("| --- | --- | --- | --- | --- | --- |")
  for mode in args.modes.split(","):
    cmd = [sys.executable, "-m", "benchmarks.bench_shards", *(argv if argv is not None else sys.argv[1:]),
           f"--mode={mode}"]
    subprocess.run(cmd, check=True)


if __name__ == "__main__":
  main()
