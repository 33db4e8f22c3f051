"""Glue shared by the experiment binaries: dataset + split + evaluation queries, result files."""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
from typing import Optional, Sequence

import numpy as np

from jaxrec import io
from jaxrec.data import datasets, splits
from jaxrec.data.log import DataError, InteractionLog
from jaxrec.eval import paper_protocols
from jaxrec.eval.queries import Queries


@dataclasses.dataclass(frozen=True)
class Prepared:
  """A dataset, its split, and the validation/test queries, under ``protocol``."""

  spec: str
  log: InteractionLog
  split: splits.Split
  valid_queries: Queries
  test_queries: Queries
  protocol: Optional[paper_protocols.EvalProtocol] = None

  @property
  def name(self) -> str:
    return datasets.short_name(self.spec)

  @property
  def num_items(self) -> int:
    return self.log.num_items


def prepare(spec: str, split: str, *, seed: int = 0, cache_dir: Optional[str] = None,
            log: Optional[InteractionLog] = None, deduplicate: Optional[bool] = None,
            protocol: Optional[str] = None) -> Prepared:
  """Loads ``spec`` (unless ``log`` is given) and applies its protocol (``paper_protocols``).

  The protocol is ``protocol`` (a name in ``paper_protocols.PROTOCOLS``) or the one named for
  ``split`` (``paper_protocols.FOR_SPLIT``: leave-last-out and the hold-outs drop repeated (user,
  item) rows and exclude known items; chronological keeps repeats), with every seed set to
  ``seed``; ``deduplicate`` overrides its de-duplication.
  """
  proto = paper_protocols.get(protocol) if protocol else paper_protocols.for_split(split)
  if proto.split != split:
    raise ValueError(f"prepare: protocol {proto.name!r} uses split {proto.split!r}, not {split!r}")
  proto = proto.with_seed(seed)
  if deduplicate is not None:
    proto = proto.replace(deduplicate=deduplicate)
  if log is None:
    log = datasets.load_dataset(spec, seed=seed, cache_dir=cache_dir)
  p = paper_protocols.prepare(log, proto)
  return Prepared(spec=spec, log=p.log, split=p.split, valid_queries=p.valid_queries,
                  test_queries=p.test_queries, protocol=proto)


def test_rankings(prep: Prepared, which: str = "both", num_negatives: Optional[int] = None):
  """``(protocol, rankings)``: what a binary reports on ``prep``'s test queries.

  The named protocol's ranking protocols (:meth:`EvalProtocol.rankings`), restricted to ``which``
  (``"full"``, ``"sampled"``, ``"both"``), with ``num_negatives`` (default: the protocol's) capped, with a
  warning, at what every test query can have, and the sampled candidates drawn once.
  """
  from jaxrec.eval import suite  # pylint: disable=import-outside-toplevel
  from jaxrec.train import fit  # pylint: disable=import-outside-toplevel
  wanted = num_negatives or prep.protocol.num_negatives
  if which != "full":
    wanted = fit.capped_negatives(prep.test_queries, prep.num_items, wanted, "test")
  proto = prep.protocol.replace(num_negatives=wanted if which != "full" else None,
                                full_ranking=which != "sampled")
  rankings = proto.rankings(prep.split.train.item_counts())
  return proto, suite.freeze_protocols(rankings, prep.test_queries, prep.num_items)


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
  flags.DEFINE_bool("verbose_libraries", False,
                    "Show third-party (Orbax, JAX, absl) INFO logs; by default only their warnings.")


def _own_dirs() -> tuple:
  import jaxrec  # pylint: disable=import-outside-toplevel
  return tuple(os.path.dirname(os.path.abspath(m)) + os.sep for m in (jaxrec.__file__, __file__))


class _QuietLibraries:
  """A logging filter: below WARNING, only records logged by jaxrec's and the binaries' own code."""

  def __init__(self):
    self.own = _own_dirs()

  def filter(self, record) -> bool:
    import logging  # pylint: disable=import-outside-toplevel
    return record.levelno >= logging.WARNING or os.path.abspath(record.pathname or "").startswith(self.own)


def quiet_libraries() -> None:
  """Drops third-party INFO logs (Orbax logs each checkpoint file) unless ``--verbose_libraries``."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
  if flags.FLAGS.is_parsed() and "verbose_libraries" in flags.FLAGS and flags.FLAGS.verbose_libraries:
    return
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
    handler.addFilter(_QuietLibraries())


def _run_errors() -> tuple:
  """The one-line errors of training runs (imported only when one propagates)."""
  from experiments import configs  # pylint: disable=import-outside-toplevel
  from jaxrec.train import checkpoint, fit  # pylint: disable=import-outside-toplevel
  return (checkpoint.ConfigMismatchError, checkpoint.CheckpointError, fit.ConfigError, configs.FlagError)


def require_registered_model(name: str) -> None:
  """One ``error:`` line when ``--config.model`` names no registered model."""
  from jaxrec.models import registry  # pylint: disable=import-outside-toplevel
  if name not in registry.names():
    raise SystemExit(f"error: --config.model={name!r} is not a registered model; "
                     f"registered: {registry.names()}")


def friendly_errors(main):
  """Wraps a binary's ``main``: bad input ends the program with one ``error:`` line, no traceback.

  Caught: ``DataError`` (bad data or dataset spec), a workdir of another config
  (``ConfigMismatchError``), unreadable checkpoints or a workdir that is a file (``CheckpointError``),
  a config field out of range (``ConfigError``), a file where a directory is wanted
  (``FileExistsError``/``NotADirectoryError``, e.g. ``--workdir``), and Ctrl-C (exit status 130, with the
  step to resume from when the loop knows it). Also quiets third-party INFO logs (:func:`quiet_libraries`).
  """
  import functools  # pylint: disable=import-outside-toplevel

  @functools.wraps(main)
  def wrapped(argv):
    quiet_libraries()
    try:
      return main(argv)
    except DataError as e:
      raise SystemExit(f"error: {e}") from None
    except KeyboardInterrupt as e:
      msg = str(e) or "interrupted"
      sys.stderr.write(f"error: {msg}\n")
      sys.stderr.flush()
      raise SystemExit(130) from None
    except _run_errors() as e:  # evaluated only when an exception propagates
      raise SystemExit(f"error: {e}") from None
    except (FileExistsError, NotADirectoryError) as e:
      if not e.filename:
        raise
      raise SystemExit(f"error: {e.filename} (or a folder above it) is a file, not a directory; "
                       "pass another --workdir") from None

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


def print_tables(tables) -> None:
  """Prints report tables to stdout for a binary's run: ``## title``, the columns, one line per row
  (floats to 4 places, missing cells empty; the ``command`` column is left out: ``results.json`` and
  ``report.md`` keep it)."""
  for table in tables:
    print(f"\n## {table.title}")
    cols = [c for c in table.columns if c != "command"]
    print(" | ".join(cols))
    for r in table.rows:
      print(" | ".join(f"{r.get(c):.4f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols))
