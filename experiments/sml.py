r"""SML (paper 003) against the shared retraining strategies, over periods.

    python -m experiments.sml --dataset=synthetic:small --workdir=runs/sml \
        --config.preset=yelp-like \
        --config.strategies="('sml','fine-tune','retrain','retrain-warm','replay')"

The log is cut into periods (:mod:`jaxrec.methods.sml.protocol`: ``yelp-like`` 40 equal-count periods,
initial model on 0-9, validation 30-32, test 33-39; ``adressa-like``; ``quick``). One MF (``mf-log``
without biases, Eq. 12-13) is trained on the initial periods; every strategy starts from it and streams
the later periods through :func:`jaxrec.stream.loop.run`: period ``t+1`` is ranked by the model retrained
after ``D_t`` before the strategy sees it. Strategies: SML and its variants (``sml``, ``sml-code``,
``sml-cnn``, ``sml-fc``, ``sml-n``, ``sml-s``, ``sml-fp``; :mod:`jaxrec.methods.sml.config`, all built
from ``--config.sml.*``) and the shared ones of :mod:`jaxrec.stream.strategies` (``fine-tune``,
``retrain`` from scratch, ``retrain-warm`` = the authors' Full-retrain, ``replay`` = SPMF-style, built
from ``--config.strategy.*``).

Evaluation (Sec. 4.1.3): each interaction ranks its positive among 999 negatives drawn from the items
seen so far minus the user's history (all of them when fewer remain), and under full ranking; Recall and
NDCG @5/10/20 per period, averaged weighted by interactions over every validation / test period.
Writes ``results.json`` (per-period records, the table, the config), ``recall10-test.png`` (Fig. 3),
``types-test.png`` (Recall@20 per test period of each interaction type, new/old user x new/old item:
Fig. 6, SML and Full-retrain; new = absent before the first test period), ``time.png`` (update seconds
per period, Table 2) and ``filters.png`` (SML's first-layer filters, Fig. 7).

Hyper-parameters (Sec. 4.1.3: "tuned on the validation periods"): ``--config.grid`` lists
``"GROUP.FIELD=V1|V2|..."`` entries over ``sml.*`` (every SML variant), ``strategy.*`` (the shared
strategies) and ``sequence_strategy.*`` (GRU4Rec, Caser); each strategy streams every point of its own
group's grid (the cartesian product) and the table reports the point with the best validation Recall@20
(sampled; the first on ties), its setting in ``chosen``; every point's averages are kept under
``grid`` in ``results.json``. The test periods never take part in the choice. The initial model is
trained once with the default ``strategy`` (``sequence_strategy``) setting and shared by every point.
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import os
import re
import time
from typing import Optional

from absl import app, flags
import jax
import numpy as np

from experiments import common, configs, plots
from experiments.registry import Experiment, ExperimentResult, RunContext, Table
from jaxrec.data import datasets
from jaxrec.methods import sml
from jaxrec.methods.sml import evaluate as sml_eval
from jaxrec.methods.sml import protocol as protocol_lib
from jaxrec.models import registry
from jaxrec.stream import blocks as blocks_lib
from jaxrec.stream import loop as loop_lib
from jaxrec.stream import strategies as strategies_lib

SHARED = ("fine-tune", "retrain", "retrain-warm", "replay")


@dataclasses.dataclass(frozen=True)
class SMLExperimentConfig:
  """The binary's configuration (``--config.FIELD``).

  Attributes:
    preset: period protocol (:data:`jaxrec.methods.sml.protocol.PRESETS`).
    strategies: SML variants and shared strategies to compare.
    model: ``mf-log`` (or ``mf-bpr`` for its loss in the baselines); always without biases.
    dim: embedding size (paper 64).
    pretrain_epochs: epochs of the initial model on the initial periods.
    eval_negatives: sampled negatives per interaction (paper 999).
    full_ranking: also rank every item.
    eval_train_periods: also evaluate the training periods (the figures then show them).
    max_blocks: stream only the first blocks (0: all; for smoke runs).
    checkpoint_every: blocks between checkpoints (Orbax; a rerun resumes).
    sequence_models: sequence models of the registry (``gru4rec``, ``caser``) warm-retrained on
      everything so far each period (``retrain-warm`` with ``sequence_strategy``), rows
      ``MODEL-retrain``; their initial model trains ``pretrain_epochs`` on the initial periods.
    history_len: their input window (capped by a model's ``max_len``: Caser's L = 5).
    grid: ``"GROUP.FIELD=V1|V2"`` entries searched per strategy on validation Recall@20 (GROUP one of
      :data:`GRID_GROUPS`; values Python literals).
    sml: the SML strategies' configuration.
    strategy: the shared strategies' configuration.
    sequence_strategy: the sequence models' (their registry loss, sampled softmax over
      ``num_negatives``).
  """

  preset: str = "yelp-like"
  strategies: tuple = ("sml",) + SHARED
  model: str = "mf-log"
  dim: int = 64
  pretrain_epochs: int = 10
  eval_negatives: int = 999
  full_ranking: bool = True
  eval_train_periods: bool = False
  max_blocks: int = 0
  checkpoint_every: int = 10
  sequence_models: tuple = ()
  history_len: int = 20
  grid: tuple = ()
  sml: sml.SMLConfig = sml.SMLConfig()
  strategy: strategies_lib.StrategyConfig = strategies_lib.StrategyConfig(
      steps=5, batch_size=1024, num_negatives=1, learning_rate=1e-2, retrain_epochs=10)
  sequence_strategy: strategies_lib.StrategyConfig = strategies_lib.StrategyConfig(
      batch_size=256, num_negatives=100, learning_rate=1e-3, retrain_epochs=3)


GRID_GROUPS = ("sml", "strategy", "sequence_strategy")
METRICS = ("Recall@5", "Recall@10", "Recall@20", "NDCG@5", "NDCG@10", "NDCG@20")


def _check(config: SMLExperimentConfig) -> None:
  if config.preset not in protocol_lib.PRESETS:
    raise ValueError(f"--config.preset={config.preset!r} is not a preset; presets: "
                     f"{sorted(protocol_lib.PRESETS)}")
  known = set(sml.VARIANTS) | set(strategies_lib.STRATEGIES)
  unknown = [s for s in config.strategies if s not in known]
  if unknown or not config.strategies:
    raise ValueError(f"--config.strategies: unknown {unknown}; known: {sorted(known)}")
  bad = [m for m in config.sequence_models
         if m not in registry.names() or registry.get(m).family != "sequence"]
  if bad:
    raise ValueError(f"--config.sequence_models: {bad} are not sequence models of the registry; known: "
                     f"{[n for n in registry.names() if registry.get(n).family == 'sequence']}")
  if config.model not in ("mf-log", "mf-bpr"):
    raise ValueError(f"--config.model must be mf-log or mf-bpr (SML transfers MF tables), got "
                     f"{config.model!r}")
  for name, v in (("dim", config.dim), ("pretrain_epochs", config.pretrain_epochs),
                  ("checkpoint_every", config.checkpoint_every)):
    if not isinstance(v, int) or v < 1:
      raise ValueError(f"--config.{name} must be an integer >= 1, got {v!r}")
  if not isinstance(config.eval_negatives, int) or config.eval_negatives < 0:
    raise ValueError(f"--config.eval_negatives must be an integer >= 0, got {config.eval_negatives!r}")
  parse_grid(config)


def parse_grid(config: SMLExperimentConfig) -> dict:
  """``{group: [(field, (values...)), ...]}`` from ``config.grid``; a one-line error names the entry."""
  out = {g: [] for g in GRID_GROUPS}
  for entry in config.grid:
    where = f"--config.grid entry {entry!r}"
    key, sep, values = str(entry).partition("=")
    group, dot, field = key.strip().partition(".")
    if not sep or not dot or group not in GRID_GROUPS:
      raise ValueError(f"{where}: expected GROUP.FIELD=V1|V2 with GROUP one of {GRID_GROUPS}")
    sub = getattr(config, group)
    names = [f.name for f in dataclasses.fields(sub)]
    if field not in names:
      raise ValueError(f"{where}: {group} has no field {field!r}; fields: {names}")
    if any(field == f for f, _ in out[group]):
      raise ValueError(f"{where}: {group}.{field} is listed twice")
    try:
      parsed = tuple(ast.literal_eval(v.strip()) for v in values.split("|"))
    except (ValueError, SyntaxError):
      raise ValueError(f"{where}: values must be Python literals separated by '|'") from None
    current = getattr(sub, field)
    for v in parsed:
      if type(v) is not type(current) and not (isinstance(current, float) and type(v) is int):
        raise ValueError(f"{where}: {v!r} is a {type(v).__name__}, {group}.{field} is a "
                         f"{type(current).__name__}")
    try:
      for v in parsed:
        dataclasses.replace(sub, **{field: type(current)(v)})  # the field's own checks
    except (ValueError, TypeError) as e:
      raise ValueError(f"{where}: {e}") from None
    out[group].append((field, tuple(type(current)(v) for v in parsed)))
  return out


def grid_points(config: SMLExperimentConfig, group: str) -> list:
  """``[(label, config)]``: one per point of ``group``'s grid (``[("", config)]`` without one)."""
  entries = parse_grid(config)[group]
  if not entries:
    return [("", config)]
  points = []
  for values in itertools.product(*(vs for _, vs in entries)):
    changes = dict(zip((f for f, _ in entries), values))
    label = ",".join(f"{group}.{f}={v}" for f, v in changes.items())
    points.append((label, dataclasses.replace(config, **{group: dataclasses.replace(
        getattr(config, group), **changes)})))
  return points


