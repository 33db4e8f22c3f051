"""Machine-readable metrics log: JSON lines (`metrics.jsonl`) in the run's workdir.

Each record is one JSON object on one line with at least `"step"` and `"kind"` (`"train"` or
`"eval"`). Lines are appended with a single `write` and flushed, so a kill can at worst leave one
torn last line; `read_metrics` skips it and `MetricsWriter(..., resume_step=s)` rewrites the file
(to a temporary file, then `os.replace`, which is atomic) keeping only the records with
`step <= s`, i.e. those already covered by the checkpoint the run resumes from. A resumed run
therefore writes exactly the log an uninterrupted run would have written. The file is created with
its first record, so an early-killed run leaves none rather than an empty one.
"""

from __future__ import annotations

import json
import os
from typing import Any, List, Mapping, Optional

from jaxrec import io

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str) -> List[dict]:
  """Reads a JSON-lines metrics file, skipping a torn (unparsable) last line. Missing file -> []."""
  if not os.path.exists(path):
    return []
  records = []
  with open(path, "r", encoding="utf-8") as f:
    for line in f:
      if not line.endswith("\n"):
        break  # Torn write from a killed run.
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        break
  return records


class MetricsWriter:
  """Appends metric records to a JSON-lines file.

  Args:
    path: the file (usually `<workdir>/metrics.jsonl`).
    resume_step: if not None, first drops the records with `step > resume_step` (and any torn line);
      if None, an existing file is truncated (a fresh run).
  """

  def __init__(self, path: str, resume_step: Optional[int] = None):
    self.path = path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    kept = [] if resume_step is None else [r for r in read_metrics(path) if r["step"] <= resume_step]
    if kept:
      io.atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    elif os.path.exists(path):
      os.remove(path)  # A fresh run: no file until its first record (never an empty one).
    self.records: List[dict] = kept
    self._file = None

  def write(self, record: Mapping[str, Any]) -> dict:
    """Appends one record (converted to JSON values) and flushes it; returns the converted record."""
    record = io.to_json_compatible(record)
    if self._file is None:
      self._file = open(self.path, "a", encoding="utf-8")
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    self.records.append(record)
    return record

  def close(self) -> None:
    if self._file is not None and not self._file.closed:
      self._file.flush()
      os.fsync(self._file.fileno())
      self._file.close()

  def __enter__(self) -> "MetricsWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
