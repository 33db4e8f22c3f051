"""MeLON's online step (all three steps of Algorithm 1) against Default (one Adam step), per batch.

Run: ``python -m benchmarks.bench_melon [--models mf-bpr,ncf --sizes 2000x940,20000x9400,200000x94000
--batch 256 --neighbours 10 --repeats 20]``

For each model and (users x items) size: random recommender parameters with the authors' sizes (dim 64),
a history filled with random interactions, random mini-batches of ``batch`` interactions; times the
jitted, donated MeLON block step (``order`` 2, the paper's meta-model) and the shared fine-tune step
after a warm-up call (median over ``repeats`` with ``block_until_ready``), and the process's peak RSS.
The step's cost should not grow with the number of users and items (the update is selective; only the
scatter into the tables touches them, in place). The issue's targets (2 quiet cores): MeLON <= 20 ms and
Default <= 3 ms per batch of 256 for BPR, NCF within 4x of BPR, peak memory < 1 GiB.

``--breakdown``: for the first model and size, the one-batch online step in three configurations, each
timed (median, interleaved) and with XLA's own count of its floating-point operations and bytes accessed
(``compiled.cost_analysis()``, independent of the machine's load): Algorithm 1 line 11 alone (the update
with the current meta-model, no meta-step: ``StepConfig.meta_update=False``), the first-order meta-step
(``order=1``) and the exact one (``order=2``), against Default.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.data.log import InteractionLog
from jaxrec.methods import melon
from jaxrec.methods.melon import history as history_lib
from jaxrec.methods.melon import step as step_lib
from jaxrec.models import registry
from jaxrec.stream import blocks as blocks_lib
from jaxrec.stream import strategies as strategies_lib
from jaxrec.train import learner as learner_lib

HPARAMS = {"mf-bpr": {"dim": 64, "use_bias": True, "init_scale": 0.01},
           "ncf": {"mf_dim": 64, "mlp_layers": (128, 64, 64, 64, 64), "init_scale": 0.01}}


def _median_ms(fn, state, batches, repeats):
  state, _ = fn(state, batches[0], jax.random.PRNGKey(0))
  jax.block_until_ready(state)
  ts = []
  for i in range(repeats):
    t0 = time.perf_counter()
    state, _ = fn(state, batches[i % len(batches)], jax.random.PRNGKey(i))
    jax.block_until_ready(state)
    ts.append(time.perf_counter() - t0)
  return 1000 * float(np.median(ts))


def _setup(model: str, users: int, items: int, batch: int, k: int):
  """``(env, params, batches, state)``: random data and parameters, and a MeLON state whose history holds
  the first half of the stream (MeLON with ``num_neighbours=k``, no offline pass)."""
  rng = np.random.default_rng(0)
  n = 20 * batch
  log = InteractionLog(user=rng.integers(0, users, n).astype(np.int32),
                       item=rng.integers(0, items, n).astype(np.int32),
                       timestamp=np.arange(n, dtype=np.int64), num_users=users, num_items=items, name="bench")
  data = blocks_lib.from_prequential(log, batch, 0.5)
  module = registry.get(model).make(users, items, **HPARAMS[model])
  config = strategies_lib.StrategyConfig(batch_size=batch, num_negatives=1, loss="bpr", weight_decay=1e-3)
  env = strategies_lib.Env(model, module, config, data)
  params = strategies_lib.init_params(env, jax.random.PRNGKey(0))
  batches = [{k_: jnp.asarray(v) for k_, v in data.block(t).items()} for t in range(4)]
  cfg = melon.strategy.step_config(env, melon.MelonConfig(num_neighbours=k, offline_epochs=0))
  state = step_lib.init_state(cfg, params, jax.random.PRNGKey(1), k)
  hist = state.history
  observe = jax.jit(history_lib.observe)
  for t in range(len(data) // 2):
    b = data.block(t)
    hist = observe(hist, jnp.asarray(b["user"]), jnp.asarray(b["positive"]), jnp.asarray(b["mask"]),
                   jax.random.PRNGKey(t))
  return env, params, batches, state.replace(history=hist)


def bench(model: str, users: int, items: int, batch: int, k: int, repeats: int, order: int = 2) -> dict:
  env, params, batches, state = _setup(model, users, items, batch, k)
  mcfg = melon.MelonConfig(num_neighbours=k, offline_epochs=0, order=order)
  ml = melon.make(env, mcfg)
  melon_ms = _median_ms(learner_lib.jit_update(ml), state, batches, repeats)
  ft = strategies_lib.get("fine-tune").make(env)
  ft_state = ft.init(params, jax.random.PRNGKey(0))
  default_ms = _median_ms(learner_lib.jit_update(ft), ft_state, batches, repeats)
  return {"model": model, "users": users, "items": items, "batch": batch, "order": order,
          "melon_ms": melon_ms, "default_ms": default_ms,
          "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _cost(fn, *args) -> tuple[float, float]:
  """(GFLOP, MB accessed) of one call, from XLA's cost analysis of the compiled computation."""
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan"))) / 1e9, float(cost.get("bytes accessed", float("nan"))) / 1e6


