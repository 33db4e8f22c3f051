"""Tests of the training core: learners, state, loop (resume, NaN, keep-best), stages, checkpoints, log."""

import json
import os
import shutil
import time
import types

import chex

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.train import checkpoint as checkpoint_lib
from jaxrec.train import logging as metrics_log
from jaxrec.train import loop as loop_lib
from jaxrec.train import state as state_lib
from jaxrec.train import learner as learner_lib
from jaxrec.train import stages as stages_lib

N, D, B = 48, 3, 8  # 6 batches per epoch.
STEPS_PER_EPOCH = N // B


def _data(seed=0):
  rs = np.random.default_rng(1234 + seed)
  x = rs.normal(size=(N, D)).astype(np.float32)
  y = (x @ np.array([1.0, -2.0, 0.5], np.float32) + 0.3).astype(np.float32)
  return x, y


def _loss(params, batch, rng):
  """Linear regression with input dropout (so the per-step key matters); NaN where batch['nan']."""
  keep = jax.random.bernoulli(rng, 0.9, batch["x"].shape)
  pred = (batch["x"] * keep / 0.9) @ params["w"] + params["b"]
  err = (pred - batch["y"]) ** 2 * batch["mask"]
  loss = jnp.sum(err) / jnp.maximum(jnp.sum(batch["mask"]), 1.0)
  loss = jnp.where(batch["nan"] > 0, jnp.nan, loss)
  return loss, {"mse": loss}


TX = state_lib.make_optimizer("adam", learning_rate=0.05)
LEARNER = learner_lib.gradient_learner(_loss, TX)
STEP = learner_lib.jit_update(LEARNER)  # Shared: compiled once for the whole file (the loop uses it too).


def _init(seed):
  w = jax.random.normal(jax.random.key(seed), (D,)) * 0.1
  return state_lib.create({"w": w, "b": jnp.zeros(())}, TX)


def _batches_fn(seed, nan_at=None, crash_at=None):
  """Per-epoch shuffle that depends on (seed, epoch) only; global batch index g = state.step."""
  x, y = _data()

  def batches(epoch):
    perm = np.random.default_rng([seed, epoch]).permutation(N)
    for i in range(STEPS_PER_EPOCH):
      g = epoch * STEPS_PER_EPOCH + i
      if crash_at is not None and g == crash_at:
        raise KeyboardInterrupt(f"simulated kill before global batch {g}")
      idx = perm[i * B:(i + 1) * B]
      yield {"x": x[idx], "y": y[idx], "mask": np.ones(B, np.float32),
             "nan": np.float32(nan_at is not None and g == nan_at)}
  return batches


def _eval_fn(params):
  x, y = _data(seed=7)
  return {"neg_mse": -jnp.mean((x @ params["w"] + params["b"] - y) ** 2), "ones": 1.0}


def _cfg(**kw):
  base = dict(num_epochs=3, log_every=4, eval_every=5, metric="neg_mse", mode="max", checkpoint_every=3,
              progress=False, prefetch=1)
  base.update(kw)
  return loop_lib.LoopConfig(**base)


def _run(cfg, seed=0, workdir=None, **bkw):
  return loop_lib.train(cfg, LEARNER, _init(seed), _batches_fn(seed, **bkw), _eval_fn, workdir,
                        rng=jax.random.key(100 + seed))


