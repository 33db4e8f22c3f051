r"""Train any registered base model and evaluate it under both protocols.

    python -m experiments.train --dataset=ml-100k --workdir=runs/sasrec-ml100k \
        --config.model=sasrec --config.fit.epochs=20 --config.fit.learning_rate=0.001

writes ``results.json`` (test metrics per protocol and user segment, validation history, training
time, the flags, the config and which file columns were read as what) into the workdir, and Orbax
checkpoints, ``metrics.jsonl``, ``run_config.json`` and ``timing.json`` into
``WORKDIR/checkpoints_root/``. Re-running the same command resumes from the last checkpoint; a
workdir trained with another model, config, dataset, split or seed is refused with one line naming
the differing fields. ``train_seconds`` is the total over every run on the workdir
(``train_segments`` lists them). Sampled negatives (validation and test) are capped, with a warning,
at what every query can have (small datasets such as ``synthetic:tiny``). Models:
``jaxrec.models.registry.names()``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Optional

from absl import app, flags

from experiments import common, configs, plots
from experiments.registry import Experiment, ExperimentResult, RunContext, Table
from jaxrec.data import datasets
from jaxrec.eval import suite
from jaxrec.models import nonlearned, registry
from jaxrec.train import fit as fit_lib


def run(model: str, dataset: str, split: str = "leave_last_out", *, config: fit_lib.FitConfig,
        seed: int = 0, hparams: Optional[dict] = None, workdir: Optional[str] = None, cache_dir=None,
        protocol: str = "both", eval_negatives: int = 99, prepared: Optional[common.Prepared] = None) -> dict:
  """Trains and evaluates; returns the results dict."""
  prep = prepared or common.prepare(dataset, split, seed=seed, cache_dir=cache_dir)
  spec = registry.get(model)
  sp = prep.split
  logs = [sp.train, sp.valid, sp.test]
  hist = fit_lib.history_len_for(model, config, hparams)
  valid_q = dataclasses.replace(prep.valid_queries, features=fit_lib.query_features(spec, logs, 1, hist))
  test_q = dataclasses.replace(prep.test_queries, features=fit_lib.query_features(spec, logs, 2, hist))
  ckpt = os.path.join(workdir, "checkpoints_root") if workdir else None
  run_config = {"dataset": dataset, "split": split, "protocol": prep.protocol.name}
  fitted = fit_lib.fit(model, sp.train, valid_q, config, seed=seed, hparams=hparams, workdir=ckpt,
                       run_config=run_config)
  proto, protocols = common.test_rankings(prep, protocol, eval_negatives)
  negatives = proto.num_negatives
  test = suite.evaluate_all(fitted.score_fn, fitted.params, test_q, prep.num_items, protocols,
                            train_counts=sp.train.user_counts())
  evals = [r for r in fitted.history if any(k.startswith("valid/") for k in r)]
  return {"model": model, "dataset": dataset, "split": split, "seed": seed,
          "config": dataclasses.asdict(config), "hparams": hparams or {},
          "train_seconds": fitted.train_seconds, "train_segments": fitted.train_segments,
          "best_step": fitted.best_step, "valid_negatives": fitted.valid_negatives,
          "eval_negatives": negatives, "valid_history": evals, "test": test}


# -- the main job's entry ------------------------------------------------------------------------------

QUICK_MODELS = ("mf-bpr", "ncf", "gru4rec", "caser", "sasrec", "sumpool")


# Per-model learning rate and negatives, chosen on ML-100K validation NDCG@10 (99 sampled negatives):
# MF needs a larger step than Adam's 1e-3 to converge within the budget, NCF uses 4 log-loss negatives
# per positive as in He et al. (2017).
_TUNED = {"mf-bpr": {"learning_rate": 5e-3}, "ncf": {"learning_rate": 5e-3, "num_negatives": 4}}


def quick_config(model: str, suite_name: str) -> fit_lib.FitConfig:
  """Budgets of the main job: the quick suite must fit 15 minutes on 2 cores with everything else.

  GRU4Rec and SASRec train on every position of a sequence (``sequence_batch_size`` sequences per step),
  the other sequence models on one target per window and user models on (user, item) pairs
  (``batch_size`` per step).
  """
  spec = registry.get(model)
  seq = spec.family == "sequence"
  if suite_name == "quick":
    base = fit_lib.FitConfig(epochs=8 if spec.all_positions else 4 if seq else 12,
                             batch_size=512 if seq else 1024, history_len=20, num_negatives=64, patience=2)
  else:
    base = fit_lib.FitConfig(epochs=30, batch_size=256, history_len=50, num_negatives=100, patience=3)
  return dataclasses.replace(base, **_TUNED.get(model, {}))


def _figures(ctx: RunContext, name: str, runs: dict, popularity: dict) -> list[str]:
  """Training curves (validation NDCG@10 per evaluation) and full-ranking NDCG@10 by user activity."""
  curves = {m: ([h["epoch"] for h in r["valid_history"]], [h["valid/NDCG@10"] for h in r["valid_history"]])
            for m, r in runs.items()}
  figs = [plots.line_plot(curves, os.path.join(ctx.workdir, f"curves-{name}.png"), xlabel="epoch",
                          ylabel="valid NDCG@10 (99 sampled negatives)", title=f"Training curves, {name}")]
  segs = {"Popularity": popularity["full"]["segments"]["activity"]}
  segs.update({m: r["test"]["full"]["segments"]["activity"] for m, r in runs.items()})
  groups = list(segs["Popularity"])
  series = {m: [s.get(g, {}).get("NDCG@10", 0.0) for g in groups] for m, s in segs.items()}
  counts = [segs["Popularity"][g]["count"] for g in groups]
  labels = [f"{g}\n(n={c})" for g, c in zip(groups, counts)]
  figs.append(plots.grouped_bars(labels, series, os.path.join(ctx.workdir, f"segments-{name}.png"),
                                 ylabel="test NDCG@10 (full ranking)",
                                 xlabel="training interactions of the user",
                                 title=f"NDCG@10 by user activity, {name}"))
  return figs


def _experiment(ctx: RunContext) -> ExperimentResult:
  rows, out, figures = [], {}, []
  for spec in ctx.datasets:
    prep = common.prepare(spec, "leave_last_out", seed=ctx.seed, cache_dir=ctx.cache_dir)
    _, protocols = common.test_rankings(prep)
    pop = suite.evaluate_all(*nonlearned.popularity(prep.split.train), prep.test_queries, prep.num_items,
                             protocols, train_counts=prep.split.train.user_counts())
    runs = {}
    rows.append({"dataset": prep.name, "model": "Popularity", **suite.flat_row(pop), "train s": 0.0,
                 "command": common.command_line("experiments.evaluate_baselines",
                                                {"dataset": spec, "split": "leave_last_out"})})
    for model in QUICK_MODELS:
      config = quick_config(model, ctx.suite)
      res = run(model, spec, "leave_last_out", config=config, seed=ctx.seed, prepared=prep)
      out[f"{spec}/{model}"] = runs[model] = res
      command = command_for(spec, "leave_last_out", ctx.seed,
                            TrainConfig(model=model, fit=dataclasses.replace(config, progress=True)),
                            f"runs/train/{model}-{prep.name}")
      rows.append({"dataset": prep.name, "model": model, **suite.flat_row(res["test"]),
                   "train s": res["train_seconds"], "command": command})
    figures += _figures(ctx, prep.name, runs, pop)
  return ExperimentResult(
      figures=figures,
      tables=[Table("Base recommenders vs Popularity (leave-last-out, test)", common.table_columns(rows),
                    rows, caption="Best epoch chosen on validation NDCG@10 (99 sampled negatives). "
                                  "full = full ranking, known positives excluded; sampled99 = 1 positive + "
                                  "99 uniform negatives.")],
      results=out)


EXPERIMENT = Experiment(name="base_models", title="Base recommenders (foundation)", run=_experiment,
                        order=20)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The binary's configuration (``--config.FIELD=...``, see experiments/configs.py).

  Attributes:
    model: registered model name (``jaxrec.models.registry.names()``).
    protocol: test protocol(s): ``"full"``, ``"sampled"`` or ``"both"``.
    eval_negatives: sampled negatives per test positive.
    hparams: model hyper-parameters overriding the registry defaults (a JSON dict).
    fit: the training hyper-parameters (:class:`jaxrec.train.fit.FitConfig`).
  """

  model: str = "mf-bpr"
  protocol: str = "both"
  eval_negatives: int = 99
  hparams: str = "{}"
  fit: fit_lib.FitConfig = fit_lib.FitConfig(progress=True)

  def __post_init__(self):
    fit_lib.check_fields(self, {"model": ("str", None, False), "protocol": (("full", "sampled", "both"),
                                                                          None, False),
                                "eval_negatives": ("int", 1, False), "hparams": ("str", None, False)})


