"""Training-step throughput and peak memory of registry models, and full-ranking evaluation throughput.

Run: ``python -m benchmarks.bench_models [--steps=50 --repeats=3 --eval_repeats=3]``

Each benchmark runs in a fresh Python process (``--only=NAME``, spawned by the parent) so that its peak
memory (``VmHWM`` from ``/proc/self/status``) is its own; the figure reported is the peak minus the
baseline taken after the imports and the JAX backend start-up.

* ``mf-bpr``, ``gru4rec``, ``sasrec``: ``jit_update(gradient_learner(spec.loss_fn(module), adam))``
  on pre-built random device batches in the registry's batch format (see
  :mod:`jaxrec.models.registry`): BPR-MF with 10k users x 5k items x dim 64, batch 1024, one negative;
  GRU4Rec and SASRec with dim 64, a catalog of 5k items, histories of length 50 (right-aligned, random
  lengths 1..50), batch 256, 1 positive + 100 sampled negatives (sampled softmax, dropout on;
  ``sasrec-nodrop`` is the SASRec step with ``rng=None``, i.e. dropout off). After a
  warm-up (compilation + 2 steps), ``--repeats`` runs of ``--steps`` steps each, each ending with
  ``block_until_ready``; steps/s from the median and the best run, plus process CPU time
  (``time.process_time``, all threads), which depends less on other jobs on a shared machine.
* ``eval-mf``: ``jaxrec.eval.protocols.evaluate(score_fn, params, queries, FullRanking(2048), ...)`` with the
  registry's ``mf-bpr`` score function (10k users, 10k items, dim 64, 20 known positives excluded per
  user, batch 1024) against the bare blocked score-matrix product on the same embeddings, both timed
  with the helpers of :mod:`benchmarks.bench_full_ranking` (interleaved, best of ``--eval_repeats``).

Figures are printed with the command that produced them; compare ratios taken within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import bench_full_ranking
from benchmarks.common import peak_rss_mib
from jaxrec.data.log import InteractionLog
from jaxrec.eval import protocols
from jaxrec.eval.queries import Queries
from jaxrec.models import registry
from jaxrec.train import state as state_lib
from jaxrec.train import learner as learner_lib

# name -> (registry name, hparams, users, items, batch, negatives, history length or 0, dropout on).
TRAIN_CONFIGS = {
    "mf-bpr": ("mf-bpr", {"dim": 64}, 10_000, 5_000, 1024, 1, 0, False),
    "gru4rec": ("gru4rec", {"dim": 64, "hidden": 64}, 10_000, 5_000, 256, 100, 50, True),
    "sasrec": ("sasrec", {"dim": 64, "max_len": 50}, 10_000, 5_000, 256, 100, 50, True),
    # The same step with rng=None (dropout off): how much of a step is random-bit generation.
    "sasrec-nodrop": ("sasrec", {"dim": 64, "max_len": 50}, 10_000, 5_000, 256, 100, 50, False),
}
EVAL_USERS, EVAL_ITEMS, EVAL_DIM, EVAL_EXCLUSIONS, EVAL_BATCH, EVAL_CHUNK = 10_000, 10_000, 64, 20, 1024, 2048
BENCHMARKS = (*TRAIN_CONFIGS, "eval-mf")


def _baseline() -> int:
  """VmHWM after the imports and the JAX backend start-up."""
  jax.block_until_ready(jnp.zeros((1,)))
  return int(peak_rss_mib() * 2**20)


def random_batch(rng: np.random.Generator, family: str, num_users: int, num_items: int, batch: int,
                 negatives: int, history_len: int) -> dict:
  """A random training batch of ``family`` in the registry's format (host numpy)."""
  b = {"user": rng.integers(0, num_users, batch, dtype=np.int32),
       "positive": rng.integers(0, num_items, batch, dtype=np.int32),
       "negatives": rng.integers(0, num_items, (batch, negatives), dtype=np.int32),
       "mask": np.ones(batch, bool)}
  if family == "sequence":
    lengths = rng.integers(1, history_len + 1, batch)
    mask = np.arange(history_len)[None, :] >= (history_len - lengths)[:, None]  # Right-aligned.
    b["history"] = np.where(mask, rng.integers(0, num_items, (batch, history_len)), 0).astype(np.int32)
    b["history_mask"] = mask
  return b


