"""SML's retraining time per period against Full-retrain and Fine-tune (paper 003, Table 2).

Run: ``python -m benchmarks.bench_sml [--users 2000 --items 1500 --period 5000 --periods 8 --reps 10
--retrain-epochs 20]``

The issue's size: a log of ``users x items`` with ``periods`` streamed periods of ``period`` interactions
each (after two initial periods), uniform random interactions (the timing does not depend on what the
periods hold). Each strategy streams every period through the jitted, donated update of the stream loop
(:func:`jaxrec.stream.loop.run` with a no-op evaluator, so only retraining is timed); the first period's
update includes its compilation and is reported apart. Strategies: SML (the paper's transfer, ``reps``
repetitions: Step 1 batch 1024, Step 2 batch 256, one epoch each), Full-retrain warm-started for
``retrain-epochs`` epochs (the authors' Full-retrain: Adam, batch 1024, one negative), Fine-tune (one
epoch over the new period). Prints seconds per period (median over periods 2..), the spread over periods
(SML's time should stay flat), the last period's time and a linear fit of time against the interactions
seen so far (how each grows with the data), SML's speed-up over Full-retrain (medians and at the last
period), and peak RSS. The issue's target compares at the last test period of the Yelp-like stream:
``--periods 38`` (40 periods in all).

The issue's reference, measured on this 2-core CPU with the authors' PyTorch code at this size: SML
120-140 s per period with 10 repetitions, Full-retrain (5 epochs) 28-65 s, Fine-tune 21-49 s, 1.2 GB RSS.
Targets: SML <= 4 s per period, flat across periods, >= 10x faster than a 20-epoch Full-retrain.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import sys

import jax
import numpy as np

from jaxrec.data.log import InteractionLog
from jaxrec.methods import sml
from jaxrec.methods.sml import protocol as protocol_lib
from jaxrec.models import registry
from jaxrec.stream import loop as loop_lib
from jaxrec.stream import strategies as strategies_lib


def make_data(users: int, items: int, period: int, periods: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  total = period * (periods + 2)
  log = InteractionLog(user=rng.integers(0, users, total).astype(np.int32),
                       item=rng.integers(0, items, total).astype(np.int32),
                       timestamp=np.arange(total, dtype=np.int64), num_users=users, num_items=items,
                       name="bench")
  proto = protocol_lib.PeriodProtocol(num_periods=periods + 2, mode="count", initial=2, valid=0, test=1)
  return protocol_lib.make_blocks(log, proto, pad_multiple=256).data


def time_strategy(learner, params, data, jit: bool = True) -> list[float]:
  res = loop_lib.run(learner, learner.init(params, jax.random.PRNGKey(1)), data, lambda p, t: {},
                     rng=jax.random.PRNGKey(2), config=loop_lib.StreamConfig(jit=jit))
  return [float(r["update_seconds"]) for r in res.records]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--users", type=int, default=2000)
  p.add_argument("--items", type=int, default=1500)
  p.add_argument("--period", type=int, default=5000, help="interactions per period")
  p.add_argument("--periods", type=int, default=8, help="streamed periods")
  p.add_argument("--reps", type=int, default=10, help="SML repetitions per period")
  p.add_argument("--retrain-epochs", type=int, default=20)
  p.add_argument("--strategies", default="sml,retrain-warm,fine-tune")
  a = p.parse_args(argv)
  data = make_data(a.users, a.items, a.period, a.periods)
  module = registry.get("mf-log").make(a.users, a.items, dim=64, use_bias=False)
  config = strategies_lib.StrategyConfig(steps=1, batch_size=1024, num_negatives=1, learning_rate=1e-2,
                                         retrain_epochs=a.retrain_epochs)
  env = strategies_lib.Env("mf-log", module, config, data)
  params = strategies_lib.init_params(env, jax.random.PRNGKey(0))
  print(f"{a.users} users x {a.items} items, {len(data)} periods of {a.period} interactions "
        f"(block {data.block_size}); SML reps={a.reps}; Full-retrain {a.retrain_epochs} epochs")
  med, last = {}, {}
  so_far = a.period * (2 + np.arange(a.periods))  # interactions before each streamed period's update
  for name in a.strategies.split(","):
    if name == "sml":
      learner, jit = sml.learner(dataclasses.replace(sml.SMLConfig(), reps=a.reps), module,
                                 data.block_size), True
    else:
      d = strategies_lib.get(name)
      learner, jit = d.make(env), d.jittable
    secs = time_strategy(learner, params, data, jit)
    rest = np.asarray(secs[1:])
    med[name], last[name] = float(np.median(rest)), float(secs[-1])
    slope, icpt = np.polyfit(so_far[1:] / 1e5, rest, 1) if rest.size > 1 else (0.0, rest[0])
    print(f"{name:13s} {med[name]:7.2f} s/period (median of periods 2..{len(secs)}; min {rest.min():.2f}, "
          f"max {rest.max():.2f}); first period with compile {secs[0]:.2f} s; last period {secs[-1]:.2f} s; "
          f"fit {icpt:.2f} s + {slope:.2f} s per 100k interactions so far")
    sys.stdout.flush()
  if "sml" in med and "retrain-warm" in med:
    ratio, at_last = med["retrain-warm"] / med["sml"], last["retrain-warm"] / last["sml"]
    print(f"Full-retrain ({a.retrain_epochs} epochs) / SML: {ratio:.1f}x (medians), {at_last:.1f}x at the "
          f"last period ({so_far[-1]:,} interactions so far)")
  print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
  main()
