"""MovieLens-100K, obtained from the ``recbole==1.2.1`` wheel on PyPI into a cache directory.

The wheel ships the real ML-100K as ``recbole/dataset_example/ml-100k/ml-100k.inter`` (RecBole atomic
format: 943 users, 1682 items, 100000 ratings). :func:`load_ml100k` downloads the wheel once with
``python -m pip download --no-deps --only-binary=:all: recbole==1.2.1`` (recbole is never
installed: it would pull torch), then reads the member straight from the zip with the RecBole
``.inter`` reader of :mod:`jaxrec.data.loaders`. Nothing is written into the repository.

Item features (:func:`item_features`) come from the wheel's ``ml-100k.item`` (header
``item_id:token  movie_title:token_seq  release_year:token  class:token_seq``, 1682 rows) as
float32 ``[num_items, 21]`` rows aligned with the log's item vocabulary, columns
:data:`FEATURE_NAMES`:

* 0-18: the 19 genre flags, multi-hot from ``class`` (space-separated genre names, in the order of
  the original ``u.genre``, :data:`GENRES`; ``unknown`` is one of them, so every real row has >= 1);
* 19: ``release_year`` standardised, ``(year - mean) / std`` over the log's items whose year is
  known (1922-1998 in the real file), 0 where the year is missing;
* 20: ``release_year_missing``, 1 where ``release_year`` is not a 4-digit year (the real file has
  two: item 267 ``unkonwn`` and item 1412 ``V``; the title is not parsed for a year).

Items of the log without a row in the ``.item`` file, a duplicated item row and a genre outside
:data:`GENRES` raise :class:`~jaxrec.data.log.DataError` (the real file has every item once: a gap
means a wrong file, and a zero row would pass for a genre-less, average-year film). Rows of items
absent from the log are dropped.

Cache directory: the ``cache_dir`` argument, else ``$JAXREC_CACHE``, else ``~/.cache/jaxrec``.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jaxrec.data import loaders
from jaxrec.data.log import DataError, InteractionLog, Vocab

RECBOLE_REQUIREMENT = "recbole==1.2.1"
WHEEL_GLOB = "recbole-1.2.1-*.whl"
MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"
ITEM_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.item"

# the 19 genres of ML-100K's u.genre, in its order
GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
          "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
          "Sci-Fi", "Thriller", "War", "Western")
FEATURE_NAMES = GENRES + ("release_year", "release_year_missing")
_ITEM_FIELDS = {"item_id": "token", "release_year": "token", "class": "token_seq"}


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


def item_features(src, vocab: Vocab) -> np.ndarray:
  """ML-100K item features from a RecBole ``ml-100k.item`` file, aligned with ``vocab``.

  Args:
    src: the ``.item`` file (a path or a :class:`jaxrec.data.loaders.Source`).
    vocab: the log's item vocabulary (integer raw ids); row ``k`` of the result belongs to the item
      whose raw id is ``vocab.raw[k]``, whatever the order of the file's rows.

  Returns:
    float32 ``[len(vocab), len(FEATURE_NAMES)]``: genre multi-hot, standardised release year,
    missing-year flag (see the module docstring).

  Raises:
    DataError: a missing header field, an item of ``vocab`` without a row, an item with two rows,
      an item id that is not an integer, or a genre outside :data:`GENRES`.
  """
  src = loaders._source(src)  # pylint: disable=protected-access
  names, kinds = loaders._recbole_header(src)  # pylint: disable=protected-access
  for field, kind in _ITEM_FIELDS.items():
    if field not in names or kinds[names.index(field)] != kind:
      raise DataError(f"{src.name}: expected a field '{field}:{kind}' in the RecBole header; the "
                      f"header is {[f'{n}:{k}' for n, k in zip(names, kinds)]}")
  if vocab.raw.dtype.kind not in "iu":
    raise DataError(f"{src.name}: expected a vocabulary of integer item ids, got {vocab.raw.dtype}")
  types = {n: pa.string() for n in names}
  batches = list(loaders._csv_batches(  # pylint: disable=protected-access
      src, names=names, include=list(_ITEM_FIELDS), types=types, delimiter="\t", quoting=False,
      required=["item_id"], header_rows=1))
  table = pa.Table.from_batches(batches).combine_chunks() if batches else None
  if table is None or not len(table):
    raise DataError(f"{src.name}: no item rows after the header")
  raw = table.column("item_id")
  canon = pc.match_substring_regex(raw, r"^(0|[1-9][0-9]{0,17})$").to_numpy(zero_copy_only=False)
  if not canon.all():
    k = int(np.argmin(canon))
    raise DataError(f"{src.name}, line {k + 2}, column 'item_id': {raw[k].as_py()!r} is not an "
                    "integer id")
  keys = raw.cast(pa.int64()).to_numpy()
  pos = np.clip(np.searchsorted(vocab.raw, keys), 0, max(len(vocab) - 1, 0))
  found = (vocab.raw[pos] == keys) if len(vocab) else np.zeros(len(keys), bool)
  rows = np.bincount(pos[found], minlength=len(vocab))
  if np.any(rows == 0):
    gaps = vocab.raw[rows == 0]
    raise DataError(f"{src.name}: {gaps.size} item(s) of the log have no row, e.g. item_id "
                    f"{gaps[:5].tolist()}")
  if np.any(rows > 1):
    raise DataError(f"{src.name}: item_id {vocab.raw[rows > 1][:5].tolist()} listed more than once")
  idx, table = pos[found], table.filter(pa.array(found))
  out = np.zeros((len(vocab), len(FEATURE_NAMES)), np.float32)
  # genres: flatten the space-separated lists, look each token up in GENRES, scatter ones
  lists = pc.split_pattern(pc.fill_null(table.column("class"), ""), " ")
  tokens = pc.list_flatten(lists)
  parent = pc.list_parent_indices(lists).to_numpy()
  nonempty = pc.greater(pc.utf8_length(tokens), 0).to_numpy(zero_copy_only=False)
  genre = pc.index_in(tokens, value_set=pa.array(GENRES)).to_numpy(zero_copy_only=False)
  bad = nonempty & np.isnan(genre.astype(np.float64))
  if np.any(bad):
    t = int(np.argmax(bad))
    raise DataError(f"{src.name}: item_id {vocab.raw[idx[parent[t]]]}: genre "
                    f"{tokens[t].as_py()!r} is not one of the 19 ML-100K genres {list(GENRES)}")
  out[idx[parent[nonempty]], genre[nonempty].astype(np.int64)] = 1.0
  # release year: 4-digit years standardised over the known ones; anything else is missing
  year_col = pc.fill_null(table.column("release_year"), "")
  known = pc.match_substring_regex(year_col, r"^[0-9]{4}$").to_numpy(zero_copy_only=False)
  years = np.zeros(len(table), np.float64)
  years[known] = year_col.filter(pa.array(known)).cast(pa.int64()).to_numpy()
  if known.any():
    mean, std = years[known].mean(), years[known].std()
    out[idx[known], len(GENRES)] = (years[known] - mean) / (std if std > 0 else 1.0)
  out[idx[~known], len(GENRES) + 1] = 1.0
  return out


def load_ml100k(cache_dir: Optional[str] = None, *,
                with_item_features: bool = True) -> InteractionLog:
  """MovieLens-100K as an InteractionLog (943 users, 1682 items, 100000 ratings 1-5, unix seconds).

  Raw user/item ids are the dataset's integers (vocabularies in sorted id order), so the encoding
  matches :func:`jaxrec.data.loaders.load_movielens_udata` on the original ``u.data``.

  Args:
    cache_dir: the cache directory (see :func:`cache_dir_path`).
    with_item_features: attach :func:`item_features` of the wheel's ``ml-100k.item`` as
      ``item_features`` (float32 ``[1682, 21]``); False leaves it None.
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
    log = loaders.load_recbole(src, name="ml-100k")
    if not with_item_features:
      return log
    if ITEM_MEMBER not in zf.namelist():
      raise DataError(f"{whl}: has no member {ITEM_MEMBER!r}; expected the {RECBOLE_REQUIREMENT} "
                      "wheel (or pass with_item_features=False)")
    feats = item_features(loaders.Source(f"{whl}!{ITEM_MEMBER}", lambda: zf.open(ITEM_MEMBER)),
                          log.item_vocab)
  return dataclasses.replace(log, item_features=feats)