def select(rows: list) -> dict:
  """The row with the best ``valid Recall@20`` (the first on ties); the test averages play no part."""
  if any(r["valid Recall@20"] is None for r in rows) and len(rows) > 1:
    raise ValueError("--config.grid needs validation periods (the preset has none)")
  return max(rows, key=lambda r: -1.0 if r["valid Recall@20"] is None else r["valid Recall@20"])


def _sml_config(config: SMLExperimentConfig, name: str, first_test: int) -> sml.SMLConfig:
  c = dataclasses.replace(config.sml, variant=name)
  if name == "sml-s":  # the transfer is frozen during the test periods (Sec. 4.3)
    c = dataclasses.replace(c, freeze_from=first_test)
  return c


def _avg(records: list, blocks: tuple, key: str) -> Optional[float]:
  recs = [r for r in records if r["block"] in blocks and key in r]
  return loop_lib.weighted_average(recs, key) if recs else None


def _row(name: str, records: list, pb, sampled: str, full_ranking: bool) -> dict:
  """One strategy's table row: test / validation averages, per interaction type, update seconds."""
  row = {"strategy": name}
  for m in METRICS:
    row[f"test {m}"] = _avg(records, pb.test, f"{sampled}/{m}")
  row["valid Recall@20"] = _avg(records, pb.valid, f"{sampled}/Recall@20")
  if full_ranking:
    row["test full Recall@20"] = _avg(records, pb.test, "full/Recall@20")
    row["test full NDCG@20"] = _avg(records, pb.test, "full/NDCG@20")
  for label in sml_eval.INTERACTION_TYPES:  # Fig. 6: test average per interaction type
    count = f"types/{label}"
    recs = [r for r in records if r["block"] in pb.test and r.get(count, 0) > 0]
    row[f"test Recall@20 {label}"] = (loop_lib.weighted_average(recs, f"{sampled}/Recall@20/{label}", count)
                                      if recs else None)
    row[f"test n {label}"] = sum(r[count] for r in recs)
  secs = [r["update_seconds"] for r in records]
  row["update s/period (median)"] = float(np.median(secs[1:] if len(secs) > 1 else secs))
  row["update s (last)"] = secs[-1]
  return row


