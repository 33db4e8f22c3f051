"""Dataset specs: one string names any dataset an experiment binary can run on.

=======================================  ==================================================
spec                                     meaning
=======================================  ==================================================
``synthetic:PRESET``                     the embedded generator (``tiny`` ... ``large``)
``ml-100k``                              MovieLens-100K from the ``recbole==1.2.1`` wheel
``FORMAT:PATH``                          a public dataset's own file, read by
                                         :func:`jaxrec.data.loaders.load` (e.g.
                                         ``ml-25m:/data/ml-25m/ratings.csv``,
                                         ``taobao:/data/UserBehavior.csv``)
``FORMAT:PATH?OPTION=VALUE&...``         the same with the reader's options, as a URL query
                                         (``csv:/data/r.csv?user=user_id&item=movie&timestamp=ts``,
                                         ``csv:r.tsv?delimiter=%09``, ``taobao:PATH?behaviors=buy,cart``)
=======================================  ==================================================

The generic ``csv`` and ``parquet`` formats read the columns ``user`` and ``item`` unless told
otherwise, and the column named ``timestamp`` as the time when the file has one (``timestamp=``
with no value: the row order is the time). :func:`describe` says which file columns were read as
what; :func:`load_dataset` logs it, and warns when the time is the row order.

Experiment binaries take ``--dataset=SPEC``; nothing here downloads except the
ML-100K wheel from PyPI into the cache directory.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import urllib.parse
from typing import Any, Dict, Optional

from absl import logging

from jaxrec.data.log import DataError, InteractionLog

_GENERIC = ("csv", "parquet")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """A parsed dataset spec.

  Attributes:
    spec: the spec string as given.
    kind: ``"synthetic"``, ``"ml-100k"`` or a format of :data:`jaxrec.data.loaders.FORMATS`.
    path: the preset (synthetic) or the file path; None for ``ml-100k``.
    options: the reader's keyword options from the spec's query (values converted to the
      reader's parameter types).
  """

  spec: str
  kind: str
  path: Optional[str]
  options: Dict[str, Any]


def _convert(fmt: str, key: str, value: str, param: inspect.Parameter) -> Any:
  """A query value as the reader's parameter type (from its default / annotation)."""
  default, ann = param.default, str(param.annotation)
  if value == "" and (default is None or "Optional" in ann):
    return None
  if isinstance(default, bool) or ann == "bool":
    if value.lower() in ("1", "true", "yes"):
      return True
    if value.lower() in ("0", "false", "no"):
      return False
    raise DataError(f"dataset spec option {key}={value!r} of format {fmt!r}: expected true or false")
  if isinstance(default, int) or ann == "int":
    try:
      return int(value)
    except ValueError:
      raise DataError(f"dataset spec option {key}={value!r} of format {fmt!r}: expected an integer") from None
  if "Sequence" in ann:
    return [v for v in value.split(",") if v]
  return value


def parse_spec(spec: str) -> DatasetSpec:
  """Parses a dataset spec (table above); raises :class:`DataError` for a malformed one."""
  if spec == "ml-100k":
    return DatasetSpec(spec, "ml-100k", None, {})
  if ":" not in spec:
    raise DataError(f"dataset spec {spec!r}: expected 'synthetic:PRESET', 'ml-100k' or 'FORMAT:PATH'")
  kind, arg = spec.split(":", 1)
  if kind == "synthetic":
    return DatasetSpec(spec, kind, arg, {})
  from jaxrec.data import loaders  # pylint: disable=import-outside-toplevel
  if kind not in loaders.FORMATS:
    raise DataError(f"dataset spec {spec!r}: unknown format {kind!r}; known: {sorted(loaders.FORMATS)}")
  if os.path.exists(arg):  # a file whose name holds '?' is taken as it is
    return DatasetSpec(spec, kind, arg, {})
  parts = urllib.parse.urlsplit(arg, allow_fragments=False)
  path = urllib.parse.urlunsplit(parts._replace(query=""))
  if not parts.query:
    return DatasetSpec(spec, kind, path, {})
  try:
    pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
  except ValueError:
    raise DataError(f"dataset spec {spec!r}: options must read '?name=value&name=value'") from None
  params = {k: p for k, p in inspect.signature(loaders.FORMATS[kind]).parameters.items() if k != "path"}
  options: Dict[str, Any] = {}
  for key, value in pairs:
    if key in options:
      raise DataError(f"dataset spec {spec!r}: option {key!r} given twice")
    if key not in params:
      raise DataError(f"dataset spec {spec!r}: format {kind!r} has no option {key!r}; "
                      f"it takes {sorted(params)}")
    options[key] = _convert(kind, key, value, params[key])
  return DatasetSpec(spec, kind, path, options)


def describe(spec: str) -> Dict[str, Any]:
  """What ``spec`` reads, for logs and ``results.json``: format, path, options and column map.

  For ``csv``/``parquet`` ``column_map`` is ``{"user": COLUMN, "item": COLUMN, "timestamp": COLUMN or
  None, "rating": COLUMN or None}`` (a None timestamp: the row order is the time); other formats read
  their published columns and have no ``column_map``. Reads only a file's header.
  """
  ds = parse_spec(spec)
  out: Dict[str, Any] = {"spec": spec, "format": ds.kind, "path": ds.path, "options": dict(ds.options)}
  if ds.kind in _GENERIC:
    from jaxrec.data import loaders  # pylint: disable=import-outside-toplevel
    out["column_map"] = loaders.generic_column_map(ds.kind, ds.path, **ds.options)
  return out


def column_summary(description: Dict[str, Any]) -> str:
  """One line: ``columns read: user <- 'user_id', item <- 'movie', timestamp <- 'ts'``."""
  cmap = description.get("column_map")
  if not cmap:
    return f"{description['format']}: the format's own columns"
  read = [f"{k} <- {v!r}" for k, v in cmap.items() if v is not None]
  if cmap.get("timestamp") is None:
    read.append("timestamp <- row order (no time column)")
  return "columns read: " + ", ".join(read)


def load_dataset(spec: str, *, seed: int = 0, cache_dir: Optional[str] = None) -> InteractionLog:
  """Resolves a dataset spec (table above) to an :class:`InteractionLog`."""
  ds = parse_spec(spec)
  if ds.kind == "ml-100k":
    from jaxrec.data import ml100k  # pylint: disable=import-outside-toplevel
    return ml100k.load_ml100k(cache_dir=cache_dir)
  if ds.kind == "synthetic":
    from jaxrec.data import synthetic  # pylint: disable=import-outside-toplevel
    return synthetic.generate(ds.path, seed=seed)
  from jaxrec.data import loaders  # pylint: disable=import-outside-toplevel
  options = dict(ds.options)
  if ds.kind in _GENERIC:
    cmap = loaders.generic_column_map(ds.kind, ds.path, **options)
    options["timestamp"] = cmap["timestamp"]
    line = column_summary({"format": ds.kind, "column_map": cmap})
    if cmap["timestamp"] is None:
      logging.warning("%s: %s; name one with ?timestamp=COLUMN", ds.path, line)
    else:
      logging.info("%s: %s", ds.path, line)
  try:
    return loaders.load(ds.kind, ds.path, **options)
  except DataError as e:
    if ds.kind in _GENERIC and "missing column" in str(e):
      raise DataError(f"{e}; name the columns in the spec, e.g. "
                      f"{ds.kind}:PATH?user=COLUMN&item=COLUMN&timestamp=COLUMN") from None
    raise


def short_name(spec: str) -> str:
  """A report-friendly name: ``synthetic:small`` -> ``synthetic-small``, paths -> file stem."""
  if spec == "ml-100k":
    return spec
  kind, _, arg = spec.partition(":")
  if kind == "synthetic":
    return f"synthetic-{arg}"
  path = arg if os.path.exists(arg) else urllib.parse.urlsplit(arg, allow_fragments=False).path
  return f"{kind}-{os.path.splitext(os.path.basename(path))[0]}"
