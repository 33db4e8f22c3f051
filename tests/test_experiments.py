"""End-to-end checks of the experiment binaries and the main job on small synthetic data."""

import json
import os

import numpy as np
import pytest

from experiments import common, evaluate_baselines, registry, reproduce
from experiments import train as train_binary
from jaxrec.data.log import DataError
from jaxrec.train import fit as fit_lib


def test_prepare_leave_last_out_drops_repeats_and_excludes_known():
  prep = common.prepare("synthetic:tiny", "leave_last_out")
  assert not prep.test_queries.positive_is_known().any()
  key = prep.log.user.astype(np.int64) * prep.log.num_items + prep.log.item
  assert np.unique(key).size == key.size
  chrono = common.prepare("synthetic:tiny", "chronological")
  assert len(chrono.log) > len(prep.log)  # the chronological split keeps repeat consumption


def test_bad_dataset_spec_names_the_problem():
  with pytest.raises(DataError, match="unknown format 'nope'"):
    common.prepare("nope:/tmp/x.csv", "leave_last_out")


def test_evaluate_baselines_popularity_beats_random():
  res = evaluate_baselines.run("synthetic:tiny", "leave_last_out", num_negatives=20)
  pop = res["models"]["Popularity"]
  rnd = res["models"]["Random"]
  for proto in ("full", "sampled20"):
    assert 0.0 <= rnd[proto]["summary"]["NDCG@10"] <= 1.0
    assert pop[proto]["summary"]["NDCG@10"] > rnd[proto]["summary"]["NDCG@10"]
  assert "head_tail" in pop["full"]["segments"]


def test_discovery_finds_registered_experiments():
  found = registry.discover()
  assert {"baselines", "base_models", "theory"} <= set(found)
  assert list(found) == sorted(found, key=lambda n: (found[n].order, n))


@pytest.mark.slow
def test_train_binary_writes_results_and_resumes(tmp_path):
  prep = common.prepare("synthetic:tiny", "leave_last_out")
  config = fit_lib.FitConfig(epochs=2, batch_size=128, num_negatives=8, valid_negatives=20, patience=None)
  kwargs = dict(config=config, prepared=prep, eval_negatives=20, workdir=str(tmp_path))
  first = train_binary.run("mf-bpr", "synthetic:tiny", **kwargs)
  assert os.listdir(tmp_path / "checkpoints_root" / "checkpoints")
  again = train_binary.run("mf-bpr", "synthetic:tiny", **kwargs)  # resumes from the finished run
  assert first["test"]["full"]["summary"] == again["test"]["full"]["summary"]
  assert first["test"]["full"]["summary"]["num_queries"] == len(prep.test_queries)


@pytest.mark.slow
def test_main_job_writes_report(tmp_path):
  reproduce.run("quick", str(tmp_path), only=["baselines"], datasets=["synthetic:small"])
  report = (tmp_path / "report.md").read_text()
  assert "Non-learned baselines" in report and "python -m experiments.evaluate_baselines" in report
  results = json.loads((tmp_path / "results.json").read_text())
  assert "error" not in results["experiments"]["baselines"]


def test_binaries_report_bad_input_without_traceback(tmp_path):
  import subprocess
  import sys
  bad = tmp_path / "ratings.csv"
  bad.write_text("userId,movieId,rating,timestamp\n1,2,3.0,abc\n")
  proc = subprocess.run([sys.executable, "-m", "experiments.evaluate_baselines", f"--dataset=ml-25m:{bad}",
                         f"--workdir={tmp_path}"], capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert f"error: {bad}, line 2, column 'timestamp'" in proc.stderr
  assert "Traceback" not in proc.stderr