def run(config: SMLExperimentConfig, dataset: str, *, seed: int = 0, workdir: Optional[str] = None,
        cache_dir: Optional[str] = None) -> dict:
  """Trains the initial model once, streams every strategy; returns the results dict."""
  _check(config)
  log = datasets.load_dataset(dataset, seed=seed, cache_dir=cache_dir)
  proto = protocol_lib.PRESETS[config.preset]
  pb = protocol_lib.make_blocks(log, proto, pad_multiple=256)
  data = pb.data
  if config.max_blocks:
    n = config.max_blocks
    data = dataclasses.replace(data, starts=data.starts[:n], ends=data.ends[:n])
  spec = registry.get(config.model)
  module = spec.make(log.num_users, log.num_items, dim=config.dim, use_bias=False)
  env = strategies_lib.Env(config.model, module, config.strategy, data)
  init_key, pre_key, stream_key = jax.random.split(jax.random.PRNGKey(seed), 3)
  t0 = time.perf_counter()
  params = strategies_lib.pretrain(env, strategies_lib.init_params(env, init_key), pre_key,
                                   config.pretrain_epochs)
  params = jax.block_until_ready(params)
  pretrain_seconds = time.perf_counter() - t0
  scored = None if config.eval_train_periods else pb.valid + pb.test
  evaluator = sml_eval.PeriodEvaluator(spec.score_fn(module), data, num_negatives=config.eval_negatives,
                                       seed=seed, full=config.full_ranking, blocks=scored,
                                       types_from=int(data.starts[pb.test[0]]))
  streams, rows, states, grid = {}, [], {}, []
  sampled = f"sampled{config.eval_negatives}"

  def stream(name, learner, jit, start, data, evaluator, label, cfg):
    point = f"{name}[{label}]" if label else name
    wd = os.path.join(workdir, "streams", re.sub(r"[^A-Za-z0-9._=-]", "_", point)) if workdir else None
    run_config = {"dataset": dataset, "seed": seed, "strategy": name,
                  "config": {k: v for k, v in configs.to_dict(cfg).items()
                             if k not in ("strategies", "checkpoint_every", "grid")}}
    res = loop_lib.run(learner, learner.init(start, stream_key), data, evaluator, rng=stream_key,
                       workdir=wd, run_config=run_config,
                       config=loop_lib.StreamConfig(checkpoint_every=config.checkpoint_every, jit=jit))
    return dict(_row(name, res.records, pb, sampled, config.full_ranking), chosen=label or "default"), res

  def search(name, group, make):
    """Streams ``name`` at every point of ``group``'s grid; keeps the best on validation."""
    results = [stream(name, *make(cfg), label, cfg) for label, cfg in grid_points(config, group)]
    grid.extend(r for r, _ in results)
    best = select([r for r, _ in results])
    res = next(res for r, res in results if r is best)
    rows.append(best)
    streams[name], states[name] = res.records, res.state

  for name in config.strategies:
    if name in sml.VARIANTS:
      warmup = [data.block(t) for t in pb.train] if config.sml.passes > 1 else ()
      search(name, "sml", lambda cfg, name=name, warmup=warmup: (
          sml.learner(_sml_config(cfg, name, pb.test[0]), module, data.block_size, warmup), True,
          params, data, evaluator))
    else:
      d = strategies_lib.get(name)
      search(name, "strategy", lambda cfg, d=d: (
          d.make(strategies_lib.Env(config.model, module, cfg.strategy, data)), d.jittable, params, data,
          evaluator))
  for model in config.sequence_models:  # GRU4Rec / Caser, warm-retrained every period on all so far
    seq_spec = registry.get(model)
    window = min(config.history_len, seq_spec.defaults.get("max_len", config.history_len))
    seq_data = dataclasses.replace(data, examples=blocks_lib.stream_examples(data.log, window))
    seq_module = seq_spec.make(log.num_users, log.num_items)
    seq_env = strategies_lib.Env(model, seq_module, config.sequence_strategy, seq_data)
    seq_params = strategies_lib.pretrain(seq_env, strategies_lib.init_params(seq_env, init_key), pre_key,
                                         config.pretrain_epochs)
    seq_eval = sml_eval.PeriodEvaluator(seq_spec.score_fn(seq_module), seq_data,
                                        num_negatives=config.eval_negatives, seed=seed,
                                        full=config.full_ranking, blocks=scored,
                                        types_from=int(data.starts[pb.test[0]]))
    d = strategies_lib.get("retrain-warm")
    search(f"{model}-retrain", "sequence_strategy", lambda cfg, d=d, m=model, sd=seq_data, sm=seq_module,
           sp=seq_params, se=seq_eval: (
               d.make(strategies_lib.Env(m, sm, cfg.sequence_strategy, sd)), d.jittable, sp, sd, se))
  filters = {n: np.asarray(s.theta["user"]["F1"]).tolist() for n, s in states.items()
             if isinstance(s, sml.SMLState) and "F1" in s.theta["user"]}
  return {"dataset": dataset, "seed": seed, "config": configs.to_dict(config), "preset": config.preset,
          "blocks": {"train": list(pb.train), "valid": list(pb.valid), "test": list(pb.test)},
          "num_blocks": len(data), "block_size": data.block_size, "offline_rows": data.offline_end,
          "period_rows": data.sizes().tolist(), "pretrain_seconds": pretrain_seconds, "table": rows,
          "grid": grid, "streams": streams, "filters": filters}


