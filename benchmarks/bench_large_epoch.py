"""One epoch of both 2TS stages over the `large` preset (1M users, 100k items, ~100M interactions).

The preset is written once as `.npy` shards (`jaxrec.data.shards.write`, into `--dir`; skipped when they
exist, ~15 min on 2 cores), then `jaxrec.methods.two_time_scale.train` runs on the shards as a user
would (`tts.train(cfg, shards.open_log(dir), stage1_optimizer=...)`):

* stage 2's groups (inactive users' whole sequences, active users' last K) are built per block of users
  (`prepare_sharded_training_data`, `--max_rows` rows in memory at a time);
* stage 1 (CCF, row-sparse `--optimizer`) streams one epoch of shuffled batches from the memory-mapped
  shards (`shards.epoch_batches`): every interaction once;
* stage 2 (two GRU cells, length-bucketed batches) runs one epoch over every user.

The default stage-1 batch is large (32,768, as production embedding training uses): each step runs the
item feature network over every item (the offer sets of a batch reach all 100k of them), so fewer, larger
steps amortise it; lazy Adam at 1e-2 (the item feature network's Adam takes the same rate) is what learned
at that batch on the first 10 chunks (`--chunks=10`: stage-1 mean loss 2.818 in one epoch; with
`--optimizer=rowwise-adagrad` at 0.05 or 0.5 it stayed at 3.040 / 3.046, log(21) = 3.045). It prints the time of each part (the epochs include their XLA compiles), stage 1's interactions/s,
stage 2's padded positions/s, each epoch's mean loss (the offer-set softmax starts at log(1 + p)) and the
process's peak RSS (`VmHWM`).

Run (CPU):  python -m benchmarks.bench_large_epoch [--chunks=500] [--batch_stage1=32768] [--optimizer=lazy-adam]
            [--lr_stage1=0.01] [--dim=64] [--p=20] [--t_star=100] [--k=20] [--batch_stage2=1024]
            [--max_rows=8000000] [--dir=/tmp/jaxrec-shards-large]
GPU: `pip install -e ".[gpu]"` (jax[cuda12]), then the same command: JAX places the steps on the GPU, the
shards are read on the host as on CPU. Untested here (no GPU). `--chunks=N` runs on the first N of the 500 chunks (N x 2,000 users,
in the full index space, so the tables keep their full size).
"""

from __future__ import annotations

import argparse
import math
import sys
import time

from benchmarks.common import peak_rss_mib


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--chunks", type=int, default=500)
  p.add_argument("--batch_stage1", type=int, default=32768)
  p.add_argument("--optimizer", default="lazy-adam")
  p.add_argument("--lr_stage1", type=float, default=0.01)
  p.add_argument("--dim", type=int, default=64)
  p.add_argument("--p", type=int, default=20)
  p.add_argument("--t_star", type=int, default=100)
  p.add_argument("--k", type=int, default=20)
  p.add_argument("--batch_stage2", type=int, default=1024)
  p.add_argument("--max_rows", type=int, default=8_000_000)
  p.add_argument("--dir", default="/tmp/jaxrec-shards-large")
  args = p.parse_args(argv)
  for name in ("chunks", "batch_stage1", "dim", "p", "t_star", "k", "batch_stage2", "max_rows"):
    if getattr(args, name) < 1:
      p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
  if args.lr_stage1 <= 0:
    p.error(f"--lr_stage1 must be > 0, got {args.lr_stage1}")
  from jaxrec.train import sparse  # pylint: disable=import-outside-toplevel
  if args.optimizer not in sparse.OPTIMIZERS:
    p.error(f"--optimizer must be one of {sorted(sparse.OPTIMIZERS)}, got {args.optimizer!r}")
  return args


def main(argv=None):
  args = _parse(sys.argv[1:] if argv is None else argv)
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from jaxrec.data import shards, synthetic  # pylint: disable=import-outside-toplevel
  from jaxrec.methods import two_time_scale as tts  # pylint: disable=import-outside-toplevel

  t = time.perf_counter()
  log = shards.write(args.dir, synthetic.generate_chunks("large", chunks=range(args.chunks)))
  if log.num_shards != args.chunks:  # shards of another --chunks: write these
    log = shards.write(args.dir, synthetic.generate_chunks("large", chunks=range(args.chunks)), overwrite=True)
  print(f"# {log.num_rows:,} interactions in {log.num_shards} shards of `large` ({args.dir}, ready in "
        f"{time.perf_counter() - t:.0f} s); {log.num_users:,} users, {log.num_items:,} items; "
        f"JAX on {jax.devices()[0].platform}")
  cfg = tts.TwoTimeScaleConfig(variant="2ts", d_id=args.dim, num_offered=args.p, t_star=args.t_star,
                               k=args.k, epochs_stage1=1, epochs_stage2=1, batch_stage1=args.batch_stage1,
                               batch_inactive=args.batch_stage2, batch_active=args.batch_stage2,
                               lr_stage1=args.lr_stage1)
  t = time.perf_counter()
  data = tts.batches.prepare_sharded_training_data(log, cfg.t_star, cfg.k, max_rows=args.max_rows)
  prep_s = time.perf_counter() - t
  lengths = np.concatenate([data.in_mask.sum(1), data.act_mask.sum(1)])
  padded = sum(rows.shape[0] * width for mask, b in ((data.in_mask, cfg.batch_inactive),
                                                     (data.act_mask, cfg.batch_active))
               for rows, width in tts.batches.length_buckets(mask.sum(1), b, mask.shape[1]))
  print(f"# stage-2 groups: {data.in_user.shape[0]:,} inactive users (<= t* = {cfg.t_star}), "
        f"{data.act_user.shape[0]:,} active (last K = {cfg.k}); {int(lengths.sum()):,} real steps, "
        f"~{padded:,} padded; built in {prep_s:.0f} s (the run below builds them again)")
  del data
  t = time.perf_counter()
  res = tts.train(cfg, log, stage1_optimizer=args.optimizer, progress=False)
  total = time.perf_counter() - t
  s1, s2 = (next(h for h in res.history if h["stage"] == s) for s in ("stage1", "stage2"))
  print(f"# d {args.dim}, p {args.p}, stage-1 batch {args.batch_stage1} ({args.optimizer}, lr "
        f"{args.lr_stage1}), stage-2 batches {args.batch_stage2}; loss at init ~log(1 + p) = "
        f"{math.log(1 + args.p):.3f}")
  print("| part | seconds | rate | mean loss |")
  print("| --- | --- | --- | --- |")
  print(f"| stage-2 groups from the shards (per block of users) + init | {total - s1['epoch_time'] - s2['epoch_time']:,.0f} "
        f"| | |")
  print(f"| stage 1, one epoch (streamed) | {s1['epoch_time']:,.0f} | "
        f"{log.num_rows / s1['epoch_time']:,.0f} interactions/s | {s1['loss']:.3f} |")
  print(f"| stage 2, one epoch | {s2['epoch_time']:,.0f} | {padded / s2['epoch_time']:,.0f} padded steps/s "
        f"| {s2['loss']:.3f} |")
  print(f"| both stages (whole `train` call) | {total:,.0f} ({total / 60:.1f} min) | | |")
  print(f"peak RSS (VmHWM): {peak_rss_mib():,.0f} MiB")


if __name__ == "__main__":
  main()
