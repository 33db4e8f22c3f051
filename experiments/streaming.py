r"""Compare stream strategies on any registered model: prequential (test-then-train) evaluation.

    python -m experiments.streaming --dataset=synthetic:small --workdir=runs/streaming/mf-bpr \
        --config.model=mf-bpr --config.strategies="('fine-tune','retrain','retrain-warm','replay')" \
        --config.blocks=periods:10 --config.pretrain_periods=5

Blocks are MeLON's mini-batches (``--config.blocks=batch:256``, after an offline ``config.offline``
fraction) or SML's periods (``periods:N``, the first ``config.pretrain_periods`` offline); see
:mod:`jaxrec.stream.blocks`. One model is pre-trained on the offline prefix, then every strategy
(:data:`jaxrec.stream.strategies.STRATEGIES`) starts from it and runs the stream: each block is ranked
by the state that has not seen it (full ranking with the user's earlier items excluded, and
``eval_negatives`` sampled negatives), then the strategy updates on it. Writes ``results.json`` (per-block
records, the table, the config), ``metrics-MODEL.png`` (full-ranking NDCG@10 per block) and
``time-MODEL.png`` (update seconds per block). Each strategy's stream checkpoints under
``WORKDIR/streams/NAME`` and a rerun resumes it (pre-training is recomputed, deterministically).

Presets: the MeLON and SML protocols will be added to :data:`PRESETS` (their strategies go to the
strategy registry, :func:`jaxrec.stream.strategies.register`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Optional

from absl import app, flags
import jax

from experiments import common, configs, plots
from experiments.registry import Experiment, ExperimentResult, RunContext, Table
from jaxrec.data import datasets
from jaxrec.eval.queries import Queries
from jaxrec.models import registry
from jaxrec.stream import blocks as blocks_lib
from jaxrec.stream import evaluate as evaluate_lib
from jaxrec.stream import loop as loop_lib
from jaxrec.stream import strategies as strategies_lib
from jaxrec.train import fit as fit_lib


@dataclasses.dataclass(frozen=True)
class StreamingConfig:
  """The binary's configuration (``--config.FIELD``).

  Attributes:
    model: registered model.
    strategies: strategy names (keys of ``jaxrec.stream.strategies.STRATEGIES``).
    blocks: ``batch:B`` or ``periods:N``.
    offline: offline fraction (``batch:B``).
    pretrain_periods: offline periods (``periods:N``).
    pretrain_epochs: epochs of the offline pre-training.
    max_blocks: stream only the first blocks (0: all).
    history_len: input window of sequence models.
    eval_negatives: sampled negatives per interaction (MeLON 99, SML 999).
    exclude_known: exclude the user's earlier items from the candidates.
    checkpoint_every: blocks between checkpoints.
    hparams: JSON dict of model hyper-parameters.
    strategy: the strategies' shared hyper-parameters.
  """

  model: str = "mf-bpr"
  strategies: tuple = ("fine-tune", "retrain", "retrain-warm", "replay")
  blocks: str = "batch:256"
  offline: float = 0.8
  pretrain_periods: int = 5
  pretrain_epochs: int = 10
  max_blocks: int = 0
  history_len: int = 20
  eval_negatives: int = 99
  exclude_known: bool = True
  checkpoint_every: int = 10
  hparams: str = "{}"
  strategy: strategies_lib.StrategyConfig = strategies_lib.StrategyConfig()


# Named protocols (a paper's blocks, evaluation and strategies). MeLON / SML issues add theirs here.
PRESETS: dict[str, StreamingConfig] = {}

METRICS = ("NDCG@10", "HR@10", "MRR")


def _truncate(data: blocks_lib.Blocks, n: int) -> blocks_lib.Blocks:
  if not n or n >= len(data):
    return data
  return dataclasses.replace(data, starts=data.starts[:n], ends=data.ends[:n])


def _capped_negatives(log, wanted: int, exclude_known: bool) -> int:
  """``wanted``, or (with a warning) the most that every block's queries can have: a user's known items
  are at most its distinct items of the whole log (synthetic:tiny has 100 items)."""
  if not wanted:
    return wanted
  everything = Queries.from_log(log, [log] if exclude_known else [])
  return fit_lib.capped_negatives(everything, log.num_items, wanted, "streaming")


def run(config: StreamingConfig, dataset: str, *, seed: int = 0, workdir: Optional[str] = None,
        cache_dir: Optional[str] = None) -> dict:
  """Pre-trains once, streams every strategy; returns the results dict (see module docstring)."""
  unknown = [s for s in config.strategies if s not in strategies_lib.STRATEGIES]
  if unknown:
    raise ValueError(f"unknown strategies {unknown}; registered: {sorted(strategies_lib.STRATEGIES)}")
  log = datasets.load_dataset(dataset, seed=seed, cache_dir=cache_dir)
  spec = registry.get(config.model)
  hist = config.history_len if spec.family == "sequence" else None
  data = blocks_lib.parse(config.blocks, log, offline=config.offline,
                          pretrain_periods=config.pretrain_periods, history_len=hist,
                          pad_multiple=config.strategy.batch_size)
  data = _truncate(data, config.max_blocks)
  module = spec.make(log.num_users, log.num_items, **json.loads(config.hparams))
  env = strategies_lib.Env(config.model, module, config.strategy, data)
  init_key, pre_key, stream_key = jax.random.split(jax.random.PRNGKey(seed), 3)
  t0 = time.perf_counter()
  params = strategies_lib.pretrain(env, strategies_lib.init_params(env, init_key), pre_key,
                                   config.pretrain_epochs)
  params = jax.block_until_ready(params)
  pretrain_seconds = time.perf_counter() - t0
  negatives = _capped_negatives(log, config.eval_negatives, config.exclude_known)
  evaluator = evaluate_lib.BlockEvaluator(spec.score_fn(module), data, num_negatives=negatives,
                                          seed=seed, exclude_known=config.exclude_known)
  streams, rows = {}, []
  sampled = f"sampled{negatives}"
  for name in config.strategies:
    d = strategies_lib.get(name)
    learner = d.make(env)
    state = learner.init(params, stream_key)
    wd = os.path.join(workdir, "streams", name) if workdir else None
    run_config = {"dataset": dataset, "seed": seed, "strategy": name,
                  "config": {k: v for k, v in configs.to_dict(config).items()
                             if k not in ("strategies", "checkpoint_every")}}
    res = loop_lib.run(learner, state, data, evaluator, rng=stream_key, workdir=wd,
                       config=loop_lib.StreamConfig(checkpoint_every=config.checkpoint_every,
                                                    jit=d.jittable), run_config=run_config)
    streams[name] = res.records
    row = {"model": config.model, "strategy": name}
    for proto in ("full", sampled):
      for m in METRICS:
        row[f"{proto} {m}"] = loop_lib.weighted_average(res.records, f"{proto}/{m}")
    row["update s"] = sum(r["update_seconds"] for r in res.records)
    row["eval s"] = sum(r["eval_seconds"] for r in res.records)
    rows.append(row)
  return {"dataset": dataset, "seed": seed, "config": configs.to_dict(config), "eval_negatives": negatives,
          "num_blocks": len(data), "block_size": data.block_size, "offline_rows": data.offline_end,
          "stream_rows": int(data.sizes().sum()), "pretrain_seconds": pretrain_seconds,
          "table": rows, "streams": streams}


def figures(results: dict, workdir: str) -> list[str]:
  """Per-block full-ranking NDCG@10 and per-block update time, one line per strategy."""
  model = results["config"]["model"]
  streams = results["streams"]
  xs = lambda recs: [r["block"] for r in recs]  # noqa: E731
  metric = {n: (xs(r), [x["full/NDCG@10"] for x in r]) for n, r in streams.items()}
  times = {n: (xs(r), [x["update_seconds"] for x in r]) for n, r in streams.items()}
  ds = datasets.short_name(results["dataset"])
  return [
      plots.line_plot(metric, os.path.join(workdir, f"metrics-{model}.png"), xlabel="block",
                      ylabel="NDCG@10 (full ranking)", title=f"Per-block NDCG@10, {model}, {ds}"),
      plots.line_plot(times, os.path.join(workdir, f"time-{model}.png"), xlabel="block",
                      ylabel="update seconds", title=f"Per-block update time, {model}, {ds}"),
  ]


def command_for(dataset: str, seed: int, config: StreamingConfig, workdir: str) -> str:
  return common.command_line("experiments.streaming", {
      "dataset": dataset, "seed": seed, "workdir": workdir,
      **configs.overrides(config, StreamingConfig())})


# -- the main job's entry ------------------------------------------------------------------------------

QUICK_DATASET = "synthetic:small"  # drifting user interests (Brownian latents) and popularity drift
QUICK_MODELS = ("mf-bpr", "gru4rec")


def quick_config(model: str, suite_name: str) -> StreamingConfig:
  """SML-style periods on the drifting preset; the quick budget keeps this experiment near 2 minutes."""
  if suite_name == "quick":
    strat = strategies_lib.StrategyConfig(steps=2, batch_size=512, num_negatives=4, learning_rate=5e-3,
                                          retrain_epochs=3, reservoir_size=10_000, replay_sample=2048)
    if registry.get(model).family == "sequence":  # retraining a GRU over everything is the cost
      return StreamingConfig(model=model, blocks="periods:10", pretrain_periods=5, pretrain_epochs=2,
                             history_len=10, hparams='{"dim": 32, "hidden": 32}',
                             strategy=dataclasses.replace(strat, retrain_epochs=1))
    return StreamingConfig(model=model, blocks="periods:10", pretrain_periods=5, pretrain_epochs=3,
                           strategy=strat)
  strat = strategies_lib.StrategyConfig(steps=5, batch_size=256, num_negatives=4, learning_rate=5e-3,
                                        retrain_epochs=10, reservoir_size=20_000, replay_sample=2048)
  return StreamingConfig(model=model, blocks="periods:20", pretrain_periods=10, pretrain_epochs=10,
                         strategy=strat)


def _experiment(ctx: RunContext) -> ExperimentResult:
  rows, out, figs = [], {}, []
  for model in QUICK_MODELS:
    config = quick_config(model, ctx.suite)
    wd = os.path.join(ctx.workdir, model)
    res = run(config, QUICK_DATASET, seed=ctx.seed, workdir=wd, cache_dir=ctx.cache_dir)
    out[model] = res
    cmd = command_for(QUICK_DATASET, ctx.seed, config, f"runs/streaming/{model}")
    rows += [dict(r, command=cmd) for r in res["table"]]
    figs += figures(res, ctx.workdir)
  caption = ("Prequential: each period is ranked by the model before it trains on it; averages weighted "
             "by the interactions of each period. full = full ranking (the user's earlier items "
             "excluded); sampled99 = 1 positive + 99 uniform negatives. update s = total update time.")
  return ExperimentResult(tables=[Table(f"Stream strategies ({datasets.short_name(QUICK_DATASET)}, "
                                        "periods)", common.table_columns(rows), rows, caption=caption)],
                          figures=figs, results=out)


EXPERIMENT = Experiment(name="streaming", title="Streams: fine-tune vs retrain vs replay",
                        run=_experiment, order=60)


@common.friendly_errors
def main(argv):
  del argv
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  cfg = configs.value(_CONFIG)
  common.require_registered_model(cfg.model)
  workdir = FLAGS.workdir or f"runs/streaming/{cfg.model}"
  os.makedirs(workdir, exist_ok=True)
  try:
    results = run(cfg, FLAGS.dataset, seed=FLAGS.seed, workdir=workdir, cache_dir=FLAGS.cache_dir)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
  results["command"] = common.this_command()
  results["figures"] = figures(results, workdir)
  path = common.write_results(workdir, results)
  sampled = f"sampled{results['eval_negatives']}"
  print(f"{results['num_blocks']} blocks of <= {results['block_size']} rows after "
        f"{results['offline_rows']} offline rows (pre-training {results['pretrain_seconds']:.1f} s)")
  for r in results["table"]:
    print(f"{r['strategy']:13s} full NDCG@10={r['full NDCG@10']:.4f} HR@10={r['full HR@10']:.4f}  "
          f"{sampled} NDCG@10={r[sampled + ' NDCG@10']:.4f} HR@10={r[sampled + ' HR@10']:.4f}  "
          f"update {r['update s']:.1f} s")
  print(f"wrote {path}")


def define_flags():
  """Defines this binary's flags (only when run as a program, so modules import cleanly)."""
  global _CONFIG  # pylint: disable=global-statement
  common.define_data_flags("stream", None, ["stream"])
  _CONFIG = configs.define(StreamingConfig())


_CONFIG = None

if __name__ == "__main__":
  define_flags()
  app.run(main)
