"""Writes the theory report: numerical checks of the 2TS bound and (if present) the tree bounds.

Usage:
  python -m theory.report --workdir=DIR [--quick]

Writes DIR/theory.md (tables; PNG figures alongside in DIR) and DIR/theory.json. Each section module
exposes `run_section(workdir, quick) -> dict(markdown=str, figures=[paths], results=dict)`:
`theory.two_time_scale` (paper 000, Sec. 2 / App. A) and, when importable, `theory.tree_bounds`
(paper 004). Expected runtime on 2 CPU cores: about 1 min with --quick, a few minutes without.
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags

from jaxrec import io
from theory import two_time_scale


def _optional_tree_bounds():
  """Imports theory.tree_bounds if the module exists; errors raised inside it propagate."""
  try:
    from theory import tree_bounds
  except ModuleNotFoundError as e:
    if e.name != "theory.tree_bounds":
      raise
    return None
  return tree_bounds



def build_report(workdir: str, quick: bool = False) -> dict:
  """Runs every available section and writes theory.md / theory.json atomically; returns the results."""
  os.makedirs(workdir, exist_ok=True)
  sections = [("two_time_scale", two_time_scale)]
  tree = _optional_tree_bounds()
  if tree is not None:
    sections.append(("tree_bounds", tree))
  md = ["# jaxrec theory checks", "", f"Mode: {'quick' if quick else 'full'}.", ""]
  results, timings = {}, {}
  for name, module in sections:
    t0 = time.time()
    out = module.run_section(workdir, quick)
    timings[name] = time.time() - t0
    md += [out["markdown"], ""]
    md += [f"![{os.path.basename(p)}]({os.path.relpath(p, workdir)})" for p in out["figures"]]
    md.append("")
    figures = [os.path.relpath(p, workdir) for p in out["figures"]]
    results[name] = dict(results=out["results"], figures=figures)
  if tree is None:
    md.append("(theory.tree_bounds not available: section skipped.)")
  results["seconds"] = timings
  io.atomic_write_text(os.path.join(workdir, "theory.md"), "\n".join(md) + "\n")
  io.atomic_write_text(os.path.join(workdir, "theory.json"),
                json.dumps(io.to_json_compatible(results), indent=1))
  return results


def main(argv):
  del argv
  build_report(flags.FLAGS.workdir, flags.FLAGS.quick)


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "Output directory for theory.md, theory.json and figures.")
  flags.DEFINE_bool("quick", False, "Smaller grids and simulations (for a fast local check).")
  flags.mark_flag_as_required("workdir")
  app.run(main)
