"""Tests for jaxrec.data.ml100k: the cached wheel is used as is, pip failures are explained, and
the real ML-100K (slow: downloads the recbole wheel once into the cache) has its published sizes."""

import os
import zipfile

import numpy as np
import pytest

from jaxrec.data import ml100k
from jaxrec.data.log import DataError

INTER = ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
         "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n")


def _fake_wheel(cache, member=ml100k.MEMBER, text=INTER):
  os.makedirs(cache, exist_ok=True)
  path = os.path.join(cache, "recbole-1.2.1-py3-none-any.whl")
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr(member, text)
  return path


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