def run_train(name: str, steps: int, repeats: int) -> dict:
  """Times ``steps`` jitted train steps of model ``name``, ``repeats`` times (in this process)."""
  base = _baseline()
  model, hparams, users, items, batch, negs, hlen, dropout = TRAIN_CONFIGS[name]
  spec = registry.get(model)
  module = spec.make(users, items, **hparams)
  rng = jax.random.key(0)
  params = spec.init(rng, module, registry.sample_batch(spec.family, 2, negs, max(hlen, 1)))
  tx = state_lib.make_optimizer("adam", 1e-3)
  step = learner_lib.jit_update(learner_lib.gradient_learner(spec.loss_fn(module), tx))
  host_rng = np.random.default_rng(0)
  batches = [jax.device_put(random_batch(host_rng, spec.family, users, items, batch, negs, hlen))
             for _ in range(steps)]
  jax.block_until_ready(batches)

  def run(num_steps):
    state = state_lib.create(params, tx)
    jax.block_until_ready(state)
    t0, c0 = time.perf_counter(), time.process_time()
    metrics = None
    for i in range(num_steps):
      key = jax.random.fold_in(rng, i) if dropout else None
      state, metrics = step(state, batches[i % len(batches)], key)
    jax.block_until_ready((state, metrics))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return wall, cpu, bool(metrics["is_finite"])

  t0 = time.perf_counter()
  run(3)  # Warm-up: compilation + 2 steps.
  compile_s = time.perf_counter() - t0
  walls, cpus, finite = [], [], True
  for _ in range(repeats):
    w, c, ok = run(steps)
    walls.append(w)
    cpus.append(c)
    finite &= ok
  num_params = sum(x.size for x in jax.tree.leaves(params))
  return {"name": name, "batch": batch, "negatives": negs, "history_len": hlen, "params": int(num_params),
          "steps": steps, "repeats": repeats, "median_wall": statistics.median(walls),
          "best_wall": min(walls),
          "median_cpu": statistics.median(cpus), "warmup_s": compile_s, "finite": finite,
          "peak_mib": (int(peak_rss_mib() * 2**20) - base) / 2**20}