def figures(results: dict, workdir: str) -> list[str]:
  """Recall@10 per test period (Fig. 3), update seconds per period (Table 2), SML's filters (Fig. 7)."""
  sampled = f"sampled{results['config']['eval_negatives']}"
  test = set(results["blocks"]["test"])
  ds = datasets.short_name(results["dataset"])
  key = f"{sampled}/Recall@10"
  recall = {n: ([r["block"] for r in recs if r["block"] in test and key in r],
                [r[key] for r in recs if r["block"] in test and key in r])
            for n, recs in results["streams"].items()}
  times = {n: ([r["block"] for r in recs], [r["update_seconds"] for r in recs])
           for n, recs in results["streams"].items()}
  types = {}
  shown = [n for n in ("sml", "retrain-warm") if n in results["streams"]] or list(results["streams"])
  for n in shown:  # the paper's Fig. 6: SML and Full-retrain
    recs = results["streams"][n]
    for label in sml_eval.INTERACTION_TYPES:
      k = f"{sampled}/Recall@20/{label}"
      pts = [(r["block"], r[k]) for r in recs if r["block"] in test and k in r]
      if pts:
        types[f"{n} {label}"] = ([b for b, _ in pts], [v for _, v in pts])
  out = [plots.line_plot(recall, os.path.join(workdir, "recall10-test.png"), xlabel="block (test period)",
                         ylabel=f"Recall@10 ({sampled})", title=f"Recall@10 per test period, {ds}"),
         plots.line_plot(types, os.path.join(workdir, "types-test.png"), xlabel="block (test period)",
                         ylabel=f"Recall@20 ({sampled})",
                         title=f"Recall@20 per interaction type (O/N: old/new user U, item I), {ds}"),
         plots.line_plot(times, os.path.join(workdir, "time.png"), xlabel="block", ylabel="update seconds",
                         title=f"Retraining time per period, {ds}")]
  if results["filters"]:
    name, f1 = next(iter(results["filters"].items()))
    f1 = np.asarray(f1)  # [n1, 3]: rows = filters, cols = (w_prev, w_hat, w_dot)
    series = {f"filter {j}": ([0, 1, 2], f1[j].tolist()) for j in range(f1.shape[0])}
    out.append(plots.line_plot(series, os.path.join(workdir, "filters.png"),
                               xlabel="stack row (0 = w_prev, 1 = w_hat, 2 = w_dot)", ylabel="weight",
                               title=f"First-layer filters of {name} (user transfer), {ds}"))
  return out


