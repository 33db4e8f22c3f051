"""The 2TS experiment binary end to end on ``synthetic:tiny`` (1 epoch everywhere)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import two_time_scale as exp
from experiments import two_time_scale_report as report
from jaxrec.methods import two_time_scale as tts
from jaxrec.models import registry

# One registered sequence baseline and one with its own trainer (exp.OWN_TRAINERS; JODIE's test queries
# carry features): the others go through the same two _train_baseline paths (each one more model to
# compile, ~20 s); the binary's default baselines are checked in test_options_*.
_ROWS = {"2TS", "2TS-Plus", "2TS-SingleStage", "2-GRU", "CCF", "GRU4Rec", "JODIE", "Popularity"}


def _tiny_options(**kw):
  base = dict(base_epochs=1, base_batch_size=128, base_history_len=8, base_negatives=8, eval_negatives=49,
              baselines=("gru4rec", "jodie"))
  base.update(kw)
  return exp.Options(tts=tts.TwoTimeScaleConfig(t_star=5, k=3, num_offered=5, d_id=8, d_feat=4,
                                                epochs_stage1=1, epochs_stage2=1, epochs_single=1), **base)


def test_options_reject_unknown_variant():
  with pytest.raises(ValueError, match="unknown"):
    exp.Options(variants=("2ts", "nope"))
  assert exp.Options().baselines == ("sumpool", "gru4rec", "sasrec")
  with pytest.raises(ValueError, match="stage1_optimizer must be '' .dense Adam. or one of"):
    exp.Options(stage1_optimizer="adam")


def test_stage1_optimizer_reaches_every_stage_1(monkeypatch):
  seen = []
  monkeypatch.setattr(exp.tts, "train", lambda cfg, log, **kw: seen.append(kw["stage1_optimizer"]))
  monkeypatch.setattr(exp.tts, "prepare_training_data", lambda *a: None)
  monkeypatch.setattr(exp, "_valid_fn", lambda *a: None)

  class _S:  # pylint: disable=too-few-public-methods
    class prep:  # pylint: disable=invalid-name
      class split:  # pylint: disable=invalid-name
        train = None

  opts = _tiny_options(stage1_optimizer="rowwise-adagrad")
  for variant in ("2ts", "ccf", "single-stage"):
    exp._train_tts(opts.tts_config(variant, 0), _S, opts)  # pylint: disable=protected-access
  exp._train_tts(opts.tts_config("2ts", 0), _S, _tiny_options())  # pylint: disable=protected-access
  assert seen == ["rowwise-adagrad", "rowwise-adagrad", None, None]  # single-stage has no stage 1


def test_label_position_inside_bucket():
  labels = ["[0,1)", "[1,5)", "[5,10)", "[10,inf)"]
  assert report.label_position(labels, 5) == pytest.approx(1.5)
  assert report.label_position(labels, 7.5) == pytest.approx(2.0)
  assert report.label_position(labels, 50) == 3


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("two_time_scale"))
  results, figures = exp.run_all(["synthetic:tiny"], _tiny_options(), workdir, command_line="test",
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
    assert "--config.tts.t_star=5" in r["command"] and "--config.eval_negatives=49" in r["command"]
  assert {os.path.basename(p) for p in figures} == {
      "fig2_mrr_vs_time.png", "fig3_mrr_by_segment.png", "fig4_embedding_moves.png"}
  for p in figures:
    assert os.path.getsize(p) > 1000
  ds = saved["datasets"]["synthetic:tiny"]
  hist = ds["tts"]["2ts"]["history"]
  assert [h["stage"] for h in hist] == ["stage1", "stage2"]
  assert all("test_MRR" in h and h["wall_time"] > 0 for h in hist)
  assert ds["protocol"].startswith("2ts-chronological") and "no exclusions" in ds["protocol"]
  mv = ds["tts"]["2ts"]["moves"]
  num_moves = sum(mv["active"]["count"]) + sum(mv["inactive"]["count"]) + sum(mv["new"]["count"])
  assert num_moves == ds["stats"]["test"]  # Fig. 4 counts test interactions only
  # Both protocols, the budget each method used, and the stage-2 settings compared on validation.
  for r in rows:
    assert 0.0 <= r["sampled49-filtered MRR"] <= 1.0 and 0.0 <= r["full-filtered MRR"] <= 1.0, r["method"]
    if r["method"] != "Popularity":
      assert r["epochs"] and r["stopped"], r["method"]
  by = {r["method"]: r for r in rows}
  assert by["2TS"]["epochs"] == "1+1" and by["CCF"]["epochs"] == "1"
  assert [g["setting"] for g in ds["grid"]] == ["gru, one-group", "residual, mixed"]
  assert ds["chosen"]["stage2"] in ("gru/one-group", "residual/mixed")
  # The two-stage rows share the CCF stage 1: their times include it.
  assert by["2TS-Plus"]["train s"] >= by["CCF"]["train s"]
  assert ds["tts"]["2ts"]["theory"]["var_m"] > 0


@pytest.mark.slow  # reuses the module's run; only draws
def test_sweep_figure_marks_chosen_and_theory(tiny_run, tmp_path):
  _, results, _ = tiny_run
  res = dict(results["datasets"]["synthetic:tiny"])
  res["sweep"] = [{"t_star": t, "k": 3, "valid MRR": 0.1 * t, "test MRR": 0.1} for t in (3, 5)]
  paths = report.make_figures(res, str(tmp_path))
  assert "fig_threshold_sweep.png" in {os.path.basename(p) for p in paths}


def test_experiment_is_registered_with_small_quick_budget():
  assert exp.EXPERIMENT.name == "two_time_scale" and exp.EXPERIMENT.order == 30
  quick = exp.suite_options("quick")
  assert quick.tts.epochs_stage1 + quick.tts.epochs_stage2 <= 6 and not quick.sweep_t_star
  # The full suite trains every one of Table 1's baselines, each a registered model or an own trainer.
  full = exp.suite_options("full")
  assert set(full.baselines) == set(report.BASELINE_NAMES) and len(full.baselines) == 11  # + CCF (a variant)
  assert all(b in exp.OWN_TRAINERS or b in registry.names() for b in full.baselines)


_PARSE = """
import sys
from absl import flags
from experiments import configs, two_time_scale as exp
exp.define_flags()
flags.FLAGS(sys.argv)
opts = configs.value(exp._CONFIG)
assert isinstance(opts, exp.Options), type(opts)
print(repr((opts.tts.t_star, opts.variants, opts.base_lr, type(opts.tts).__name__)))
print(exp.command("synthetic:tiny", 3, opts))
"""


def test_config_flags_parse_into_the_frozen_options():
  out = subprocess.run([sys.executable, "-c", _PARSE, "--config.tts.t_star=50",
                        "--config.variants=('2ts','ccf')", "--config.base_lr=0.01"],
                       capture_output=True, text=True, check=True, cwd=os.path.dirname(os.path.dirname(
                           os.path.abspath(__file__)))).stdout.splitlines()
  assert out[0] == repr((50, ("2ts", "ccf"), 0.01, "TwoTimeScaleConfig"))
  cmd = out[1]
  assert "--config.tts.t_star=50" in cmd and "--config.base_lr=0.01" in cmd and "--seed=3" in cmd
  assert "lr_stage1" not in cmd  # only the fields that differ from the defaults
  opts = exp.Options(tts=tts.TwoTimeScaleConfig(t_star=50))
  assert opts.tts_config("2ts-plus", seed=3).seed == 3 and opts.tts_config("2ts", seed=0).t_star == 50


def test_theory_rate_ratio_recovers_the_power_law_exponent_and_uses_appendix_a2():
  from scipy import special
  from theory import two_time_scale as theory_lib
  rng = np.random.default_rng(0)
  alpha = 2.2
  t = np.arange(0, 200_000)
  pmf = (t + 1.0) ** -alpha / special.zeta(alpha, 1.0)
  counts = rng.choice(t, size=40_000, p=pmf / pmf.sum())
  phi = rng.normal(size=(counts.size, 4)) + 0.5
  out = exp.theory_rate_ratio(counts, phi, t_star=20)
  assert abs(out["alpha"] - alpha) < 0.05
  trained = phi[counts > 0]
  var_m = np.mean(np.sum((trained - trained.mean(0)) ** 2, axis=1))
  q = np.mean(np.sum(trained ** 2, axis=1))
  want = np.sqrt(special.zeta(out["alpha"] + 1, 21) * q / (special.zeta(out["alpha"], 21) * var_m))
  np.testing.assert_allclose(out["ratio"], want, rtol=1e-6)
  with jax.enable_x64():  # the same ratio from theory/'s closed forms (JAX zeta) as from scipy's
    direct = theory_lib.gamma_act(20, out["alpha"], q, 1.0, 1.0) / theory_lib.gamma_in(var_m, 1.0, 1.0)
  np.testing.assert_allclose(out["ratio"], float(direct), rtol=1e-9)
