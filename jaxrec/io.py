"""Atomic file writes: nothing a user saved is ever left half-written.

Every result, report and figure jaxrec writes goes through these helpers: the
content is written to a temporary file in the same directory, flushed and
fsync-ed, then moved over the destination with ``os.replace`` (atomic on POSIX).
A crash leaves either the old file or the new one, never a truncated mix. Files get the
permissions an ``open`` would give (``0666`` less the umask), not ``mkstemp``'s ``0600``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from typing import Any, Iterator, Mapping

import numpy as np


def _umask() -> int:
  """The process umask, read without changing it where Linux allows (other threads write files)."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError):
    pass
  mask = os.umask(0o077)  # elsewhere: set and restore at once (a restrictive mask meanwhile)
  os.umask(mask)
  return mask


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path; on success it is renamed to ``path``.

  Use it for writers that want a filename (e.g. ``matplotlib.savefig``).
  On error the temporary file is removed and ``path`` is untouched.
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  suffix = os.path.splitext(path)[1]
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
  try:
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; a saved file gets the umask's permissions
  finally:
    os.close(fd)
  try:
    yield tmp
    with open(tmp, "rb+") as f:
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def atomic_write_text(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` atomically."""
  with atomic_path(path) as tmp:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)


def save_figure(fig, path: str, dpi: int = 110) -> str:
  """Saves a matplotlib figure as PNG atomically (``bbox_inches="tight"``); returns ``path``."""
  with atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
  return path


def to_json_compatible(obj: Any) -> Any:
  """Plain-Python copy of ``obj`` for JSON: mappings, sequences, numpy/jax arrays and scalars.

  Non-finite floats become the strings ``"nan"``, ``"inf"``, ``"-inf"`` so every file jaxrec writes is
  strict JSON (``json.dumps`` would otherwise emit the non-standard ``NaN``).
  """
  if isinstance(obj, Mapping):
    return {str(k): to_json_compatible(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_json_compatible(v) for v in obj]
  if obj is None or isinstance(obj, (bool, str, bytes)):
    return obj
  if isinstance(obj, np.ndarray) or hasattr(obj, "__array__"):
    arr = np.asarray(obj)
    return to_json_compatible(arr.item() if arr.ndim == 0 else arr.tolist())
  if isinstance(obj, np.generic):
    obj = obj.item()
  if isinstance(obj, float) and not math.isfinite(obj):
    return repr(obj)
  return obj


def atomic_write_json(path: str, obj: Any) -> None:
  """Writes ``obj`` (numpy/jax values allowed) as indented JSON, atomically."""
  atomic_write_text(path, json.dumps(to_json_compatible(obj), indent=2, sort_keys=False) + "\n")
