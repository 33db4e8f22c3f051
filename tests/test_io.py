"""Atomic writes: a failure mid-write leaves the previous file intact and no temporary behind."""

import json
import os

import numpy as np
import pytest

from jaxrec import io


def test_atomic_write_json_converts_numpy_and_replaces(tmp_path):
  path = str(tmp_path / "results.json")
  io.atomic_write_json(path, {"a": np.float32(0.5), "b": np.arange(3), "c": {"d": np.int64(7)}})
  assert json.load(open(path)) == {"a": 0.5, "b": [0, 1, 2], "c": {"d": 7}}
  io.atomic_write_json(path, {"a": 1})
  assert json.load(open(path)) == {"a": 1}


def test_failed_write_keeps_old_file_and_leaves_no_temporary(tmp_path):
  path = str(tmp_path / "report.md")
  io.atomic_write_text(path, "old")
  with pytest.raises(RuntimeError):
    with io.atomic_path(path) as tmp:
      with open(tmp, "w") as f:
        f.write("half")
      raise RuntimeError("killed mid-write")
  assert open(path).read() == "old"
  assert os.listdir(tmp_path) == ["report.md"]


def test_json_is_strict_for_non_finite_and_jax_values(tmp_path):
  import jax.numpy as jnp
  path = str(tmp_path / "r.json")
  io.atomic_write_json(path, {"nan": float("nan"), "inf": np.float32(np.inf), "j": jnp.arange(2),
                              "ok": np.bool_(True)})
  text = open(path).read()
  assert "NaN" not in text and "Infinity" not in text
  assert json.loads(text) == {"nan": "nan", "inf": "inf", "j": [0, 1], "ok": True}


def test_written_files_follow_the_umask(tmp_path):
  old = os.umask(0o022)
  try:
    path = str(tmp_path / "results.json")
    io.atomic_write_json(path, {"a": 1})
    assert os.stat(path).st_mode & 0o777 == 0o644
    os.umask(0o077)
    io.atomic_write_text(path, "x")
    assert os.stat(path).st_mode & 0o777 == 0o600
  finally:
    os.umask(old)
