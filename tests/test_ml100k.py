"""Tests for jaxrec.data.ml100k: the cached wheel is used as is, pip failures are explained, item
features are exact and aligned with the item vocabulary, and the real ML-100K (slow: downloads the
recbole wheel once into the cache) has its published sizes."""

import os
import zipfile

import numpy as np
import pytest

from jaxrec.data import ml100k
from jaxrec.data.log import DataError, Vocab

INTER = ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
         "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n")
# The exact layout of the wheel's ml-100k.item (header, tabs, space-separated genres, the real
# file's missing-year spellings). File order 377, 242, 1000, 302, 267: raw-id order 242, 267, 302,
# 377, 1000 differs (and lexicographic order, 1000 < 242 < ..., differs from both). 1000 is not in
# INTER's log, so its row is dropped.
ITEM = ("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "377\tHeavyweights\t1994\tChildren's Comedy\n"
        "242\tKolya\t1996\tComedy\n"
        "1000\tLightning Jack\t1994\tComedy Western\n"
        "302\tL.A. Confidential\t1997\tCrime Film-Noir Mystery Thriller\n"
        "267\tunkonwn\tunkonwn\tunknown\n")
ITEM_INTER = INTER + "5\t267\t4\t878887117\n"
G = {g: k for k, g in enumerate(ml100k.GENRES)}
YEAR, MISSING = len(ml100k.GENRES), len(ml100k.GENRES) + 1


def _fake_wheel(cache, member=ml100k.MEMBER, text=INTER, item=ITEM):
  os.makedirs(cache, exist_ok=True)
  path = os.path.join(cache, "recbole-1.2.1-py3-none-any.whl")
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr(member, text)
    if item is not None:
      zf.writestr(ml100k.ITEM_MEMBER, item)
  return path


def _expected_features(raw_ids):
  """The features of ITEM written out by hand, rows in the order of ``raw_ids``."""
  years = {242: 1996.0, 302: 1997.0, 377: 1994.0}  # of the log's items (1000 is not in the log)
  mean = np.mean(list(years.values()))
  std = np.std(list(years.values()))
  genres = {242: ["Comedy"], 267: ["unknown"], 302: ["Crime", "Film-Noir", "Mystery", "Thriller"],
            377: ["Children's", "Comedy"]}
  out = np.zeros((len(raw_ids), len(ml100k.FEATURE_NAMES)), np.float32)
  for row, rid in enumerate(raw_ids):
    for g in genres[rid]:
      out[row, G[g]] = 1.0
    if rid in years:
      out[row, YEAR] = (years[rid] - mean) / std
    else:
      out[row, MISSING] = 1.0
  return out


def test_cache_dir_resolution(tmp_path, monkeypatch):
  monkeypatch.setenv("JAXREC_CACHE", str(tmp_path / "env"))
  assert ml100k.cache_dir_path() == str(tmp_path / "env")
  assert ml100k.cache_dir_path(str(tmp_path / "arg")) == str(tmp_path / "arg")
  monkeypatch.delenv("JAXREC_CACHE")
  assert ml100k.cache_dir_path() == os.path.join(os.path.expanduser("~"), ".cache", "jaxrec")


def test_cached_wheel_is_read_without_pip(tmp_path, monkeypatch):
  _fake_wheel(str(tmp_path))

  def no_pip(*args, **kwargs):
    raise AssertionError(f"pip must not run when the wheel is cached: {args}")

  monkeypatch.setattr(ml100k.subprocess, "run", no_pip)
  log = ml100k.load_ml100k(cache_dir=str(tmp_path))
  assert log.name == "ml-100k" and len(log) == 3
  np.testing.assert_array_equal(log.user_vocab.decode(log.user), [196, 186, 22])
  np.testing.assert_array_equal(log.item_vocab.decode(log.item), [242, 302, 377])
  np.testing.assert_array_equal(log.timestamp, [881250949, 891717742, 878887116])
  np.testing.assert_array_equal(log.rating, [3, 3, 1])


def test_wrong_wheel_contents(tmp_path):
  _fake_wheel(str(tmp_path), member="recbole/other.txt")
  with pytest.raises(DataError, match="has no member 'recbole/dataset_example/ml-100k/ml-100k.inter'"):
    ml100k.load_ml100k(cache_dir=str(tmp_path))


def test_wheel_without_item_file(tmp_path):
  _fake_wheel(str(tmp_path), item=None)
  with pytest.raises(DataError, match="has no member 'recbole/dataset_example/ml-100k/ml-100k.it"):
    ml100k.load_ml100k(cache_dir=str(tmp_path))
  log = ml100k.load_ml100k(cache_dir=str(tmp_path), with_item_features=False)
  assert log.item_features is None and len(log) == 3


