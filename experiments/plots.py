"""Small matplotlib helpers for the report's PNG figures (Agg backend, atomic writes)."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=wrong-import-position

from jaxrec import io  # noqa: E402  pylint: disable=wrong-import-position


def save(fig, path: str) -> str:
  """Writes ``fig`` as PNG atomically and closes it."""
  fig.tight_layout()
  io.save_figure(fig, path)
  plt.close(fig)
  return path


def line_plot(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str, *, xlabel: str,
              ylabel: str, title: str, vline: Optional[float] = None, vline_label: str = "",
              logx: bool = False) -> str:
  """One line per ``{name: (x, y)}``; optional vertical marker (e.g. a threshold)."""
  fig, ax = plt.subplots(figsize=(6.4, 4.0))
  for name, (x, y) in series.items():
    ax.plot(list(x), list(y), marker="o", markersize=3, label=name)
  if vline is not None:
    ax.axvline(vline, color="gray", linestyle="--", label=vline_label or None)
  if logx:
    ax.set_xscale("log")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return save(fig, path)


def grouped_bars(groups: Sequence[str], series: Mapping[str, Sequence[float]], path: str, *, ylabel: str,
                 title: str, xlabel: str = "") -> str:
  """Bars of each ``{name: values per group}`` side by side within each group."""
  fig, ax = plt.subplots(figsize=(max(6.4, 0.9 * len(groups) + 2), 4.0))
  n = max(1, len(series))
  width = 0.8 / n
  for k, (name, values) in enumerate(series.items()):
    xs = [g + (k - (n - 1) / 2) * width for g in range(len(groups))]
    ax.bar(xs, list(values), width=width, label=name)
  ax.set_xticks(range(len(groups)))
  ax.set_xticklabels(list(groups), rotation=30, ha="right", fontsize=8)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(axis="y", alpha=0.3)
  ax.legend(fontsize=8)
  return save(fig, path)
