"""Renders experiment results as ``report.md`` (markdown tables, figures)."""

from __future__ import annotations

import os
from typing import Any, Sequence

from experiments.registry import Experiment, ExperimentResult, Table


def format_cell(value: Any) -> str:
  """Numbers with 4 significant decimals, everything else as text."""
  if isinstance(value, bool):
    return str(value)
  if isinstance(value, float):
    return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
  if value is None:
    return "–"
  return str(value).replace("|", "\\|")


def table_markdown(table: Table) -> str:
  """One table; the ``command`` column, if any, is rendered as code last."""
  cols = [c for c in table.columns if c != "command"]
  has_cmd = any("command" in r for r in table.rows)
  header = cols + (["command"] if has_cmd else [])
  lines = [f"**{table.title}**", ""]
  if table.caption:
    lines += [table.caption, ""]
  lines.append("| " + " | ".join(header) + " |")
  lines.append("|" + "---|" * len(header))
  for row in table.rows:
    cells = [format_cell(row.get(c)) for c in cols]
    if has_cmd:
      cells.append(f"`{row['command']}`" if row.get("command") else "")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def render(sections: Sequence[tuple[Experiment, ExperimentResult | None, str | None, float]],
           workdir: str, header: str) -> str:
  """Builds report.md from (experiment, result or None, error or None, seconds)."""
  out = [header, ""]
  for exp, res, err, seconds in sections:
    out.append(f"## {exp.title}")
    out.append("")
    out.append(f"_experiment `{exp.name}`, {seconds:.0f} s_")
    out.append("")
    if err is not None:
      out += ["**FAILED**:", "", "```", err.strip(), "```", ""]
      continue
    assert res is not None
    if res.markdown:
      out += [res.markdown.strip(), ""]
    for table in res.tables:
      out += [table_markdown(table), ""]
    for fig in res.figures:
      rel = os.path.relpath(fig, workdir)
      out += [f"![{os.path.basename(fig)}]({rel})", ""]
    for note in res.notes:
      out += [f"- {note}"]
    if res.notes:
      out.append("")
  return "\n".join(out)