def test_item_features_exact_and_aligned(tmp_path):
  _fake_wheel(str(tmp_path), text=ITEM_INTER)
  log = ml100k.load_ml100k(cache_dir=str(tmp_path))
  np.testing.assert_array_equal(log.item_vocab.raw, [242, 267, 302, 377])  # not the file's order
  f = log.item_features
  assert f.dtype == np.float32 and f.shape == (4, 21) == (log.num_items, len(ml100k.FEATURE_NAMES))
  np.testing.assert_allclose(f, _expected_features([242, 267, 302, 377]), rtol=0, atol=1e-6)
  # each row belongs to its raw id: look rows up through the vocabulary, not by position
  row = lambda rid: f[log.item_vocab.encode([rid])[0]]
  assert row(302)[[G["Crime"], G["Film-Noir"], G["Mystery"], G["Thriller"]]].tolist() == [1] * 4
  assert row(302)[:YEAR].sum() == 4  # the multi-genre item
  assert row(377)[:YEAR].sum() == 2 and row(377)[G["Children's"]] == 1
  assert row(267).tolist() == [1.0] + [0.0] * 19 + [1.0]  # genre 'unknown', year missing (flagged)
  assert row(302)[YEAR] > row(242)[YEAR] > row(377)[YEAR]  # 1997 > 1996 > 1994
  known = f[:, MISSING] == 0
  assert abs(f[known, YEAR].mean()) < 1e-6 and abs(f[known, YEAR].std() - 1) < 1e-6
  # the features follow the interactions: item 302's rows carry item 302's features
  np.testing.assert_array_equal(f[log.item][:, G["Film-Noir"]], [0, 1, 0, 0])


def test_item_features_second_vocab(tmp_path):
  """The same file against a vocabulary of other ids: rows follow the vocabulary, not the file."""
  path = tmp_path / "ml-100k.item"
  path.write_text(ITEM)
  vocab = Vocab(raw=np.array([242, 267, 302, 377, 1000]))
  f = ml100k.item_features(str(path), vocab)
  years = np.array([1996.0, 1997.0, 1994.0, 1994.0])  # 242, 302, 377, 1000 all count now
  z = (years - years.mean()) / years.std()
  np.testing.assert_allclose(f[:, YEAR], [z[0], 0, z[1], z[2], z[3]], atol=1e-6)
  np.testing.assert_array_equal(f[:, MISSING], [0, 1, 0, 0, 0])
  np.testing.assert_array_equal(f[4, :YEAR], np.eye(19)[G["Comedy"]] + np.eye(19)[G["Western"]])


@pytest.mark.parametrize("text,match", [
    (ITEM.replace("267\tunkonwn", "9\tunkonwn"),
     r"1 item\(s\) of the log have no row, e.g. item_id \[267\]"),
    (ITEM + "242\tKolya\t1996\tComedy\n", r"item_id \[242\] listed more than once"),
    (ITEM.replace("Children's Comedy", "Children's Comedie"), r"item_id 377: genre 'Comedie'"),
    (ITEM.replace("class:token_seq", "genre:token_seq"), r"expected a field 'class:token_seq'"),
    (ITEM.replace("\n242\t", "\nx242\t"), r"line 3, column 'item_id': 'x242' is not an integer id"),
])
def test_item_file_errors(tmp_path, text, match):
  _fake_wheel(str(tmp_path), text=ITEM_INTER, item=text)
  with pytest.raises(DataError, match=match):
    ml100k.load_ml100k(cache_dir=str(tmp_path))


def test_pip_failure_names_the_command(tmp_path, monkeypatch):
  for var, value in (("PIP_INDEX_URL", "http://127.0.0.1:9/simple"), ("PIP_EXTRA_INDEX_URL", ""),
                     ("PIP_FIND_LINKS", ""), ("PIP_RETRIES", "0"), ("PIP_TIMEOUT", "1"),
                     ("PIP_NO_CACHE_DIR", "1")):
    monkeypatch.setenv(var, value)
  cache = tmp_path / "cache"
  cmd = r"pip download --no-deps --only-binary=:all: recbole==1.2.1 -d .*status"
  with pytest.raises(DataError, match=cmd):
    ml100k.load_ml100k(cache_dir=str(cache))
  assert os.listdir(cache) == []  # no partial download left behind


@pytest.mark.slow
def test_real_ml100k():
  try:
    log = ml100k.load_ml100k()
  except DataError as e:
    if "could not download" in str(e):
      pytest.skip(f"offline: {e}")
    raise
  assert (log.num_users, log.num_items, len(log)) == (943, 1682, 100000)
  stats = log.stats()
  assert (stats["users"], stats["items"]) == (943, 1682)
  np.testing.assert_array_equal(np.unique(log.rating), [1, 2, 3, 4, 5])
  np.testing.assert_array_equal(log.user_vocab.raw, np.arange(1, 944))
  np.testing.assert_array_equal(log.item_vocab.raw, np.arange(1, 1683))
  # first line of u.data: 196 242 3 881250949
  assert (log.user_vocab.raw[log.user[0]], log.item_vocab.raw[log.item[0]], log.timestamp[0]) == (196, 242,
                                                                                                  881250949)
  assert (stats["time_min"], stats["time_max"]) == (874724710, 893286638)
  f = log.item_features
  assert f.shape == (1682, 21) and f.dtype == np.float32 and np.isfinite(f).all()
  assert (f[:, :19].sum(axis=1) >= 1).all()
  assert f[:, :19].sum() == 2893  # genre assignments of u.item (sum of its 19 flag columns)
  np.testing.assert_array_equal(log.item_vocab.raw[f[:, 20] == 1], [267, 1412])  # 'unkonwn', 'V'
  toy_story = f[log.item_vocab.encode([1])[0]]  # 1  Toy Story  1995  Animation Children's Comedy
  assert [ml100k.GENRES[k] for k in np.flatnonzero(toy_story[:19])] == ["Animation", "Children's",
                                                                        "Comedy"]
