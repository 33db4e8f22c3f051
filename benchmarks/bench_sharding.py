"""What sharding the tables buys: per-device state, communication and temporaries of the compiled step.

MF-BPR (registry `mf-bpr`, 4 negatives per row) with `--users` users and `--items` items, batch
`--batch`, uniform random ids, through `sharding.shard_learner` on meshes of `--devices` devices:
`1x1` (one device: the reference), `1xN` (tables split by rows over N devices), `N/2x2` and `Nx1` (data
parallel: tables replicated). Three updates: dense Adam (`gradient_learner` + `optax.adam`), lazy Adam
and row-wise Adagrad (`sparse.row_sparse_learner`).

For each cell it reports, from the compiled step (`jit(...).lower(...).compile()`):

* `state MB/dev`: bytes of the learner state one device holds (its addressable shards);
* `temp MB`: XLA's temporary buffer size (`memory_analysis().temp_size_in_bytes`);
* collectives: the all-reduce / all-gather / all-to-all / collective-permute / reduce-scatter ops of the
  step and the bytes they move (operand sizes from the HLO text), the largest one named;
* `ms/step`: best of `--windows` windows of `--steps` steps. On a CPU with fake devices
  (`--xla_force_host_platform_device_count`) every "device" shares the same cores, so this is NOT a
  speed-up measurement; it shows only that the sharded step runs and what it costs on one host.

Run:  python -m benchmarks.bench_sharding [--devices=4] [--users=1000000] [--items=100000] [--dim=64]
      [--batch=1024] [--steps=5] [--windows=3]
(sets XLA_FLAGS=--xla_force_host_platform_device_count=<devices> itself when no accelerator is used).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--devices", type=int, default=4)
  p.add_argument("--users", type=int, default=1_000_000)
  p.add_argument("--items", type=int, default=100_000)
  p.add_argument("--dim", type=int, default=64)
  p.add_argument("--batch", type=int, default=1024)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--windows", type=int, default=3)
  p.add_argument("--lr", type=float, default=0.01)
  args = p.parse_args(argv)
  for name in ("devices", "users", "items", "dim", "batch", "steps", "windows"):
    if getattr(args, name) < 1:
      p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
  if args.devices % 2 and args.devices > 1:
    p.error(f"--devices must be 1 or even, got {args.devices}")
  return args


_COLLECTIVE = re.compile(r"= (.*?) (all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter)"
                         r"(?:-start)?\(")
_SHAPE = re.compile(r"(f32|s32|u32|bf16|f16|pred|s8|u8)\[([\d,]*)\]")
_BYTES = {"f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "pred": 1, "s8": 1, "u8": 1}


def _collectives(hlo: str):
  ops = []
  for result, op in _COLLECTIVE.findall(hlo):
    size = 0
    for dtype, dims in _SHAPE.findall(result):
      n = 1
      for d in filter(None, dims.split(",")):
        n *= int(d)
      size += n * _BYTES[dtype]
    ops.append((op, size))
  return ops


def main(argv=None):
  args = _parse(sys.argv[1:] if argv is None else argv)
  flag = f"--xla_force_host_platform_device_count={args.devices}"
  if flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
  import jax
  import numpy as np
  import optax

  from jaxrec.models import mf, registry
  from jaxrec.train import learner as learner_lib
  from jaxrec.train import sharding, sparse

  n = len(jax.devices())
  if n < args.devices:
    sys.exit(f"--devices={args.devices}, but JAX sees {n} devices")
  spec = registry.get("mf-bpr")
  module = spec.make(args.users, args.items, dim=args.dim)
  params = spec.init(jax.random.key(0), module, registry.sample_batch("user"))
  lookups = sparse.RowLookups(**mf.row_lookups(module))
  tables = tuple(p for p, _ in lookups.tables)
  rng = np.random.default_rng(0)
  batches = [{"user": rng.integers(0, args.users, args.batch).astype(np.int32),
              "positive": rng.integers(0, args.items, args.batch).astype(np.int32),
              "negatives": rng.integers(0, args.items, (args.batch, 4)).astype(np.int32),
              "mask": np.ones(args.batch, bool)} for _ in range(args.steps)]
  learners = {
      "dense-adam": learner_lib.gradient_learner(spec.loss_fn(module), optax.adam(args.lr)),
      "lazy-adam": sparse.row_sparse_learner(mf.compact_loss_fn(module, "bpr"), lookups,
                                             sparse.lazy_adam(args.lr)),
      "rowwise-adagrad": sparse.row_sparse_learner(mf.compact_loss_fn(module, "bpr"), lookups,
                                                   sparse.rowwise_adagrad(args.lr)),
  }
  d = args.devices
  meshes = [(1, 1)] + ([(1, d), (d // 2, 2), (d, 1)] if d > 1 else [])
  print(f"# mf-bpr users={args.users} items={args.items} dim={args.dim} batch={args.batch} "
        f"devices={d} ({jax.devices()[0].platform}); jax {jax.__version__}")
  print("| update | mesh (data x model) | state MB/dev | temp MB | collectives | MB moved/step | largest | "
        "ms/step |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- |")
  for name, learner in learners.items():
    for data, model in meshes:
      plan = sharding.ShardingPlan(sharding.make_mesh(data, model, devices=jax.devices()[:data * model]),
                                   tables)
      sharded = sharding.shard_learner(learner, plan, params)
      state = sharded.init(params, jax.random.key(0))
      placed = [plan.put_batch(b) for b in batches]
      step = jax.jit(sharded.update, donate_argnums=0)
      compiled = step.lower(state, placed[0], jax.random.key(0)).compile()
      ops = _collectives(compiled.as_text())
      temp = compiled.memory_analysis().temp_size_in_bytes
      dev0 = jax.devices()[0]
      per_dev = sum(s.data.nbytes for x in jax.tree.leaves(state) for s in x.addressable_shards
                    if s.device == dev0)
      state, _ = compiled(state, placed[0], jax.random.key(0))
      jax.block_until_ready(state)
      best = float("inf")
      for _ in range(args.windows):
        t = time.perf_counter()
        for i, b in enumerate(placed):
          state, _ = compiled(state, b, jax.random.key(i))
        jax.block_until_ready(state)
        best = min(best, (time.perf_counter() - t) / len(placed))
      largest = max(ops, key=lambda o: o[1]) if ops else None
      print(f"| {name} | {data}x{model} | {per_dev / 1e6:.1f} | {temp / 1e6:.1f} | {len(ops)} | "
            f"{sum(s for _, s in ops) / 1e6:.2f} | "
            f"{f'{largest[0]} {largest[1] / 1e6:.2f} MB' if largest else '-'} | {best * 1e3:.1f} |",
            flush=True)
      del state, compiled


if __name__ == "__main__":
  main()