def command_for(dataset: str, split: str, seed: int, config: TrainConfig, workdir: str) -> str:
  """The command that reproduces a run with ``config`` (only fields that differ from the defaults)."""
  return common.command_line("experiments.train", {
      "dataset": dataset, "split": split, "seed": seed, "workdir": workdir,
      **configs.overrides(config, TrainConfig())})


@common.friendly_errors
def main(argv):
  del argv
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  cfg = configs.value(_CONFIG)
  common.require_registered_model(cfg.model)
  try:
    hparams = json.loads(cfg.hparams)
  except json.JSONDecodeError as e:
    raise SystemExit(f"error: --config.hparams is not a JSON dict: {e}") from None
  workdir = FLAGS.workdir or f"runs/train/{cfg.model}"
  if not isinstance(hparams, dict):
    raise SystemExit(f"error: --config.hparams is not a JSON dict: {cfg.hparams!r}")
  described = datasets.describe(FLAGS.dataset)
  if "column_map" in described:
    print(f"{FLAGS.dataset}: {datasets.column_summary(described)}", file=sys.stderr)
  os.makedirs(workdir, exist_ok=True)
  results = run(cfg.model, FLAGS.dataset, FLAGS.split, config=cfg.fit, seed=FLAGS.seed,
                hparams=hparams, workdir=workdir, cache_dir=FLAGS.cache_dir,
                protocol=cfg.protocol, eval_negatives=cfg.eval_negatives)
  results["command"] = common.this_command()
  results["flags"] = common.flag_values()
  results["train_config"] = configs.to_dict(cfg)
  results["dataset_read"] = described
  path = common.write_results(workdir, results)
  for pname, pr in results["test"].items():
    s = pr["summary"]
    print(f"{cfg.model} {pname:10s} HR@10={s['HR@10']:.4f} NDCG@10={s['NDCG@10']:.4f} MRR={s['MRR']:.4f}"
          f"  ({pr['protocol']})")
  segs = results["train_segments"]
  parts = f" over {len(segs)} runs" if len(segs) > 1 else ""
  print(f"trained in {results['train_seconds']:.1f} s{parts}; wrote {path}")


def define_flags():
  """Defines this binary's flags (only when run as a program, so modules import cleanly)."""
  global _CONFIG  # pylint: disable=global-statement
  common.define_data_flags("leave_last_out", None, ["leave_last_out", "chronological", "user_holdout"])
  _CONFIG = configs.define(TrainConfig())


_CONFIG = None

if __name__ == "__main__":
  define_flags()
  app.run(main)
