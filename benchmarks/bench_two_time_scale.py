"""Throughput of 2TS training on the shared core, streaming stage 1 at scale, and 2TS vs GRU4Rec epochs.

Three measurements, all through `jaxrec.train.loop.train` with the learners of
`jaxrec.methods.two_time_scale.stage_learner` (`jaxrec.train.learner.gradient_learner`, one jitted, donated
update per stage), CPU only:

1. Stage-1 (CCF pairs) and stage-2 (two GRU cells over the inactive users' full sequences, in
   length buckets padded to powers of two, and the active users' last K; one group per step) throughput
   in interactions/s on the synthetic preset (`medium`: 10k users, ~0.4M
   interactions), one epoch each after a warm-up epoch (compilation excluded).
2. Stage 1 STREAMING the `large` preset (1M users, 100k items, ~100M interactions):
   `synthetic.generate_chunks("large")` yields 2k-user chunks in one index space; the loop consumes
   shuffled static-shape pair batches chunk by chunk, so no more than one chunk of rows is held. Runs
   for `--large_chunks` chunks or `--large_seconds`, whichever comes first, prints interactions/s (chunk
   generation time excluded and reported apart) and peak RSS (VmHWM), and EXTRAPOLATES the full-epoch
   time from the measured rate.
3. The paper's efficiency claim (Section 5, Fig. 2: "the training time of 2TS for each epoch is much
   smaller than the baselines") on the same data in one run: one 2TS epoch (stage 1 + stage 2) vs one
   epoch of GRU4Rec over FULL user sequences (every user's whole sequence, padded and masked, the
   next-item offer-set softmax of 2TS at every position, same dim and same p, `flax.linen.GRUCell` via
   `two_time_scale.rollout`). GRU4Rec batches are users sorted by length with the length padded to the
   next power of two (bucketing in its favour). Target: 2TS epoch <= 1/3 of the GRU4Rec epoch.

Wall and process CPU times are printed (the machine may be shared and noisy: compare the ratios, which
are measured in the same run, alternating the two methods over `--repeats`).

Run:  python -m benchmarks.bench_two_time_scale [--preset=medium] [--large_chunks=N] [--large_seconds=180]
      [--dim=64] [--p=20] [--t_star=100] [--k=20] [--repeats=2] [--skip_large]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import peak_rss_mib
from jaxrec.data import synthetic
from jaxrec.data.log import InteractionLog
from jaxrec.methods import two_time_scale as tts
from jaxrec.train import learner as learner_lib
from jaxrec.train import loop as loop_lib
from jaxrec.train import state as state_lib


def _loop_config(steps: int) -> loop_lib.LoopConfig:
  return loop_lib.LoopConfig(num_epochs=1, log_every=max(steps, 1), eval_at_epoch_end=False, progress=False,
                             steps_per_epoch=steps)


def _timed_epoch(learner, make_state, batches_fn, rng):
  """Wall and CPU seconds of one `loop.train` epoch (the state is built before the clocks start)."""
  state = make_state()
  jax.block_until_ready(state)
  t0, c0 = time.perf_counter(), time.process_time()
  final, history = loop_lib.train(_loop_config(0), learner, state, batches_fn, rng=rng)
  jax.block_until_ready(final)
  return time.perf_counter() - t0, time.process_time() - c0, history


# -- GRU4Rec over full user sequences ----------------------------------------------------------------


def full_sequence_batches(log: InteractionLog, batch_users: int, min_len: int = 8):
  """Users sorted by length, `batch_users` per batch, padded to the next power of two (host numpy)."""
  log = log.sorted_by_user()
  counts = np.bincount(log.user, minlength=log.num_users)
  start = np.concatenate([[0], np.cumsum(counts)[:-1]])
  users = np.flatnonzero(counts)
  users = users[np.argsort(counts[users], kind="stable")]
  batches = []
  for lo in range(0, users.shape[0], batch_users):
    rows = users[lo:lo + batch_users]
    length = max(min_len, 1 << int(np.ceil(np.log2(counts[rows].max()))))
    items = np.zeros((batch_users, length), np.int32)
    mask = np.zeros((batch_users, length), bool)
    for r, u in enumerate(rows):  # host-side, once, outside every timing
      items[r, :counts[u]] = log.item[start[u]:start[u] + counts[u]]
      mask[r, :counts[u]] = True
    batches.append({"items": items, "mask": mask})
  return batches


def gru4rec_init(rng, num_items: int, dim: int, init_scale: float = 0.1):
  k1, k2, k3 = jax.random.split(rng, 3)
  zeros = jnp.zeros((1, dim))
  return {"item": init_scale * jax.random.normal(k1, (num_items, dim)),
          "cell": nn.GRUCell(features=dim).init(k2, zeros, zeros)["params"],
          "h0": init_scale * jax.random.normal(k3, (dim,))}


def gru4rec_loss_fn(cfg: tts.TwoTimeScaleConfig):
  """GRU4Rec over full sequences: h_0 = learned, the state before i_t scores i_t against its offer set."""

  def loss_fn(params, batch, rng):
    items, mask = jnp.asarray(batch["items"]), jnp.asarray(batch["mask"])
    xs = jnp.take(params["item"], items, axis=0)
    h0 = jnp.broadcast_to(params["h0"], (items.shape[0], params["h0"].shape[0]))
    cell = lambda h, x: nn.GRUCell(features=h.shape[-1]).apply({"params": params["cell"]}, h, x)[0]
    qs, _, _, _ = tts.rollout(cfg, params, cell, h0, jnp.zeros_like(h0), xs, mask)
    negs = tts.sample_offer_negatives(rng, items, params["item"].shape[0], cfg.num_offered)
    scores = tts.offer_set_scores(qs, xs, jnp.take(params["item"], negs, axis=0))
    return tts.offer_set_loss(scores, mask), {}

  return loss_fn


# -- the three measurements --------------------------------------------------------------------------


def bench_medium(args):
  log = synthetic.generate(args.preset)
  log = InteractionLog.from_arrays(log.user, log.item, log.timestamp, num_users=log.num_users,
                                   num_items=log.num_items)  # no item features: same d as GRU4Rec
  cfg = tts.TwoTimeScaleConfig(d_id=args.dim, t_star=args.t_star, k=args.k, num_offered=args.p,
                               batch_stage1=args.batch_stage1, batch_inactive=args.batch_users,
                               batch_active=args.batch_users, lr_stage1=1e-3, lr_stage2=1e-3)
  data = tts.prepare_training_data(log, cfg.t_star, cfg.k)
  n = len(log)
  print(f"== {args.preset}: {log.num_users} users, {log.num_items} items, {n} interactions; d={args.dim}, "
        f"p={args.p}, t*={args.t_star}, K={args.k}; active users {int(data.active.sum())} holding "
        f"{int(data.counts[data.active].sum())} interactions, inactive sequences {data.in_user.shape[0]}")
  params = tts.init_params(cfg, jax.random.key(0), data.num_users, data.num_items)
  step1, step2 = tts.stage_learner(cfg, params, "stage1"), tts.stage_learner(cfg, params, "stage2")
  mk1 = lambda: step1.init(jax.tree.map(jnp.copy, params), jax.random.key(0))
  mk2 = lambda: step2.init(jax.tree.map(jnp.copy, params), jax.random.key(0))
  s1 = lambda e: tts.stage_batches(cfg, data, "stage1", e)
  s2 = lambda e: tts.stage_batches(cfg, data, "stage2", e)
  steps1, steps2 = tts.steps_per_epoch(cfg, data, "stage1"), tts.steps_per_epoch(cfg, data, "stage2")
  seen1 = steps1 * cfg.batch_stage1
  groups2 = [g for b in s2(0) for k, g in b.items() if k in ("inactive", "active")]
  seen2 = int(sum(g["mask"].sum() for g in groups2))
  pad2 = int(sum(g["mask"].size for g in groups2))
  shapes2 = sorted({g["items"].shape for g in groups2})

  gcfg = tts.TwoTimeScaleConfig(d_id=args.dim, num_offered=args.p)
  gbatches = full_sequence_batches(log, args.batch_users)
  gparams = gru4rec_init(jax.random.key(1), log.num_items, args.dim)
  gtx = state_lib.make_optimizer("adam", 1e-3)
  gstep = learner_lib.gradient_learner(gru4rec_loss_fn(gcfg), gtx)
  mkg = lambda: gstep.init(jax.tree.map(jnp.copy, gparams), jax.random.key(0))
  order = lambda e: (gbatches[i] for i in np.random.default_rng([0, e]).permutation(len(gbatches)))
  gpad = sum(b["mask"].size for b in gbatches)
  print(f"GRU4Rec full sequences: {len(gbatches)} batches of {args.batch_users} users, lengths "
        f"{sorted({b['items'].shape[1] for b in gbatches})}, {gpad} padded positions for {n} interactions")

  rng = jax.random.key(0)
  t = time.perf_counter()
  for step, mk, fn in ((step1, mk1, s1), (step2, mk2, s2), (gstep, mkg, order)):
    _timed_epoch(step, mk, fn, rng)  # warm-up: compiles every batch shape
  print(f"warm-up (compilation + one epoch of each): {time.perf_counter() - t:.1f} s")
  runs = {"stage1": [], "stage2": [], "gru4rec": []}
  for r in range(args.repeats):  # alternate the methods so that load changes hit both
    runs["stage1"].append(_timed_epoch(step1, mk1, s1, rng)[:2])
    runs["stage2"].append(_timed_epoch(step2, mk2, s2, rng)[:2])
    runs["gru4rec"].append(_timed_epoch(gstep, mkg, order, rng)[:2])
    tts_wall = runs["stage1"][-1][0] + runs["stage2"][-1][0]
    tts_cpu = runs["stage1"][-1][1] + runs["stage2"][-1][1]
    print(f"repeat {r}: 2TS epoch {tts_wall:.2f} s wall / {tts_cpu:.2f} s CPU; GRU4Rec epoch "
          f"{runs['gru4rec'][-1][0]:.2f} s wall / {runs['gru4rec'][-1][1]:.2f} s CPU; ratio "
          f"{tts_wall / runs['gru4rec'][-1][0]:.3f} wall, {tts_cpu / runs['gru4rec'][-1][1]:.3f} CPU")
  med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in runs.items()}
  print(f"(1) stage 1: {steps1} steps x {cfg.batch_stage1} pairs, {med['stage1'][0]:.2f} s wall "
        f"({med['stage1'][1]:.2f} s CPU): {seen1 / med['stage1'][0]:,.0f} interactions/s")
  print(f"    stage 2: {steps2} steps, {seen2} interactions ({pad2} padded positions, batch shapes "
        f"{shapes2}), "
        f"{med['stage2'][0]:.2f} s wall ({med['stage2'][1]:.2f} s CPU): {seen2 / med['stage2'][0]:,.0f} "
        f"interactions/s")
  tts_w, tts_c = med["stage1"][0] + med["stage2"][0], med["stage1"][1] + med["stage2"][1]
  print(f"(3) one 2TS epoch (stage 1 + stage 2): {tts_w:.2f} s wall / {tts_c:.2f} s CPU; one GRU4Rec "
        f"full-sequence epoch: {med['gru4rec'][0]:.2f} s wall / {med['gru4rec'][1]:.2f} s CPU "
        f"({n / med['gru4rec'][0]:,.0f} interactions/s)")
  print(f"    ratio 2TS / GRU4Rec (medians over {args.repeats} alternating repeats): "
        f"{tts_w / med['gru4rec'][0]:.3f} wall, {tts_c / med['gru4rec'][1]:.3f} CPU (target <= 0.333)")


def bench_large(args):
  config = synthetic.get_config("large")
  cfg = tts.TwoTimeScaleConfig(d_id=args.dim, num_offered=args.p, batch_stage1=args.large_batch)
  params = tts.init_params(cfg, jax.random.key(0), config.num_users, config.num_items)
  params = {k: params[k] for k in tts.STAGE1_KEYS if k in params}  # stage 1 needs no cells
  learner = tts.stage_learner(cfg, params, "stage1")
  step, state = learner_lib.jit_update(learner), learner.init(params, jax.random.key(0))
  del params
  total = synthetic.num_chunks(config)
  limit = min(args.large_chunks or total, total)
  stats = {"chunks": 0, "rows": 0, "steps": 0, "gen": 0.0, "prep": 0.0}
  deadline = [None]

  def batches_fn(epoch):
    g0 = time.perf_counter()
    for chunk_log in synthetic.generate_chunks("large", chunks=range(limit)):
      g1 = time.perf_counter()
      stats["gen"] += g1 - g0
      rng = np.random.default_rng([cfg.seed, epoch, stats["chunks"]])
      users, items = chunk_log.user.astype(np.int32), chunk_log.item.astype(np.int32)
      n = users.shape[0]
      steps = -(-n // cfg.batch_stage1)
      order = np.concatenate([rng.permutation(n), rng.permutation(n)])[:steps * cfg.batch_stage1]
      stats["prep"] += time.perf_counter() - g1
      for idx in order.reshape(steps, cfg.batch_stage1):
        yield {"user": users[idx], "item": items[idx]}
        stats["steps"] += 1
      stats["chunks"] += 1
      stats["rows"] += n
      del chunk_log, users, items, order
      if time.perf_counter() > deadline[0]:
        return
      g0 = time.perf_counter()

  print(f"== large, stage 1 streamed: {config.num_users} users, {config.num_items} items, ~"
        f"{synthetic.expected_interactions(config):,.0f} interactions in {total} chunks of "
        f"{config.chunk_users} users; d={args.dim}, p={args.p}, batch {cfg.batch_stage1}; user table + "
        f"Adam moments {3 * config.num_users * args.dim * 4 / 2**20:,.0f} MiB")
  warm = {"user": np.zeros(cfg.batch_stage1, np.int32), "item": np.zeros(cfg.batch_stage1, np.int32)}
  state, _ = step(state, warm, jax.random.key(0))  # compile outside the timing
  jax.block_until_ready(state)
  lcfg = loop_lib.LoopConfig(num_epochs=1, log_every=100, eval_at_epoch_end=False, progress=False)
  rss0 = peak_rss_mib()
  t0, c0 = time.perf_counter(), time.process_time()
  deadline[0] = t0 + args.large_seconds
  final, _ = loop_lib.train(lcfg, learner, state, batches_fn, rng=jax.random.key(1))
  jax.block_until_ready(final)
  wall, cpu = time.perf_counter() - t0, time.process_time() - c0
  train_s = wall - stats["gen"] - stats["prep"]
  rate = stats["rows"] / train_s
  full = synthetic.expected_interactions(config)
  print(f"(2) {stats['chunks']} chunks, {stats['rows']:,} interactions, {stats['steps']} steps in "
        f"{wall:.1f} s wall / {cpu:.1f} s CPU (chunk generation {stats['gen']:.1f} s, batching "
        f"{stats['prep']:.1f} s, excluded below)")
  ms = train_s / max(stats["steps"], 1) * 1e3
  print(f"    stage-1 training: {rate:,.0f} interactions/s ({ms:.1f} ms/step); peak RSS (VmHWM) "
        f"{peak_rss_mib():,.0f} MiB (after model init + compile: {rss0:,.0f} MiB)")
  print(f"    EXTRAPOLATION (not measured): one full stage-1 epoch over {full:,.0f} interactions ~ "
        f"{full / rate / 3600:.2f} h of training at this rate (+ {stats['gen'] / max(stats['chunks'], 1):.1f}"
        f" s of generation per chunk x {total} chunks if generated on the fly)")


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--preset", default="medium")
  ap.add_argument("--dim", type=int, default=64)
  ap.add_argument("--p", type=int, default=20, help="sampled items per offer set")
  ap.add_argument("--t_star", type=int, default=100)
  ap.add_argument("--k", type=int, default=20)
  ap.add_argument("--batch_stage1", type=int, default=256)
  ap.add_argument("--batch_users", type=int, default=64, help="sequences per stage-2 / GRU4Rec batch")
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--large_chunks", type=int, default=0, help="chunks of `large` to stream (0: all)")
  ap.add_argument("--large_seconds", type=float, default=180.0, help="stop streaming after this")
  ap.add_argument("--large_batch", type=int, default=8192)
  ap.add_argument("--skip_large", action="store_true")
  ap.add_argument("--skip_medium", action="store_true")
  args = ap.parse_args(argv)
  print("command: python -m benchmarks.bench_two_time_scale " + " ".join(sys.argv[1:]))
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}")
  if not args.skip_medium:
    bench_medium(args)
  if not args.skip_large:
    bench_large(args)


if __name__ == "__main__":
  main()
