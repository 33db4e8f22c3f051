"""The 2TS experiment binary end to end on ``synthetic:tiny`` (1 epoch everywhere)."""

import json
import os

import pytest

from experiments import two_time_scale as exp
from experiments.registry import RunContext

_ROWS = {"2TS", "2TS-Plus", "2TS-SingleStage", "2-GRU", "CCF", "SumPooling", "GRU4Rec", "SASRec",
         "Popularity"}


def _tiny_options(**kw):
  base = dict(t_star=5, k=3, num_offered=5, d_id=8, d_feat=4, epochs_stage1=1, epochs_stage2=1,
              epochs_single=1, base_epochs=1, base_batch_size=128, base_history_len=8, base_negatives=8,
              curve_queries=50, eval_negatives=49)
  base.update(kw)
  return exp.Options.from_flat(base)


def test_options_reject_unknown_variant():
  with pytest.raises(ValueError, match="unknown"):
    exp.Options(variants=("2ts", "nope"))


def test_label_position_inside_bucket():
  labels = ["[0,1)", "[1,5)", "[5,10)", "[10,inf)"]
  assert exp._label_position(labels, 5) == pytest.approx(1.5)
  assert exp._label_position(labels, 7.5) == pytest.approx(2.0)
  assert exp._label_position(labels, 50) == 3


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("two_time_scale"))
  results, figures = exp.run_all(["synthetic:tiny"], _tiny_options(), workdir, command="test",
                                 log=lambda m: None)
  return workdir, results, figures


@pytest.mark.slow  # ~2 min on the loaded 2-core machine, almost all of it XLA compiles of 8 models
def test_run_writes_every_row_both_protocols_and_figures(tiny_run):
  workdir, results, figures = tiny_run
  with open(os.path.join(workdir, "results.json")) as f:
    saved = json.load(f)
  rows = saved["rows"]
  assert len(rows) == len(results["rows"]) == len(_ROWS)
  assert {r["method"] for r in rows} == _ROWS
  for r in rows:
    for col in ("sampled49 MRR", "sampled49 Recall@10", "full MRR", "full Recall@10"):
      assert 0.0 <= r[col] <= 1.0, (r["method"], col)
    # Sampled ranking among 50 candidates is never harder than full ranking over all 100 items.
    assert r["sampled49 MRR"] >= r["full MRR"] - 1e-9, r["method"]
    assert r["command"].startswith("python -m experiments.two_time_scale --dataset=synthetic:tiny")
  assert {os.path.basename(p) for p in figures} == {
      "fig2_mrr_vs_time.png", "fig3_mrr_by_segment.png", "fig4_embedding_moves.png"}
  for p in figures:
    assert os.path.getsize(p) > 1000
  ds = saved["datasets"]["synthetic:tiny"]
  hist = ds["tts"]["2ts"]["history"]
  assert [h["stage"] for h in hist] == ["stage1", "stage2"]
  assert all("test_MRR" in h and h["wall_time"] > 0 for h in hist)
  mv = ds["tts"]["2ts"]["moves"]
  num_moves = sum(mv["active"]["count"]) + sum(mv["inactive"]["count"])
  assert num_moves == ds["stats"]["valid"] + ds["stats"]["test"]
  assert ds["tts"]["2ts"]["theory"]["var_m"] > 0


@pytest.mark.slow  # reuses the module's run; only draws
def test_sweep_figure_marks_chosen_and_theory(tiny_run, tmp_path):
  _, results, _ = tiny_run
  res = dict(results["datasets"]["synthetic:tiny"])
  res["sweep"] = [{"t_star": t, "k": 3, "valid MRR": 0.1 * t, "test MRR": 0.1} for t in (3, 5)]
  paths = exp.make_figures(res, str(tmp_path))
  assert "fig_threshold_sweep.png" in {os.path.basename(p) for p in paths}


def test_experiment_is_registered_with_small_quick_budget():
  assert exp.EXPERIMENT.name == "two_time_scale" and exp.EXPERIMENT.order == 30
  quick = exp.suite_options("quick")
  assert quick.tts.epochs_stage1 + quick.tts.epochs_stage2 <= 6 and not quick.sweep_t_star


def test_options_flat_round_trip_and_changed_flags():
  opts = _tiny_options(seed=3)
  assert exp.Options.from_flat(opts.flat()) == opts
  assert opts.tts_config("2ts-plus").variant == "2ts-plus" and opts.tts_config("2ts").seed == 3
  changed = opts.flags(changed_only=True)
  assert changed["t_star"] == 5 and "lr_stage1" not in changed
  assert isinstance(RunContext(workdir="x").datasets, tuple)