def eval_queries(rng: np.random.Generator, users: int, items: int, k: int) -> Queries:
  """One test query per user and ``k`` distinct known positives (never the test item) per user."""
  stride = rng.integers(1, items // (k + 1), users)[:, None]
  cols = (rng.integers(0, items, users)[:, None] + np.arange(k + 1)[None, :] * stride) % items
  train = InteractionLog.from_arrays(np.repeat(np.arange(users), k), cols[:, :k].ravel(),
                                     num_users=users, num_items=items)
  test = InteractionLog.from_arrays(np.arange(users), cols[:, k], num_users=users, num_items=items)
  return Queries.from_log(test, [train])


def run_eval(repeats: int) -> dict:
  """``evaluate(FullRanking)`` of the registry MF against the bare blocked product (in this process)."""
  base = _baseline()
  spec = registry.get("mf-bpr")
  module = spec.make(EVAL_USERS, EVAL_ITEMS, dim=EVAL_DIM)
  params = spec.init(jax.random.key(0), module, registry.sample_batch("user"))
  score_fn = spec.score_fn(module)
  queries = eval_queries(np.random.default_rng(0), EVAL_USERS, EVAL_ITEMS, EVAL_EXCLUSIONS)
  proto = protocols.FullRanking(EVAL_CHUNK)
  ue = params["params"]["user_emb"]["embedding"]
  ie = params["params"]["item_emb"]["embedding"]
  result = {}

  def evaluate():
    result["r"] = protocols.evaluate(score_fn, params, queries, proto, EVAL_ITEMS, batch_size=EVAL_BATCH)

  def bare():  # Batch by batch, as evaluate runs them.
    for s in range(0, EVAL_USERS, EVAL_BATCH):
      idx = np.minimum(np.arange(s, s + EVAL_BATCH), EVAL_USERS - 1).astype(np.int32)
      jax.block_until_ready(bench_full_ranking._bare_blocked(ue, idx, ie, chunk=EVAL_CHUNK))  # pylint: disable=protected-access

  evaluate()
  peak_eval = int(peak_rss_mib() * 2**20) - base  # evaluate alone (the bare product has not run yet).
  wall, cpu = bench_full_ranking._time_interleaved([evaluate, bare], repeats)  # pylint: disable=protected-access
  return {"name": "eval-mf", "users": EVAL_USERS, "items": EVAL_ITEMS, "dim": EVAL_DIM,
          "exclusions": EVAL_EXCLUSIONS, "batch": EVAL_BATCH, "chunk": EVAL_CHUNK, "repeats": repeats,
          "protocol": result["r"].protocol_desc, "ndcg10": float(result["r"].summary["NDCG@10"]),
          "eval_wall": wall[0], "eval_cpu": cpu[0], "bare_wall": wall[1], "bare_cpu": cpu[1],
          "peak_mib": peak_eval / 2**20}


def _child(name: str, args) -> dict:
  cmd = [sys.executable, "-m", "benchmarks.bench_models", f"--only={name}", f"--steps={args.steps}",
         f"--repeats={args.repeats}", f"--eval_repeats={args.eval_repeats}"]
  out = subprocess.run(cmd, check=False, capture_output=True, text=True)
  if out.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--steps", type=int, default=50, help="timed train steps per repeat")
  p.add_argument("--repeats", type=int, default=3, help="timed runs of --steps steps per model")
  p.add_argument("--eval_repeats", type=int, default=3, help="interleaved repeats of the evaluation")
  p.add_argument("--only", choices=BENCHMARKS, help="run one benchmark in this process, print JSON")
  args = p.parse_args(argv)
  if args.only:
    res = run_eval(args.eval_repeats) if args.only == "eval-mf" else run_train(args.only, args.steps,
                                                                                 args.repeats)
    print(json.dumps(res))
    return

  argv = sys.argv[1:] if argv is None else argv
  print("command: python -m benchmarks.bench_models " + " ".join(argv))
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, device {jax.devices()[0].device_kind}, "
        f"{os.cpu_count()} CPUs; load average at start {os.getloadavg()[0]:.2f}; each benchmark in a fresh "
        f"process, peak = VmHWM - post-import baseline")
  results = {name: _child(name, args) for name in BENCHMARKS}
  mf_cpu = results["mf-bpr"]["median_cpu"] / results["mf-bpr"]["steps"]
  for name in TRAIN_CONFIGS:
    r = results[name]
    rate, best = r["steps"] / r["median_wall"], r["steps"] / r["best_wall"]
    cpu_rate = r["steps"] / r["median_cpu"]
    hist = f", L={r['history_len']}" if r["history_len"] else ""
    print(f"train {name:13s} batch={r['batch']} negatives={r['negatives']}{hist} params={r['params']:,}: "
          f"{rate:7.1f} steps/s median (best {best:7.1f}; {rate * r['batch']:9,.0f} examples/s), "
          f"{cpu_rate:7.1f} steps per CPU-second (CPU time/step {1 / cpu_rate / mf_cpu:6.1f}x mf-bpr); "
          f"warm-up {r['warmup_s']:.1f} s; peak +{r['peak_mib']:.0f} MiB; finite={r['finite']}")
  r = results["eval-mf"]
  print(f"eval-mf {r['protocol']}, dim={r['dim']} batch={r['batch']} chunk={r['chunk']}, best of "
        f"{r['repeats']} interleaved: evaluate {r['users'] / r['eval_wall']:8,.0f} users/s wall "
        f"({r['users'] / r['eval_cpu']:8,.0f} per CPU-s); bare blocked product "
        f"{r['users'] / r['bare_wall']:8,.0f} users/s wall ({r['users'] / r['bare_cpu']:8,.0f} per CPU-s); "
        f"ratio evaluate/bare: wall "
        f"{r['eval_wall'] / r['bare_wall']:.2f}x, cpu {r['eval_cpu'] / r['bare_cpu']:.2f}x (target <= 2x); "
        f"NDCG@10={r['ndcg10']:.4f}; peak of evaluate +{r['peak_mib']:.0f} MiB")
  print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  main()