def test_step_pure_and_jit_agrees():
  batch = next(_batches_fn(0)(0))
  rng = jax.random.key(3)
  plain = LEARNER.update
  s1, m1 = plain(_init(0), batch, rng)
  s2, m2 = jax.jit(plain)(_init(0), batch, rng)
  s3, m3 = STEP(_init(0), batch, rng)
  chex.assert_trees_all_close(s1, s2, atol=1e-6)
  chex.assert_trees_all_close(s2, s3, atol=0)
  chex.assert_trees_all_close(m1, m2, atol=1e-6)
  assert int(s1.step) == 1 and bool(m1["is_finite"])
  assert set(m1) == {"loss", "mse", "grad_norm", "is_finite"}
  # Pure: same inputs, same outputs; the input state is not modified (without donation).
  s0 = _init(0)
  plain(s0, batch, rng)
  chex.assert_trees_all_close(s0, _init(0), atol=0)
  # jit_update donates the input state.
  s4 = _init(0)
  STEP(s4, batch, rng)
  assert s4.params["w"].is_deleted()
  # A NaN loss is flagged.
  _, m = STEP(_init(0), dict(batch, nan=np.float32(1)), rng)
  assert not bool(m["is_finite"])


def test_make_optimizer_variants():
  params = {"w": jnp.ones((2,))}
  grads = {"w": jnp.zeros((2,))}
  upd = {}
  for name in ("adam", "adamw", "sgd"):
    tx = state_lib.make_optimizer(name, 0.1, weight_decay=0.5, clip_norm=1.0)
    upd[name], _ = tx.update(grads, tx.init(params), params)
  # Zero gradient: only the weight decay moves the weights; coupled Adam normalizes it, AdamW does not.
  chex.assert_trees_all_close(upd["adamw"]["w"], -0.1 * 0.5 * jnp.ones(2), atol=1e-6)
  chex.assert_trees_all_close(upd["adam"]["w"], -0.1 * jnp.ones(2), atol=1e-4)
  chex.assert_trees_all_close(upd["sgd"]["w"], -0.1 * 0.5 * jnp.ones(2), atol=1e-6)
  with pytest.raises(ValueError, match="Unknown optimizer"):
    state_lib.make_optimizer("lamb", 0.1)


def test_loss_decreases_and_history():
  best, history = _run(_cfg(num_epochs=4, eval_every=None, checkpoint_every=None))
  train = [r for r in history if r["kind"] == "train"]
  evals = [r for r in history if r["kind"] == "eval"]
  assert train[-1]["loss"] < 0.5 * train[0]["loss"]
  assert [r["step"] for r in evals] == [6, 12, 18, 24]  # Epoch ends.
  assert train[-1]["step"] == 24  # Final partial window is logged.
  assert int(best.step) in [r["step"] for r in evals if r["best"]][-1:]


def test_resume_is_exact(tmp_path):
  cfg = _cfg()
  a_dir, b_dir, c_dir = (str(tmp_path / n) for n in "abc")
  state_a, hist_a = _run(cfg, workdir=a_dir)
  compiled = STEP._cache_size() if hasattr(STEP, "_cache_size") else None
  # B: killed (exception from the data pipeline) inside epoch 1, after checkpoints at steps 5, 6, 9.
  with pytest.raises(KeyboardInterrupt):
    _run(cfg, workdir=b_dir, crash_at=11)
  logged = metrics_log.read_metrics(os.path.join(b_dir, metrics_log.METRICS_FILE))
  assert max(r["step"] for r in logged) > 9  # Records past the checkpoint exist and must be dropped.
  state_b, hist_b = _run(cfg, workdir=b_dir)
  # C: paused by max_steps (not a multiple of log/eval/checkpoint intervals), then continued.
  _run(_cfg(max_steps=7), workdir=c_dir)
  state_c, hist_c = _run(cfg, workdir=c_dir)
  for st, hist, d in ((state_b, hist_b, b_dir), (state_c, hist_c, c_dir)):
    chex.assert_trees_all_close(state_a, st, atol=0, rtol=0)
    assert hist == hist_a
    with open(os.path.join(a_dir, "metrics.jsonl")) as fa, open(os.path.join(d, "metrics.jsonl")) as fb:
      assert fa.read() == fb.read()
  if compiled is not None:
    assert STEP._cache_size() == compiled  # Restored (committed) states do not recompile the step.
  # A finished run resumed again does nothing and returns the same best state.
  state_d, hist_d = _run(cfg, workdir=a_dir)
  chex.assert_trees_all_close(state_a, state_d, atol=0, rtol=0)
  assert hist_d == hist_a


