#!/usr/bin/env bash
# Creates the separate virtual environment that benchmarks/vs_recbole.py runs RecBole in.
#
#   bash benchmarks/recbole_env.sh [VENV_DIR]      (default: .venv-recbole, gitignored)
#
# RecBole 1.2.1 and torch live only here; jaxrec's own install (.venv, pyproject.toml) is unchanged.
# Pins and why:
#   torch==2.13.0   the CPU wheel from $TORCH_WHEEL_DIR (default /opt/wheels) when present; elsewhere
#                   torch==2.13.0 from the package index (its Linux wheel pulls CUDA libraries)
#   recbole==1.2.1  installed --no-deps: its metadata pins ray<=2.6.3, which only
#                   recbole.quick_start imports (hyper-parameter search); the benchmark builds
#                   RecBole's pieces itself (Config, create_dataset, data_preparation, get_model,
#                   get_trainer), so ray and hyperopt are left out. Every other requirement of the
#                   wheel's METADATA is installed below.
#   numpy<2         RecBole 1.2.1 sets `np.float = np.float_` (config/configurator.py) and uses np.float
#                   (evaluator/metrics.py); numpy 2 removed both
#   pandas<3        its Dataset fills NaNs with chained `feat[field].fillna(..., inplace=True)`, which
#                   pandas 3 (copy-on-write) turns into a no-op (pandas 2 warns)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$here/.venv-recbole}"
python="${PYTHON:-python3}"
wheels="${TORCH_WHEEL_DIR:-/opt/wheels}"

if [[ ! -x "$venv/bin/python" ]]; then
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)

local_torch=$(ls "$wheels"/torch-2.13.0+cpu-*.whl 2>/dev/null | head -n 1 || true)
if [[ -n "$local_torch" ]]; then
  "${pip[@]}" "$local_torch"
else
  echo "no torch-2.13.0+cpu wheel in $wheels: installing torch==2.13.0 from the package index" \
    "(on Linux its default wheel also pulls the CUDA libraries, several GB)" >&2
  "${pip[@]}" "torch==2.13.0"
fi
"${pip[@]}" --no-deps "recbole==1.2.1"
"${pip[@]}" "numpy<2" "pandas<3" "scipy>=1.6.0" "tqdm>=4.48.2" "colorlog==4.7.2" "colorama==0.4.4" \
  "scikit-learn>=0.23.2" "pyyaml>=5.1.0" "tensorboard>=2.5.0" "thop>=0.1.1.post2207130030" \
  "tabulate>=0.8.10" "plotly>=4.0.0" "texttable>=0.9.0" "psutil>=5.9.0"
# check: the pieces the benchmark imports, and the versions it records
"$venv/bin/python" - <<'EOF'
import numpy, pandas, torch, recbole
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.utils import get_model, get_trainer
print(f"recbole {recbole.__version__}, torch {torch.__version__}, numpy {numpy.__version__}, "
      f"pandas {pandas.__version__}")
EOF
echo "RecBole environment ready: $venv"