def breakdown(model: str, users: int, items: int, batch: int, k: int, repeats: int) -> list:
  """Rows ``(name, median ms, GFLOP, MB accessed)`` of the online step's parts (see module docstring)."""
  env, params, batches, state = _setup(model, users, items, batch, k)
  base = melon.strategy.step_config(env, melon.MelonConfig(num_neighbours=k, offline_epochs=0))
  variants = {"update only (line 11)": dataclasses.replace(base, meta_update=False),
              "order 1 (first-order meta-step)": dataclasses.replace(base, order=1),
              "order 2 (Algorithm 1)": base}
  rows = []
  key = jax.random.PRNGKey(0)
  for name, cfg in variants.items():
    fn = functools.partial(step_lib.online_step, cfg)
    gflop, mb = _cost(fn, state, batches[0], key)
    rows.append((name, _median_ms(jax.jit(fn), state, batches, repeats), gflop, mb))
  ft = strategies_lib.get("fine-tune").make(env)
  ft_state = ft.init(params, jax.random.PRNGKey(0))
  gflop, mb = _cost(ft.update, ft_state, batches[0], key)
  rows.append(("Default (one Adam step)", _median_ms(learner_lib.jit_update(ft), ft_state, batches, repeats),
               gflop, mb))
  return rows


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", default="mf-bpr,ncf")
  p.add_argument("--sizes", default="2000x940,20000x9400,200000x94000")
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--neighbours", type=int, default=10)
  p.add_argument("--repeats", type=int, default=20)
  p.add_argument("--order", type=int, default=2)
  p.add_argument("--breakdown", action="store_true")
  a = p.parse_args(argv)
  if a.breakdown:
    model = a.models.split(",")[0]
    u, i = (int(x) for x in a.sizes.split(",")[0].split("x"))
    print(f"{model} users={u} items={i} batch={a.batch}: one online step")
    for name, ms, gflop, mb in breakdown(model, u, i, a.batch, a.neighbours, a.repeats):
      print(f"  {name:34s} {ms:8.2f} ms  {gflop:8.4f} GFLOP  {mb:9.1f} MB accessed")
    return
  for model in a.models.split(","):
    for size in a.sizes.split(","):
      u, i = (int(x) for x in size.split("x"))
      r = bench(model, u, i, a.batch, a.neighbours, a.repeats, a.order)
      print(f"{r['model']:7s} users={u:7d} items={i:6d} batch={a.batch} order={a.order}: MeLON "
            f"{r['melon_ms']:.1f} ms, Default {r['default_ms']:.2f} ms per batch; peak RSS "
            f"{r['peak_rss_mib']:.0f} MiB")
      sys.stdout.flush()


if __name__ == "__main__":
  main()
