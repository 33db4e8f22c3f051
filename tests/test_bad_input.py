"""Bad input, other configs and interrupted runs: one ``error:`` line, never a silently wrong result.

Each binary gets each bad input as a subprocess (``python -m ...``; most end before any training) and
must exit non-zero with one ``error:`` line naming the flag, file or field and no traceback. The silent
cases check the right result: csv timestamps are read, a workdir of another config is refused, times
add up over re-runs, a damaged checkpoint falls back to the previous one, and an interrupted run
resumes bit-identically.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.train import checkpoint as checkpoint_lib
from jaxrec.train import learner as learner_lib
from jaxrec.train import loop as loop_lib
from jaxrec.train import state as state_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--dataset=synthetic:tiny", "--config.fit.epochs=1", "--config.fit.progress=False"]


def _binary(module, *args, timeout=120):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout, env=env)


def _assert_one_line_error(proc, *needles):
  assert proc.returncode != 0, proc.stdout + proc.stderr
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1, proc.stderr[-3000:]
  for needle in needles:
    assert needle in errors[0], errors[0]


def _ratings(tmp_path, name="r.csv", bad_line=None):
  """A user,item,timestamp csv whose rows are in reverse time order (file order != time order)."""
  rows = [(u, (u * 7 + k) % 40, 1_600_000_000 - 1000 * (u * 12 + k)) for u in range(30) for k in range(12)]
  lines = ["user,item,timestamp"] + [f"{u},{i},{t}" for u, i, t in rows]
  if bad_line is not None:
    lines[bad_line - 1] = "3,4,yesterday"
  path = tmp_path / name
  path.write_text("\n".join(lines) + "\n")
  return str(path)


# name -> (module, extra flags (with {csv}, {badcsv}, {file}, {tmp} filled in), substrings of the error)
CASES = {
    "train-epochs": ("experiments.train", ["--config.fit.epochs=-1"],
                     ["--config.fit.epochs must be >= 1, got -1"]),
    "train-batch": ("experiments.train", ["--config.fit.batch_size=0"],
                    ["--config.fit.batch_size must be >= 1"]),
    "train-negatives": ("experiments.train", ["--config.fit.num_negatives=-5"],
                        ["--config.fit.num_negatives must be >= 1, got -5"]),
    "train-history": ("experiments.train", ["--config.fit.history_len=0"],
                      ["--config.fit.history_len must be"]),
    "train-workdir-file": ("experiments.train", ["--workdir={file}"], ["is a file, not a directory"]),
    "train-csv-bad-time": ("experiments.train", ["--dataset=csv:{badcsv}"], ["line 37, column 'timestamp'"]),
    "train-spec-option": ("experiments.train", ["--dataset=csv:{csv}?colour=red"], ["no option 'colour'"]),
    "baselines-missing-file": ("experiments.evaluate_baselines", ["--dataset=csv:{tmp}/nope.csv"],
                               ["nope.csv: file not found"]),
    "baselines-workdir-file": ("experiments.evaluate_baselines", ["--workdir={file}"],
                               ["is a file, not a directory"]),
    "baselines-csv-bad-time": ("experiments.evaluate_baselines", ["--dataset=csv:{badcsv}"],
                               ["line 37, column 'timestamp'"]),
    "baselines-unknown-format": ("experiments.evaluate_baselines", ["--dataset=nope:x.csv"],
                                 ["unknown format 'nope'"]),
    "streaming-steps": ("experiments.streaming", ["--config.strategy.steps=-1"],
                        ["--config.strategy.steps must be >= 1, got -1"]),
    "streaming-learning-rate": ("experiments.streaming", ["--config.strategy.learning_rate=0"],
                                ["--config.strategy.learning_rate must be a number > 0"]),
    "streaming-model": ("experiments.streaming", ["--config.model=nope"], ["'nope' is not a registered"]),
    "streaming-blocks": ("experiments.streaming", ["--config.blocks=weekly"], ["'batch:B' or 'periods:N'"]),
    "streaming-strategy": ("experiments.streaming", ["--config.strategies=('nope',)"],
                           ["unknown strategies ['nope']"]),
    "2ts-t-star": ("experiments.two_time_scale", ["--config.tts.t_star=-3"], ["t_star=-3"]),
    "2ts-variant": ("experiments.two_time_scale", ["--config.variants=('zz',)"], ["unknown variants"]),
    "2ts-workdir-file": ("experiments.two_time_scale", ["--workdir={file}"], ["is a file"]),
    "2ts-grid": ("experiments.two_time_scale", ["--config.stage2_grid=('lstm/mixed',)"],
                 ["stage2_grid entry 'lstm/mixed' must be CELL/STEPS"]),
    "2ts-cell": ("experiments.two_time_scale", ["--config.tts.cell=lstm"], ["cell must be one of"]),
    "melon-mwnet-hidden": ("experiments.melon", ["--config.mwnet.hidden=0"],
                           ["--config.mwnet.hidden must be >= 1"]),
    "sml-grid": ("experiments.sml", ["--config.grid=('sml.step1_lr=1e-2|-1.0',)"],
                 ["grid entry 'sml.step1_lr=1e-2|-1.0'", "step1_lr"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_error_line(tmp_path, name):
  module, flags, needles = CASES[name]
  fill = {"csv": _ratings(tmp_path), "badcsv": _ratings(tmp_path, "bad.csv", bad_line=37),
          "file": str(tmp_path / "a-file"), "tmp": str(tmp_path)}
  (tmp_path / "a-file").write_text("not a directory\n")
  base = {"experiments.train": TINY,
          "experiments.evaluate_baselines": ["--dataset=synthetic:tiny", "--num_negatives=20"]}.get(
              module, ["--dataset=synthetic:tiny"])
  args = base + [f"--workdir={tmp_path / 'run'}"] + [f.format(**fill) for f in flags]
  _assert_one_line_error(_binary(module, *args), *needles)


@pytest.mark.parametrize("field, value, message", [
    ("epochs", -1, "FitConfig.epochs must be >= 1, got -1"), ("epochs", 1.5, "must be an integer >= 1"),
    ("batch_size", 0, "must be >= 1"), ("sequence_batch_size", 0, "must be >= 1"),
    ("num_negatives", -5, "must be >= 1"), ("history_len", 0, "must be >= 1"),
    ("learning_rate", 0.0, "must be a number > 0"),
    ("learning_rate", float("nan"), "must be a number > 0"),
    ("weight_decay", -1e-4, "must be a number >= 0"), ("optimizer", "adamm", "one of adam, sgd, adamw"),
    ("clip_norm", 0.0, "> 0 or None"), ("eval_every", 0, ">= 1 or None"), ("metric", "", "non-empty"),
    ("valid_negatives", 0, "must be >= 1"), ("patience", 0, ">= 1 or None"),
    ("progress", "yes", "true or false"),
])
def test_fit_config_fields_are_range_checked(field, value, message):
  from jaxrec.train import fit as fit_lib
  with pytest.raises(fit_lib.ConfigError, match=message) as info:
    fit_lib.FitConfig(**{field: value})
  assert info.value.field == field and "\n" not in str(info.value)


def test_train_reads_csv_time_refuses_other_config_sums_time(tmp_path):
  csv_path = _ratings(tmp_path)
  work = str(tmp_path / "run")
  args = [f"--dataset=csv:{csv_path}", f"--workdir={work}", "--config.fit.epochs=1",
          "--config.fit.progress=False", "--config.fit.num_negatives=4",
          "--config.fit.valid_negatives=10", "--config.eval_negatives=10"]
  first = _binary("experiments.train", *args)
  assert first.returncode == 0, first.stderr[-3000:]
  assert "columns read: user <- 'user', item <- 'item', timestamp <- 'timestamp'" in first.stderr
  res = json.load(open(os.path.join(work, "results.json")))
  assert res["dataset_read"]["column_map"]["timestamp"] == "timestamp"
  assert len(res["train_segments"]) == 1
  # Another learning rate over the finished workdir: refused, naming the field.
  other = _binary("experiments.train", *args, "--config.fit.learning_rate=0.01")
  _assert_one_line_error(other, "fit.learning_rate: 0.001 -> 0.01", "another --workdir")
  again = _binary("experiments.train", *args)  # the same command: a no-op resume, times add up
  assert again.returncode == 0, again.stderr[-3000:]
  res2 = json.load(open(os.path.join(work, "results.json")))
  assert len(res2["train_segments"]) == 2
  assert res2["train_seconds"] == pytest.approx(sum(s["seconds"] for s in res2["train_segments"]))
  assert res2["train_seconds"] > res["train_seconds"]
  assert res2["test"] == res["test"]
  assert "Creating tmp directory" not in first.stderr + again.stderr  # Orbax INFO quiet by default


def test_csv_leave_last_out_follows_the_timestamps(tmp_path):
  from experiments import common
  prep = common.prepare(f"csv:{_ratings(tmp_path)}", "leave_last_out")
  # rows are in reverse time order: each user's test item is the first row of the user in the file.
  raw_items = prep.log.item_vocab.decode(prep.split.test.item)
  raw_users = prep.log.user_vocab.decode(prep.split.test.user)
  np.testing.assert_array_equal(raw_items, [(int(u) * 7) % 40 for u in raw_users])


# -- the training core: damaged checkpoints, other shapes, Ctrl-C -----------------------------------


N, D, B = 48, 3, 8


def _loss(params, batch, rng):
  keep = jax.random.bernoulli(rng, 0.9, batch["x"].shape)
  err = ((batch["x"] * keep / 0.9) @ params["w"] + params["b"] - batch["y"]) ** 2
  return jnp.mean(err), {"mse": jnp.mean(err)}


TX = state_lib.make_optimizer("adam", learning_rate=0.05)
LEARNER = learner_lib.gradient_learner(_loss, TX)


def _init(d=D):
  return LEARNER.init({"w": jnp.full((d,), 0.1), "b": jnp.zeros(())}, jax.random.key(0))


def _batches(d=D, on_step=None):
  rs = np.random.default_rng(0)
  x = rs.normal(size=(N, d)).astype(np.float32)
  y = (x.sum(1) + 0.3).astype(np.float32)

  def batches(epoch):
    perm = np.random.default_rng([1, epoch]).permutation(N)
    for i in range(N // B):
      if on_step is not None:
        on_step(epoch * (N // B) + i)
      idx = perm[i * B:(i + 1) * B]
      yield {"x": x[idx], "y": y[idx]}
  return batches


def _eval(params):
  return {"w0": params["w"][0]}


CFG = loop_lib.LoopConfig(num_epochs=3, log_every=2, metric=None, progress=False, async_checkpointing=False)


def _train(workdir, d=D, on_step=None, run_config=None, cfg=CFG):
  return loop_lib.train(cfg, LEARNER, _init(d), _batches(d, on_step), _eval, workdir, rng=jax.random.key(1),
                        run_config=run_config)


def _data_files(step_dir):
  out = []
  for root, _, files in os.walk(os.path.join(step_dir, "state")):
    out += [os.path.join(root, f) for f in files if os.sep + "d" + os.sep in os.path.join(root, f) + os.sep]
  return out


def test_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
  ref, ref_hist = _train(None)
  work = str(tmp_path)
  _train(work)
  steps = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
  assert steps == [12, 18]  # keep_latest=2
  for f in _data_files(str(tmp_path / "checkpoints" / "18")):
    with open(f, "r+b") as fh:
      fh.truncate(os.path.getsize(f) // 2)
  with caplog.at_level("WARNING"):
    best, hist = _train(work)  # resumes from step 12 and re-trains the last epoch
  assert "checkpoints/18 is unreadable" in caplog.text
  chex.assert_trees_all_close(best.params, ref.params, atol=0, rtol=0)
  assert hist == ref_hist
  for s in (12, 18):  # both damaged: one line saying how to start over
    for f in _data_files(str(tmp_path / "checkpoints" / str(s))):
      with open(f, "r+b") as fh:
        fh.truncate(1)
  with pytest.raises(checkpoint_lib.CheckpointError, match=r"no readable checkpoint .* start over"):
    _train(work)


def test_other_state_shapes_and_run_configs_are_refused(tmp_path):
  work = str(tmp_path)
  _train(work, run_config={"dataset": "a", "lr": 0.05})
  with pytest.raises(loop_lib.ConfigMismatchError,
                     match=r"\['w'\]: checkpoint \(3,\) float32, this run \(4,\)"):
    _train(work, d=4)  # no run_config: the recorded shapes still refuse it, before Orbax
  with pytest.raises(loop_lib.ConfigMismatchError, match=r'dataset: "a" -> "b"; lr: 0.05 -> 0.1'):
    _train(work, run_config={"dataset": "b", "lr": 0.1})
  _train(work, run_config={"dataset": "a", "lr": 0.05})  # the same config resumes
  with pytest.raises(checkpoint_lib.CheckpointError, match="is a file"):
    _train(str(tmp_path / "run_config.json"))


@pytest.fixture
def python_sigint_handler():
  """Python's own Ctrl-C handler, as in a terminal: a process started in the background by a
  non-interactive shell (some CI runners, ``cmd &``) inherits SIGINT ignored."""
  old = signal.signal(signal.SIGINT, signal.default_int_handler)
  yield
  signal.signal(signal.SIGINT, old)


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals: main thread")
def test_ctrl_c_stops_at_a_step_and_resumes_bit_identically(tmp_path, python_sigint_handler):
  ref, ref_hist = _train(None)
  fired = []

  def on_step(g):
    if g == 10 and not fired:  # mid-epoch, between two checkpoints
      fired.append(g)
      os.kill(os.getpid(), signal.SIGINT)

  with pytest.raises(loop_lib.Interrupted) as info:
    _train(str(tmp_path), on_step=on_step)
  assert str(info.value).startswith("interrupted at step ") and info.value.step == info.value.resume_step
  assert "re-run the same command to resume from step" in str(info.value)
  best, hist = _train(str(tmp_path))
  chex.assert_trees_all_close(best.params, ref.params, atol=0, rtol=0)
  assert hist == ref_hist
  timing = loop_lib.read_timing(str(tmp_path))
  assert [(s["from_step"], s["to_step"]) for s in timing["segments"]] == [
      (0, info.value.step), (info.value.step, 18)]


def test_early_interrupt_leaves_no_empty_metrics_file(tmp_path):
  def on_step(g):
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt, match="interrupted at step 0; re-run the same command to resume "
                                              "from step 0"):
    _train(str(tmp_path), on_step=on_step)
  assert not os.path.exists(tmp_path / "metrics.jsonl")


def test_ctrl_c_in_the_binary_is_one_line(tmp_path):
  args = ["--dataset=synthetic:tiny", f"--workdir={tmp_path}", "--config.fit.epochs=400",
          "--config.fit.patience=1000", "--config.fit.batch_size=32", "--config.fit.progress=False",
          "--config.fit.valid_negatives=10", "--config.eval_negatives=10"]
  # SIG_DFL in the child, so its Python installs the Ctrl-C handler even when this process inherited
  # SIGINT ignored (started in the background by a non-interactive shell).
  proc = subprocess.Popen([sys.executable, "-m", "experiments.train", *args], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"),
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  lines = []
  deadline = time.time() + 90
  for line in proc.stderr:  # wait for training to run
    lines.append(line)
    if "eval at step" in line or time.time() > deadline:
      break
  proc.send_signal(signal.SIGINT)
  _, rest = proc.communicate(timeout=60)
  err = "".join(lines) + rest
  assert proc.returncode == 130, err[-3000:]
  assert "Traceback" not in err, err[-3000:]
  last = [line for line in err.splitlines() if line.startswith("error: ")]
  assert len(last) == 1 and "re-run the same command to resume from step" in last[0], err[-3000:]
  assert os.path.getsize(tmp_path / "checkpoints_root" / "metrics.jsonl") > 0