def test_nan_names_first_bad_step(tmp_path):
  with pytest.raises(FloatingPointError, match=r"at step 9 "):
    _run(_cfg(log_every=4, eval_every=None, checkpoint_every=1), workdir=str(tmp_path), nan_at=9)
  # No checkpoint of a state at or after the NaN step.
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path / "checkpoints"))
  assert ckpt.latest_step() == 9  # State after steps 0..8, saved before step 9 ran.
  ckpt.close()


def test_nan_detected_without_workdir():
  with pytest.raises(FloatingPointError, match=r"at step 2 "):
    _run(_cfg(log_every=5, eval_every=None, checkpoint_every=None, eval_at_epoch_end=False), nan_at=2)


def test_determinism():
  cfg = _cfg(num_epochs=2, eval_every=None, checkpoint_every=None)
  s1, h1 = _run(cfg, seed=0)
  compiled = STEP._cache_size() if hasattr(STEP, "_cache_size") else None
  s2, h2 = _run(cfg, seed=0)
  s3, _ = _run(cfg, seed=1)
  chex.assert_trees_all_close(s1, s2, atol=0, rtol=0)
  assert h1 == h2
  assert not np.allclose(s1.params["w"], s3.params["w"])
  if compiled is not None:
    assert STEP._cache_size() == compiled  # Later runs (and seeds) reuse the compiled step.


def test_keep_best_and_early_stopping(tmp_path):
  scores = iter([0.1, 0.5, 0.3, 0.5, 0.2, 0.9])
  snapshots = {}

  def eval_fn(params):
    snapshots[len(snapshots)] = jax.tree.map(np.array, params)
    return {"auc": next(scores)}

  cfg = _cfg(num_epochs=10, eval_every=2, eval_at_epoch_end=False, metric="auc", patience=3,
             checkpoint_every=None)
  best, history = loop_lib.train(cfg, LEARNER, _init(0), _batches_fn(0), eval_fn, str(tmp_path),
                                 rng=jax.random.key(0))
  evals = [r for r in history if r["kind"] == "eval"]
  assert [r["auc"] for r in evals] == [0.1, 0.5, 0.3, 0.5, 0.2]  # Stopped: 3 evals without improvement.
  assert [r["best"] for r in evals] == [True, True, False, False, False]
  assert int(best.step) == 4  # The tie at step 8 does not replace the earlier best.
  chex.assert_trees_all_close(best.params, snapshots[1], atol=0, rtol=0)
  with checkpoint_lib.Checkpointer(str(tmp_path / "checkpoints")) as ckpt:
    assert ckpt.all_steps() == [4, 8, 10]  # Best + the 2 latest (LoopConfig.keep_latest=2).
    restored, meta = ckpt.restore_best(checkpoint_lib.abstract_like(best))
    chex.assert_trees_all_close(restored, best, atol=0, rtol=0)
    assert meta["loop"]["best_step"] == 4 and meta["loop"]["bad_evals"] == 0


def test_time_limit_stops_at_the_first_evaluation_past_it(monkeypatch):
  # The loop's clock is replaced by one that moves only when an evaluation runs (0.2 s each), so the
  # test does not depend on compile times or the machine's load.
  clock = [0.0]
  fake_time = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
  fake_time.perf_counter = lambda: clock[0]
  monkeypatch.setattr(loop_lib, "time", fake_time)

  def eval_fn(params):
    del params
    clock[0] += 0.2
    return {"auc": clock[0]}

  cfg = _cfg(num_epochs=10, eval_every=2, eval_at_epoch_end=False, metric="auc", time_limit=0.3)
  _, history = loop_lib.train(cfg, LEARNER, _init(0), _batches_fn(0), eval_fn, None, rng=jax.random.key(0))
  evals = [r for r in history if r["kind"] == "eval"]
  assert len(evals) == 2 and evals[-1]["stopped"] == "time_limit" and "stopped" not in evals[0]