def command_for(dataset: str, seed: int, config: SMLExperimentConfig, workdir: str) -> str:
  return common.command_line("experiments.sml", {
      "dataset": dataset, "seed": seed, "workdir": workdir,
      **configs.overrides(config, SMLExperimentConfig())})


# -- the main job's entry ------------------------------------------------------------------------------

QUICK_DATASET = "synthetic:small"


def suite_config(suite_name: str) -> SMLExperimentConfig:
  """quick: 20 periods, 3 repetitions, short baselines (<= ~60 s); full: the Yelp-like protocol, the
  paper's 10 repetitions, every variant."""
  if suite_name == "quick":
    return SMLExperimentConfig(
        preset="quick", pretrain_epochs=5, full_ranking=False,
        sml=sml.SMLConfig(reps=3),
        strategy=strategies_lib.StrategyConfig(steps=3, batch_size=1024, num_negatives=1,
                                               learning_rate=1e-2, retrain_epochs=3))
  return SMLExperimentConfig(strategies=("sml", "sml-code", "sml-cnn", "sml-fc", "sml-n", "sml-s",
                                         "sml-fp") + SHARED, sequence_models=("gru4rec", "caser"))


def _experiment(ctx: RunContext) -> ExperimentResult:
  config = suite_config(ctx.suite)
  res = run(config, QUICK_DATASET, seed=ctx.seed, workdir=ctx.workdir, cache_dir=ctx.cache_dir)
  cmd = command_for(QUICK_DATASET, ctx.seed, config, "runs/sml")
  rows = [dict(r, command=cmd) for r in res["table"]]
  caption = (f"Preset {config.preset}: each period is ranked by the model retrained after the previous "
             f"one, before anything learns from it; averages weighted by interactions over every "
             f"test / validation period. Metrics: 1 positive + {config.eval_negatives} negatives from the "
             "items seen so far minus the user's history. update s: seconds of one period's retraining.")
  title = f"SML vs retraining strategies ({datasets.short_name(QUICK_DATASET)})"
  return ExperimentResult(tables=[Table(title, common.table_columns(rows), rows, caption=caption)],
                          figures=figures(res, ctx.workdir), results=res)


