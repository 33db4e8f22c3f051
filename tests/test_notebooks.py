"""The Colab notebooks: executed as notebooks (shortened), stripped, badged, and in sync with their twins.

Each `colab/NAME.ipynb` has a jupytext `colab/NAME.py` twin (py:percent). The suite runs the real
`.ipynb` through a Jupyter kernel with nbclient (a failing cell fails the test), with
`JAXREC_NOTEBOOK_SHORT=1`, which every notebook reads to shorten its run; the kernel starts in the
repository root, as a Colab runtime does after the install cell.
"""

import glob
import json
import os

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
NOTEBOOK_DIR = os.path.join(ROOT, "colab")
NOTEBOOKS = sorted(glob.glob(os.path.join(NOTEBOOK_DIR, "*.ipynb")))
CELL_TIMEOUT_S = 600


def _load(path):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _cells_py(path):
  """(cell_type, source) of a py:percent file, as jupytext splits it (markdown lines un-commented)."""
  cells, kind, cur = [], None, []
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  if lines and lines[0] == "# ---":  # the jupytext header
    lines = lines[lines.index("# ---", 1) + 1:]
  for line in lines:
    if line.startswith("# %%"):
      if kind is not None:
        cells.append((kind, "\n".join(cur).strip()))
      kind, cur = ("markdown" if "[markdown]" in line else "code"), []
    elif kind == "markdown":
      cur.append(line[2:] if line.startswith("# ") else line.lstrip("#"))
    elif kind is not None:
      cur.append(line)
  if kind is not None:
    cells.append((kind, "\n".join(cur).strip()))
  return cells


def test_every_notebook_has_a_twin():
  assert NOTEBOOKS, "no notebooks in colab/"
  twins = sorted(glob.glob(os.path.join(NOTEBOOK_DIR, "*.py")))
  assert [p[:-len(".ipynb")] for p in NOTEBOOKS] == [p[:-len(".py")] for p in twins]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_ipynb_matches_twin(path):
  nb = _load(path)
  cells = [(c["cell_type"], "".join(c["source"]).strip()) for c in nb["cells"]]
  assert cells == _cells_py(path[:-len(".ipynb")] + ".py"), "run `jupytext --sync` on the notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_opens_with_badge_install_and_backend(path):
  nb = _load(path)
  name = os.path.basename(path)
  first = "".join(nb["cells"][0]["source"])
  assert nb["cells"][0]["cell_type"] == "markdown"
  assert f"colab.research.google.com/github/jaxrec/jaxrec/blob/main/colab/{name}" in first
  assert "Run time at full length" in first and "RUNTIME_PLACEHOLDER" not in first, (
      "write the full-length run time into the first cell")
  install = "".join(next(c for c in nb["cells"] if c["cell_type"] == "code")["source"])
  assert "pip" in install and "jax.default_backend()" in install
  code = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
  assert "experiments" not in code, "notebooks use the library API, not the binaries' glue"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_outputs_stripped(path):
  for cell in _load(path)["cells"]:
    if cell["cell_type"] == "code":
      assert cell["outputs"] == [] and cell["execution_count"] is None, "strip the outputs before committing"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_executes(path, monkeypatch):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  monkeypatch.setenv("JAXREC_NOTEBOOK_SHORT", "1")
  monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend draws the figures
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                   resources={"metadata": {"path": ROOT}})
  client.execute()  # raises CellExecutionError, naming the cell and its traceback, if a cell fails
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if "image/png" in o.get("data", {})]
  assert images, "every notebook draws its figures inline"
