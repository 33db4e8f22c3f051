"""The theory section of the main job: ``python -m theory.report --workdir=DIR [--quick]``."""

from __future__ import annotations

import os
import re

from experiments import common
from experiments.registry import Experiment, ExperimentResult, RunContext
from theory import report as theory_report


def _experiment(ctx: RunContext) -> ExperimentResult:
  quick = ctx.suite == "quick"
  results = theory_report.build_report(ctx.workdir, quick=quick)
  with open(os.path.join(ctx.workdir, "theory.md"), encoding="utf-8") as f:
    md = f.read()
  # Figures are linked relative to the theory workdir; the main report sits one level up.
  sub = os.path.basename(os.path.normpath(ctx.workdir))
  md = re.sub(r"\]\((?!https?:)([^)]+\.png)\)", lambda m: f"]({sub}/{m.group(1)})", md)
  md = re.sub(r"^(#+) ", r"##\1 ", md, flags=re.M)  # nest the theory headings under this section
  cmd = common.command_line("theory.report", {"workdir": "runs/theory", "quick": quick})
  return ExperimentResult(markdown=f"Produced by `{cmd}`.\n\n{md}", results=results)


EXPERIMENT = Experiment(name="theory", title="Theory checks (2TS risk bound, tree bounds)",
                        run=_experiment, order=90)