EXPERIMENT = Experiment(name="sml", title="SML: sequential meta-learning for periodic retraining",
                        run=_experiment, order=65)


@common.friendly_errors
def main(argv):
  del argv
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  cfg = configs.value(_CONFIG)
  workdir = FLAGS.workdir or "runs/sml"
  os.makedirs(workdir, exist_ok=True)
  try:
    results = run(cfg, FLAGS.dataset, seed=FLAGS.seed, workdir=workdir, cache_dir=FLAGS.cache_dir)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
  results["command"] = common.this_command()
  results["figures"] = figures(results, workdir)
  path = common.write_results(workdir, results)
  print(f"{results['num_blocks']} periods of <= {results['block_size']} rows after {results['offline_rows']} "
        f"initial rows (initial model {results['pretrain_seconds']:.1f} s); test blocks "
        f"{results['blocks']['test']}")
  fmt = lambda v: "  n/a " if v is None else f"{v:.4f}"  # noqa: E731
  for r in results["table"]:
    print(f"{r['strategy']:13s} test Recall@20={fmt(r['test Recall@20'])} NDCG@20={fmt(r['test NDCG@20'])} "
          f"valid Recall@20={fmt(r['valid Recall@20'])}  update {r['update s/period (median)']:.2f} s/period"
          + (f"  chosen {r['chosen']}" if r["chosen"] != "default" else ""))
  print(f"wrote {path}")


def define_flags():
  """Defines this binary's flags (only when run as a program, so modules import cleanly)."""
  global _CONFIG  # pylint: disable=global-statement
  common.define_data_flags("stream", None, ["stream"])
  _CONFIG = configs.define(SMLExperimentConfig())


_CONFIG = None

if __name__ == "__main__":
  define_flags()
  app.run(main)
