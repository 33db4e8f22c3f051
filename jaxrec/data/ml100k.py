"""MovieLens-100K, obtained from the ``recbole==1.2.1`` wheel on PyPI into a cache directory.

The wheel ships the real ML-100K as ``recbole/dataset_example/ml-100k/ml-100k.inter`` (RecBole atomic
format: 943 users, 1682 items, 100000 ratings). :func:`load_ml100k` downloads the wheel once with
``python -m pip download --no-deps --only-binary=:all: recbole==1.2.1`` (recbole is never
installed: it would pull torch), then reads the member straight from the zip with the RecBole
``.inter`` reader of :mod:`jaxrec.data.loaders`. Nothing is written into the repository.

Cache directory: the ``cache_dir`` argument, else ``$JAXREC_CACHE``, else ``~/.cache/jaxrec``.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from typing import Optional

from jaxrec.data import loaders
from jaxrec.data.log import DataError, InteractionLog

RECBOLE_REQUIREMENT = "recbole==1.2.1"
WHEEL_GLOB = "recbole-1.2.1-*.whl"
MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"


def cache_dir_path(cache_dir: Optional[str] = None) -> str:
  """The cache directory: argument, else ``$JAXREC_CACHE``, else ``~/.cache/jaxrec``."""
  if cache_dir is None:
    cache_dir = os.environ.get("JAXREC_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "jaxrec")
  return os.path.abspath(os.fspath(cache_dir))


def pip_command(dest: str) -> list:
  """The pip command that downloads the wheel (and nothing else) into ``dest``."""
  return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
          RECBOLE_REQUIREMENT, "-d", dest]


def wheel_path(cache_dir: Optional[str] = None) -> str:
  """Path of the cached recbole wheel, downloading it first if it is not cached.

  The download goes to a temporary folder inside the cache and is moved in when complete, so an
  interrupted download never leaves a partial wheel behind.
  """
  cache = cache_dir_path(cache_dir)
  found = sorted(glob.glob(os.path.join(cache, WHEEL_GLOB)))
  if found:
    return found[0]
  os.makedirs(cache, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix="download-", dir=cache)
  try:
    cmd = pip_command(tmp)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    got = sorted(glob.glob(os.path.join(tmp, WHEEL_GLOB)))
    if proc.returncode != 0 or not got:
      tail = (proc.stderr or proc.stdout or "").strip()[-800:]
      raise DataError(
          f"could not download the ML-100K source wheel ({RECBOLE_REQUIREMENT}) into {cache}: "
          f"`{' '.join(cmd)}` exited with status {proc.returncode} (offline? no PyPI access?). "
          f"Run it by hand with network access, or copy the wheel into {cache}. pip said: {tail}")
    dest = os.path.join(cache, os.path.basename(got[0]))
    os.replace(got[0], dest)
    return dest
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def load_ml100k(cache_dir: Optional[str] = None) -> InteractionLog:
  """MovieLens-100K as an InteractionLog (943 users, 1682 items, 100000 ratings 1-5, unix seconds).

  Raw user/item ids are the dataset's integers (vocabularies in sorted id order), so the encoding
  matches :func:`jaxrec.data.loaders.load_movielens_udata` on the original ``u.data``.
  """
  whl = wheel_path(cache_dir)
  try:
    zf = zipfile.ZipFile(whl)
  except zipfile.BadZipFile as e:
    raise DataError(f"{whl}: not a valid wheel ({e}); delete it so that it is downloaded again") from None
  with zf:
    if MEMBER not in zf.namelist():
      raise DataError(f"{whl}: has no member {MEMBER!r}; expected the {RECBOLE_REQUIREMENT} wheel")
    src = loaders.Source(f"{whl}!{MEMBER}", lambda: zf.open(MEMBER))
    return loaders.load_recbole(src, name="ml-100k")
