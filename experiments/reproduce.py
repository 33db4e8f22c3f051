r"""The main job: runs every registered experiment and writes the report.

    python -m experiments.reproduce --suite=quick --workdir=runs/quick

writes ``report.md`` (tables with sampled and full-ranking metrics side by side,
each row naming the command that produced it), ``results.json`` and PNG figures
into the workdir. Experiments are discovered from ``experiments/*.py`` modules
that define ``EXPERIMENT`` (see :mod:`experiments.registry`).
"""

from __future__ import annotations

import os
import platform
import time
import traceback

from absl import app, flags, logging

from experiments import registry, report
from jaxrec import io


def run(suite: str, workdir: str, seed: int = 0, only=(), datasets=("synthetic:small", "ml-100k"),
        cache_dir=None) -> dict:
  """Runs the suite; returns the results dict also written to results.json."""
  os.makedirs(workdir, exist_ok=True)
  experiments = registry.discover()
  if only:
    unknown = set(only) - set(experiments)
    if unknown:
      raise ValueError(f"--only names unknown experiments {sorted(unknown)}; known: {sorted(experiments)}")
  sections, results = [], {"suite": suite, "seed": seed, "experiments": {}}
  start = time.time()
  for name, exp in experiments.items():
    if (only and name not in only) or (not only and suite not in exp.suites):
      continue
    ctx = registry.RunContext(workdir=os.path.join(workdir, name), suite=suite, seed=seed,
                              datasets=tuple(datasets), cache_dir=cache_dir)
    os.makedirs(ctx.workdir, exist_ok=True)
    logging.info("experiment %s: start", name)
    t0 = time.time()
    try:
      res, err = exp.run(ctx), None
      results["experiments"][name] = {"results": res.results, "seconds": time.time() - t0,
                                      "tables": [t.__dict__ for t in res.tables]}
    except Exception:  # noqa: BLE001 - one failing experiment must not hide the others
      res, err = None, traceback.format_exc()
      results["experiments"][name] = {"error": err, "seconds": time.time() - t0}
      logging.error("experiment %s failed:\n%s", name, err)
    sections.append((exp, res, err, time.time() - t0))
    logging.info("experiment %s: %.1f s", name, time.time() - t0)
  results["seconds"] = time.time() - start
  header = (f"# jaxrec report ({suite} suite)\n\n"
            f"Produced by `python -m experiments.reproduce --suite={suite} --workdir={workdir} "
            f"--seed={seed}` "
            f"in {results['seconds']:.0f} s on {platform.machine()} ({os.cpu_count()} cores), "
            f"Python {platform.python_version()}.")
  io.atomic_write_text(os.path.join(workdir, "report.md"), report.render(sections, workdir, header))
  io.atomic_write_json(os.path.join(workdir, "results.json"), results)
  failed = [n for n, r in results["experiments"].items() if "error" in r]
  if failed:
    raise SystemExit(f"experiments failed: {failed}; see {workdir}/report.md")
  return results


def main(argv):
  del argv
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  run(FLAGS.suite, FLAGS.workdir, FLAGS.seed, FLAGS.only, FLAGS.datasets, FLAGS.cache_dir)
  print(f"wrote {os.path.join(FLAGS.workdir, 'report.md')} and results.json")


def define_flags():
  """Defines this binary's flags (only when run as a program, so modules import cleanly)."""
  flags.DEFINE_enum("suite", "quick", ["quick", "full"], "Which suite to run.")
  flags.DEFINE_string("workdir", "runs/quick", "Output directory.")
  flags.DEFINE_integer("seed", 0, "The one seed for data order, sampling and init.")
  flags.DEFINE_list("only", [], "Run only these experiment names.")
  flags.DEFINE_list("datasets", ["synthetic:small", "ml-100k"], "Dataset specs.")
  flags.DEFINE_string("cache_dir", None, "Cache for public files (default ~/.cache/jaxrec).")


if __name__ == "__main__":
  define_flags()
  app.run(main)
