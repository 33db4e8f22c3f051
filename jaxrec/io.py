"""Atomic file writes: nothing a user saved is ever left half-written.

Every result, report and figure jaxrec writes goes through these helpers: the
content is written to a temporary file in the same directory, flushed and
fsync-ed, then moved over the destination with ``os.replace`` (atomic on POSIX).
A crash leaves either the old file or the new one, never a truncated mix.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Iterator

import numpy as np


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


def _to_builtin(obj: Any) -> Any:
  if isinstance(obj, dict):
    return {str(k): _to_builtin(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_to_builtin(v) for v in obj]
  if isinstance(obj, np.ndarray) or hasattr(obj, "__array__") and not isinstance(obj, (str, bytes)):
    arr = np.asarray(obj)
    return arr.item() if arr.ndim == 0 else arr.tolist()
  if isinstance(obj, (np.integer,)):
    return int(obj)
  if isinstance(obj, (np.floating,)):
    return float(obj)
  return obj


def to_json_compatible(obj: Any) -> Any:
  """Converts numpy/jax scalars and arrays inside ``obj`` to plain Python."""
  return _to_builtin(obj)


def atomic_write_json(path: str, obj: Any) -> None:
  """Writes ``obj`` (numpy/jax values allowed) as indented JSON, atomically."""
  atomic_write_text(path, json.dumps(_to_builtin(obj), indent=2, sort_keys=False) + "\n")
