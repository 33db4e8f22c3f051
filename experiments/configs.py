"""One configuration mechanism for every binary: a config dataclass exposed as ``--config.FIELD`` flags.

Each binary keeps its settings in one dataclass (often the library's own frozen config, e.g.
:class:`jaxrec.train.fit.FitConfig`, nested inside the binary's), and exposes it with
``ml_collections.config_flags.DEFINE_config_dataclass``: every field, nested ones included, is a flag::

    python -m experiments.train --dataset=ml-100k --config.model=sasrec --config.fit.epochs=20

Types come from the dataclass (a bad value is a one-line flag error naming the flag); tuples are
written as Python literals (``--config.models="('mf-bpr','gru4rec')"``). ``--dataset``, ``--split``,
``--workdir``, ``--seed`` and ``--cache_dir`` stay plain flags shared by all binaries
(:func:`experiments.common.define_data_flags`).

ml_collections sets fields with ``setattr``, so it cannot fill a frozen dataclass; :func:`define` hands it
a mutable twin of the config class (same fields, recursively) and :func:`value` turns the parsed twin back
into the frozen class, so library code only ever sees its own frozen configs.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any

_TWIN = "__frozen_class__"


@functools.lru_cache(maxsize=None)
def _mutable_twin(cls: type) -> type:
  """A non-frozen dataclass with ``cls``'s fields (nested dataclass fields twinned too)."""
  fields = []
  hints = typing.get_type_hints(cls)  # resolves string annotations (``from __future__ import annotations``)
  for f in dataclasses.fields(cls):
    if not f.init:
      continue
    default = getattr(cls(), f.name) if _has_defaults(cls) else f.default
    if dataclasses.is_dataclass(default):
      twin = _mutable_twin(type(default))
      fields.append((f.name, twin, dataclasses.field(default_factory=functools.partial(_to_twin, default))))
    else:
      fields.append((f.name, hints[f.name], dataclasses.field(default=default)))
  twin = dataclasses.make_dataclass(f"{cls.__name__}Flags", fields)
  setattr(twin, _TWIN, cls)
  return twin


def _has_defaults(cls: type) -> bool:
  try:
    cls()
  except TypeError:
    return False
  return True


def _to_twin(cfg: Any) -> Any:
  twin = _mutable_twin(type(cfg))
  kwargs = {}
  for f in dataclasses.fields(cfg):
    if f.init:
      v = getattr(cfg, f.name)
      kwargs[f.name] = _to_twin(v) if dataclasses.is_dataclass(v) else v
  return twin(**kwargs)


class FlagError(ValueError):
  """A config field out of range, named by its flag (``--config.fit.epochs must be >= 1, got -1``)."""


def _from_twin(value: Any, prefix: str = "config") -> Any:
  cls = getattr(type(value), _TWIN, None)
  if cls is None:
    return value
  kwargs = {f.name: _from_twin(getattr(value, f.name), f"{prefix}.{f.name}")
            for f in dataclasses.fields(value)}
  from jaxrec.train import fit  # pylint: disable=import-outside-toplevel
  try:
    return cls(**kwargs)
  except fit.ConfigError as e:  # the field's own check (``__post_init__``), named by its flag here
    raise FlagError(f"--{prefix}.{e.field} {e.requirement}") from None


def define(default: Any, name: str = "config", help_string: str = "The binary's configuration."):
  """Defines ``--config`` (and ``--config.FIELD...``) from the dataclass instance ``default``."""
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  return config_flags.DEFINE_config_dataclass(name, _to_twin(default), help_string)


def value(holder) -> Any:
  """The parsed config as an instance of the original (frozen) class.

  Raises:
    FlagError: a field's check failed; the message names the flag (``--config.strategy.steps``) at
      whatever depth the field sits.
  """
  return _from_twin(holder.value)


def to_dict(cfg: Any) -> dict:
  """The config as a JSON-able dict (for ``results.json``)."""
  return dataclasses.asdict(cfg)


def overrides(cfg: Any, default: Any, prefix: str = "config") -> dict:
  """``{"config.a.b": value}`` for every field of ``cfg`` that differs from ``default``."""
  out = {}
  for f in dataclasses.fields(cfg):
    a, b = getattr(cfg, f.name), getattr(default, f.name)
    if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
      out.update(overrides(a, b, f"{prefix}.{f.name}"))
    elif a != b:
      out[f"{prefix}.{f.name}"] = a
  return out