def test_checkpointer_ignores_partial_save(tmp_path):
  d = str(tmp_path)
  s1 = _init(0)
  s2 = s1.replace(step=s1.step + 5, params={"w": s1.params["w"] + 1, "b": s1.params["b"]})
  abstract = checkpoint_lib.abstract_like(s1)
  with checkpoint_lib.Checkpointer(d, mode="min") as ckpt:
    ckpt.save(1, s1, {"pos": 1}, metric=0.3)
    ckpt.save(2, s2, {"pos": 2}, metric=0.7)
  # A kill during the save of step 3: Orbax's tmp dir, with a truncated copy of a real checkpoint.
  tmp = os.path.join(d, "3.orbax-checkpoint-tmp-1234567")
  shutil.copytree(os.path.join(d, "2"), tmp)
  for root, _, files in os.walk(tmp):
    for f in files[: len(files) // 2]:
      os.remove(os.path.join(root, f))
  with checkpoint_lib.Checkpointer(d, mode="min") as ckpt:
    assert ckpt.latest_step() == 2 and ckpt.all_steps() == [1, 2]
    restored, meta = ckpt.restore_latest(abstract)
    chex.assert_trees_all_close(restored, s2, atol=0)
    assert meta == {"pos": 2}
    assert ckpt.best_step() == 1  # mode="min".
    restored, meta = ckpt.restore_best(abstract)
    chex.assert_trees_all_close(restored, s1, atol=0)
    assert meta == {"pos": 1}


def test_metrics_writer_truncates_and_skips_torn_line(tmp_path):
  path = str(tmp_path / "m.jsonl")
  with metrics_log.MetricsWriter(path) as w:
    for s in (1, 2, 3):
      w.write({"step": s, "kind": "train", "loss": np.float32(s) / 2, "nan": float("nan")})
  with open(path, "a") as f:
    f.write('{"step": 4, "kin')  # Torn last line.
  assert [r["step"] for r in metrics_log.read_metrics(path)] == [1, 2, 3]
  assert metrics_log.read_metrics(path)[0] == {"step": 1, "kind": "train", "loss": 0.5, "nan": "nan"}
  with metrics_log.MetricsWriter(path, resume_step=2) as w:
    w.write({"step": 3, "kind": "eval"})
  with open(path) as f:
    assert [json.loads(line)["kind"] for line in f] == ["train", "train", "eval"]


def test_loop_takes_any_learner_and_checks_every_float_metric():
  """A learner whose state is a plain dict and whose metrics have no reserved names."""

  def init(params, rng):
    del rng
    return {"p": jax.tree.map(jnp.copy, params), "count": jnp.zeros((), jnp.int32)}

  def update(state, batch, rng):
    del rng
    p = jax.tree.map(lambda w: w - 0.1 * w, state["p"])
    bad = jnp.where(batch["nan"] > 0, jnp.inf, 0.0)
    return {"p": p, "count": state["count"] + 1}, {"shrink": jnp.float32(0.9) + bad}

  learner = learner_lib.Learner(init=init, update=update, params=lambda s: s["p"])
  params = {"w": jnp.ones((D,)), "b": jnp.zeros(())}
  seen = []

  def eval_fn(p):
    seen.append(float(p["w"][0]))
    return {"w0": p["w"][0]}

  cfg = _cfg(num_epochs=1, eval_every=None, metric=None, checkpoint_every=None)
  final, hist = loop_lib.train(cfg, learner, learner.init(params, None), _batches_fn(0), eval_fn,
                               rng=jax.random.key(0))
  assert int(final["count"]) == STEPS_PER_EPOCH
  np.testing.assert_allclose(seen, [0.9 ** STEPS_PER_EPOCH], rtol=1e-6)
  assert [r["shrink"] for r in hist if r["kind"] == "train"][0] == pytest.approx(0.9)
  with pytest.raises(FloatingPointError, match=r"at step 3 .*non-finite \['shrink'\]"):
    loop_lib.train(cfg, learner, learner.init(params, None), _batches_fn(0, nan_at=3), eval_fn,
                   rng=jax.random.key(0))


def test_stages_resume_and_start_from_previous(tmp_path):
  """Two stages: the second starts from the first's best params; a rerun restores both, no retraining."""
  cfg = _cfg(num_epochs=2, eval_every=None, checkpoint_every=None)

  def init_from_previous(params, rng):
    del rng
    return state_lib.create(jax.tree.map(lambda x: x * 0.5, params), TX)

  stages = [stages_lib.Stage("one", LEARNER, _batches_fn(0), cfg, _eval_fn),
            stages_lib.Stage("two", LEARNER, _batches_fn(1), cfg, _eval_fn, init=init_from_previous)]
  params0 = {"w": jnp.full((D,), 0.1), "b": jnp.zeros(())}
  p1, hists = stages_lib.run_stages(stages, params0, rng=jax.random.key(0), workdir=str(tmp_path))
  assert set(hists) == {"one", "two"}
  assert os.path.isdir(tmp_path / "one" / "checkpoints") and os.path.isdir(tmp_path / "two" / "checkpoints")
  # The same by hand: stage one's loop, its best params halved, stage two's loop (keys as documented).
  keys = [jax.random.split(jax.random.fold_in(jax.random.key(0), i)) for i in range(2)]
  one, _ = loop_lib.train(cfg, LEARNER, state_lib.create(params0, TX), _batches_fn(0), _eval_fn,
                          rng=keys[0][1])
  two, _ = loop_lib.train(cfg, LEARNER, init_from_previous(one.params, keys[1][0]), _batches_fn(1),
                          _eval_fn, rng=keys[1][1])
  chex.assert_trees_all_close(two.params, p1, atol=0, rtol=0)
  again, _ = stages_lib.run_stages(stages, params0, rng=jax.random.key(0), workdir=str(tmp_path))
  chex.assert_trees_all_close(again, p1, atol=0, rtol=0)
  with pytest.raises(ValueError, match="distinct"):
    stages_lib.run_stages([stages[0], stages[0]], params0, rng=jax.random.key(0))


def test_async_save_keeps_meta_as_it_was_at_save_time(tmp_path):
  """A caller that mutates its meta after `save` returns (a stream's growing records list) must not
  change what the asynchronous save writes."""
  records = [{"block": 0}]
  state = _init(0)
  with checkpoint_lib.Checkpointer(str(tmp_path), async_save=True) as ckpt:
    ckpt.save(1, state, {"next_block": 1, "records": records})
    records.append({"block": 1})
  with checkpoint_lib.Checkpointer(str(tmp_path)) as ckpt:
    _, meta = ckpt.restore_latest(checkpoint_lib.abstract_like(state))
  assert meta == {"next_block": 1, "records": [{"block": 0}]}


def test_checkpointer_takes_a_relative_directory(tmp_path, monkeypatch):
  """`--workdir=runs/x` is the common case; Orbax itself refuses relative paths."""
  monkeypatch.chdir(tmp_path)
  state = _init(0)
  with checkpoint_lib.Checkpointer(os.path.join("runs", "x")) as ckpt:
    ckpt.save(1, state, {"pos": 1})
  with checkpoint_lib.Checkpointer(os.path.join("runs", "x")) as ckpt:
    restored, meta = ckpt.restore_latest(checkpoint_lib.abstract_like(state))
  chex.assert_trees_all_close(restored, state, atol=0)
  assert meta == {"pos": 1} and os.path.isdir(tmp_path / "runs" / "x" / "1")
