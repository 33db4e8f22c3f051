"""The experiment registry the main job (``experiments.reproduce``) runs.

Adding an experiment to the report is one registration: a module in
``experiments/`` defines a module-level ``EXPERIMENT = Experiment(...)`` and the
main job discovers it. An experiment's ``run(ctx)`` returns an
:class:`ExperimentResult`: tables whose rows each name the command line that
reproduces them on their own, figures (PNG paths inside ``ctx.workdir``) and a
JSON-able results dict.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any, Callable, Optional, Sequence


@dataclasses.dataclass(frozen=True)
class RunContext:
  """What an experiment is told by the main job.

  Attributes:
    workdir: directory for this experiment's outputs (created by the caller).
    suite: "quick" (the README's main job, <= 15 min on 2 cores) or "full".
    seed: the one seed fixing data order, sampling and initialisation.
    datasets: dataset specs to run on (e.g. "synthetic:small", "ml-100k").
    cache_dir: where downloaded public files (ML-100K wheel) are cached.
  """

  workdir: str
  suite: str = "quick"
  seed: int = 0
  datasets: Sequence[str] = ("synthetic:small", "ml-100k")
  cache_dir: Optional[str] = None


@dataclasses.dataclass
class Table:
  """A result table. Each row has a ``command`` cell naming how it was produced."""

  title: str
  columns: list[str]
  rows: list[dict[str, Any]]
  caption: str = ""


@dataclasses.dataclass
class ExperimentResult:
  tables: list[Table] = dataclasses.field(default_factory=list)
  figures: list[str] = dataclasses.field(default_factory=list)
  results: dict[str, Any] = dataclasses.field(default_factory=dict)
  notes: list[str] = dataclasses.field(default_factory=list)
  markdown: str = ""  # free-form section text (e.g. the theory report)


@dataclasses.dataclass(frozen=True)
class Experiment:
  """One entry of the main job.

  Attributes:
    name: short id, also the sub-directory of the workdir.
    title: section heading in report.md.
    run: ``run(ctx) -> ExperimentResult``.
    suites: suites that include it.
    order: sort key in the report (lower first).
  """

  name: str
  title: str
  run: Callable[[RunContext], ExperimentResult]
  suites: tuple[str, ...] = ("quick", "full")
  order: int = 100


def discover(package: str = "experiments") -> dict[str, Experiment]:
  """Imports every module of ``package`` and collects their ``EXPERIMENT``s."""
  pkg = importlib.import_module(package)
  found: dict[str, Experiment] = {}
  for info in pkgutil.iter_modules(pkg.__path__):
    if info.name.startswith("_") or info.name in ("reproduce", "registry", "report"):
      continue
    module = importlib.import_module(f"{package}.{info.name}")
    exp = getattr(module, "EXPERIMENT", None)
    if isinstance(exp, Experiment):
      if exp.name in found:
        raise ValueError(f"experiment name {exp.name!r} registered twice ({info.name})")
      found[exp.name] = exp
  return dict(sorted(found.items(), key=lambda kv: (kv[1].order, kv[0])))
