"""Glue shared by the experiment binaries: dataset + split + evaluation queries, result files."""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
from typing import Optional, Sequence

import numpy as np

from jaxrec import io
from jaxrec.data import datasets, preprocess, splits
from jaxrec.data.log import DataError, InteractionLog
from jaxrec.eval.queries import Queries


@dataclasses.dataclass(frozen=True)
class Prepared:
  """A dataset, its split, and the validation/test queries (known positives excluded)."""

  spec: str
  log: InteractionLog
  split: splits.Split
  valid_queries: Queries
  test_queries: Queries

  @property
  def name(self) -> str:
    return datasets.short_name(self.spec)

  @property
  def num_items(self) -> int:
    return self.log.num_items


# Splits that evaluate "the next item" per user: repeated (user, item) pairs are dropped first (keeping
# the earliest), as in the TP/SASRec protocols, so a test positive is never an item the user already had.
# The chronological split (2TS "interaction prediction") keeps repeat consumption.
DEDUPLICATE_FOR = ("leave_last_out", "user_holdout", "context_holdout")


def prepare(spec: str, split: str, *, seed: int = 0, cache_dir: Optional[str] = None,
            log: Optional[InteractionLog] = None, deduplicate: Optional[bool] = None) -> Prepared:
  """Loads ``spec`` (unless ``log`` is given), splits it, and builds queries.

  Validation queries exclude the user's training items; test queries exclude training and validation
  items (the "filtered" full-ranking protocol; the sampled protocol never draws them as negatives).
  ``deduplicate`` (default: ``split in DEDUPLICATE_FOR``) keeps the first of repeated (user, item) rows.
  """
  if log is None:
    log = datasets.load_dataset(spec, seed=seed, cache_dir=cache_dir)
  if deduplicate if deduplicate is not None else split in DEDUPLICATE_FOR:
    log = preprocess.deduplicate(log, keep="first")
  options = {"seed": seed} if split in ("user_holdout", "context_holdout") else {}
  sp = splits.make_split(log, split, **options)
  return Prepared(spec=spec, log=log, split=sp,
                  valid_queries=Queries.from_log(sp.valid, [sp.train]),
                  test_queries=Queries.from_log(sp.test, [sp.train, sp.valid]))


def new_user_mask(prepared: Prepared) -> np.ndarray:
  """bool ``[num_users]``: users without any training interaction."""
  return prepared.split.train.user_counts() == 0


def command_line(module: str, flags: dict) -> str:
  """The shell command that reproduces a run: ``python -m MODULE --k=v ...``."""
  parts = ["python", "-m", module] + [f"--{k}={v}" for k, v in flags.items() if v is not None]
  return " ".join(shlex.quote(p) for p in parts)


def define_data_flags(default_split: str, workdir: Optional[str], splits_allowed: Sequence[str]) -> None:
  """The flags every binary shares: --dataset, --split, --workdir, --seed, --cache_dir."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_string("dataset", "synthetic:small",
                      "Dataset spec: synthetic:PRESET, ml-100k, or FORMAT:PATH (jaxrec.data.datasets).")
  flags.DEFINE_enum("split", default_split, list(splits_allowed), "Split protocol.")
  flags.DEFINE_string("workdir", workdir, "Output directory (results.json, checkpoints, figures).")
  flags.DEFINE_integer("seed", 0, "The one seed: data generation and order, sampling, init.")
  flags.DEFINE_string("cache_dir", None, "Cache for public files (default ~/.cache/jaxrec or $JAXREC_CACHE).")


def friendly_errors(main):
  """Wraps a binary's ``main``: bad input (``DataError``) ends the program with its message, no traceback."""
  import functools  # pylint: disable=import-outside-toplevel

  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except DataError as e:
      raise SystemExit(f"error: {e}") from None

  return wrapped


def flag_values() -> dict:
  """The values of the flags the running binary defined (absl's own flags left out)."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  mine = (sys.argv[0], __name__, __file__)
  return {f.name: f.value for m in mine for f in flags.FLAGS.get_flags_for_module(m)}


def this_command() -> str:
  """The command line of the running binary, as ``python -m MODULE ...`` when run with ``-m``."""
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  head = ["python", "-m", spec.name] if spec is not None and spec.name else ["python", sys.argv[0]]
  return " ".join(shlex.quote(a) for a in head + sys.argv[1:])


def write_results(workdir: str, results: dict) -> str:
  """Writes ``workdir/results.json`` atomically; returns its path."""
  path = os.path.join(workdir, "results.json")
  io.atomic_write_json(path, results)
  return path


def stats_row(prepared: Prepared) -> dict:
  s = prepared.log.stats()
  return {"dataset": prepared.name, "users": s["users"], "items": s["items"],
          "interactions": s["interactions"], "density": s["density"],
          "median per user": s.get("interactions_per_user_median"),
          "max per user": s.get("interactions_per_user_max"),
          "train": len(prepared.split.train), "valid": len(prepared.split.valid),
          "test": len(prepared.split.test)}


def table_columns(rows: Sequence[dict]) -> list[str]:
  cols: list[str] = []
  for r in rows:
    cols += [k for k in r if k not in cols]
  return cols
