"""The Colab notebooks run (shortened) and their .ipynb stays in sync with the jupytext .py twin."""

import glob
import json
import os
import runpy

import pytest

NOTEBOOK_DIR = os.path.join(os.path.dirname(__file__), "..", "colab")
TWINS = sorted(glob.glob(os.path.join(NOTEBOOK_DIR, "*.py")))


def _code_cells_py(path):
  cells, cur = [], None
  with open(path, encoding="utf-8") as f:
    for line in f.read().splitlines():
      if line.startswith("# %%"):
        if cur is not None:
          cells.append(cur)
        cur = [] if "[markdown]" not in line else None
      elif cur is not None:
        cur.append(line)
  if cur is not None:
    cells.append(cur)
  return ["\n".join(c).strip() for c in cells]


@pytest.mark.parametrize("twin", TWINS, ids=os.path.basename)
def test_ipynb_matches_twin(twin):
  with open(twin.replace(".py", ".ipynb"), encoding="utf-8") as f:
    nb = json.load(f)
  code = ["".join(c["source"]).strip() for c in nb["cells"] if c["cell_type"] == "code"]
  assert code == _code_cells_py(twin), "run `jupytext --sync` on the notebook"


@pytest.mark.slow
@pytest.mark.parametrize("twin", TWINS, ids=os.path.basename)
def test_notebook_runs(twin, monkeypatch):
  monkeypatch.setenv("JAXREC_NOTEBOOK_EPOCHS", "1")
  monkeypatch.setenv("JAXREC_NOTEBOOK_PRESET", "tiny")
  ns = runpy.run_path(twin)
  assert ns["sasrec"]["full"]["summary"]["num_queries"] > 0
