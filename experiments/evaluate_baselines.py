r"""Non-learned baselines (Popularity, Random) under the full-ranking and sampled protocols.

    python -m experiments.evaluate_baselines --dataset=ml-100k --split=leave_last_out \
        --protocol=both --workdir=runs/baselines

writes ``results.json`` (dataset statistics, split sizes, and per baseline and protocol the summary
metrics and per-segment breakdowns). The split, de-duplication, tie order and exclusions are the
named protocol of ``--split`` (:mod:`jaxrec.eval.paper_protocols`, e.g. ``leave-last-out``).
``--dataset`` takes any spec of :mod:`jaxrec.data.datasets` (``synthetic:PRESET``, ``ml-100k``,
``FORMAT:PATH``).
"""

from __future__ import annotations

import os

from absl import app, flags

from experiments import common
from experiments.registry import Experiment, ExperimentResult, RunContext, Table
from jaxrec.eval import suite
from jaxrec.models import nonlearned


def run(dataset: str, split: str, protocol: str = "both", num_negatives: int = 99, seed: int = 0,
        cache_dir=None) -> dict:
  """Evaluates Popularity and Random; returns the results dict."""
  prep = common.prepare(dataset, split, seed=seed, cache_dir=cache_dir)
  proto, protocols = common.test_rankings(prep, protocol, num_negatives)
  train_counts = prep.split.train.user_counts()
  results = {"dataset": dataset, "split": split, "protocol": proto.describe(),
             "stats": common.stats_row(prep), "models": {}}
  for name, (score_fn, params) in (("Popularity", nonlearned.popularity(prep.split.train)),
                                   ("Random", nonlearned.random_scores(seed))):
    results["models"][name] = suite.evaluate_all(score_fn, params, prep.test_queries,
                                                 prep.num_items, protocols, train_counts=train_counts)
  return results


def _experiment(ctx: RunContext) -> ExperimentResult:
  stats, rows = [], []
  out = {}
  for spec in ctx.datasets:
    res = run(spec, "leave_last_out", seed=ctx.seed, cache_dir=ctx.cache_dir)
    out[spec] = res
    stats.append(res["stats"])
    cmd = common.command_line("experiments.evaluate_baselines", {
        "dataset": spec, "split": "leave_last_out", "protocol": "both", "seed": ctx.seed,
        "workdir": os.path.join(ctx.workdir, spec.replace(":", "-"))})
    for model, r in res["models"].items():
      rows.append({"dataset": res["stats"]["dataset"], "model": model, **suite.flat_row(r), "command": cmd})
  return ExperimentResult(
      tables=[Table("Datasets (leave-last-out split)", common.table_columns(stats), stats),
              Table("Non-learned baselines, leave-last-out, test", common.table_columns(rows), rows,
                    caption="full = full ranking over all items, known positives excluded; "
                            "sampled99 = 1 positive + 99 uniform negatives (seed fixed, known excluded). "
                            "Ties count against the positive.")],
      results=out)


EXPERIMENT = Experiment(name="baselines", title="Datasets and non-learned baselines", run=_experiment,
                        order=10)


@common.friendly_errors
def main(argv):
  del argv
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  os.makedirs(FLAGS.workdir, exist_ok=True)
  results = run(FLAGS.dataset, FLAGS.split, FLAGS.protocol, FLAGS.num_negatives, FLAGS.seed, FLAGS.cache_dir)
  results["command"] = common.this_command()
  results["flags"] = common.flag_values()
  path = common.write_results(FLAGS.workdir, results)
  for model, r in results["models"].items():
    for pname, pr in r.items():
      s = pr["summary"]
      print(f"{model:10s} {pname:10s} HR@10={s['HR@10']:.4f} NDCG@10={s['NDCG@10']:.4f} "
            f"MRR={s['MRR']:.4f}  ({pr['protocol']})")
  print(f"wrote {path}")


def define_flags():
  """Defines this binary's flags (only when run as a program, so modules import cleanly)."""
  common.define_data_flags("leave_last_out", "runs/baselines",
                           ["leave_last_out", "chronological", "user_holdout", "context_holdout"])
  flags.DEFINE_enum("protocol", "both", ["full", "sampled", "both"], "Evaluation protocol(s).")
  flags.DEFINE_integer("num_negatives", 99, "Sampled negatives per positive.", lower_bound=1)


if __name__ == "__main__":
  define_flags()
  app.run(main)
