"""Tests of jaxrec.stream: the learner contract for every strategy, no leakage, exact resume, compiles."""

from __future__ import annotations

import functools
import os
import tempfile
import unittest

from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.data import preprocess, synthetic
from jaxrec.models import registry
from jaxrec.stream import blocks as blocks_lib
from jaxrec.stream import evaluate as evaluate_lib
from jaxrec.stream import loop as loop_lib
from jaxrec.stream import strategies as strategies_lib
from jaxrec.train import learner as learner_lib
from jaxrec.train import state as state_lib
from tests import learner_contract

CONFIG = strategies_lib.StrategyConfig(batch_size=128, num_negatives=4, retrain_epochs=1,
                                       reservoir_size=300, replay_sample=64, steps=2)


@functools.lru_cache(maxsize=None)
def _data(history_len=None, kind="periods"):
  log = preprocess.deduplicate(synthetic.generate("tiny", seed=0))
  if kind == "periods":
    return blocks_lib.from_periods(log, 6, 3, history_len=history_len, pad_multiple=128)
  return blocks_lib.from_prequential(log, 128, 0.75, history_len=history_len)


@functools.lru_cache(maxsize=None)
def _module(model):
  hp = {"dim": 8} if model.startswith("mf") else {"dim": 8, "hidden": 8}
  log = _data().log
  return registry.get(model).make(log.num_users, log.num_items, **hp)


def _env(model="mf-bpr", kind="periods"):
  seq = registry.get(model).family == "sequence"
  return strategies_lib.Env(model, _module(model), CONFIG, _data(5 if seq else None, kind))


def _stream(name, env, seed=0, workdir=None, config=None, data=None):
  d = strategies_lib.get(name)
  learner = d.make(env)
  rng = jax.random.PRNGKey(seed)
  state = learner.init(strategies_lib.init_params(env, rng), rng)
  data = data or env.data
  ev = evaluate_lib.BlockEvaluator(registry.get(env.model).score_fn(env.module), data, num_negatives=20,
                                   seed=seed)
  cfg = config or loop_lib.StreamConfig(jit=d.jittable)
  return loop_lib.run(learner, state, data, ev, rng=rng, workdir=workdir, config=cfg)


def _strip_times(records):
  return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in records]


GENERIC_STRATEGIES = ("fine-tune", "replay", "retrain", "retrain-warm")


class ContractTest(parameterized.TestCase):

  def test_gradient_learner(self):
    spec = registry.get("mf-bpr")
    module = _module("mf-bpr")
    learner = learner_lib.gradient_learner(spec.loss_fn(module), state_lib.make_optimizer("adam", 1e-2))
    params = spec.init(jax.random.PRNGKey(0), module, registry.sample_batch("user", 8, 3))
    rng = np.random.default_rng(0)
    batches = [dict(registry.sample_batch("user", 8, 3),
                    user=rng.integers(0, 100, 8).astype(np.int32),
                    positive=rng.integers(0, 100, 8).astype(np.int32)) for _ in range(2)]
    learner_contract.check(self, learner, params, batches)

  # The generic strategies, by name: the registry grows when a method's package is imported (MeLON, SML
  # register theirs, tested in their own files), which must not change what this file collects.
  @parameterized.product(name=GENERIC_STRATEGIES, model=["mf-bpr", "gru4rec"])
  def test_strategy(self, name, model):
    env = _env(model)
    d = strategies_lib.get(name)
    params = strategies_lib.init_params(env, jax.random.PRNGKey(1))
    learner_contract.check(self, d.make(env), params, [env.data.block(0), env.data.block(1)],
                           jit_update=d.jittable, jit_init=name == "fine-tune")


def _memorise_scores(table, queries, items):
  rows = table[queries["user"]]
  if items.ndim == 1:
    return rows[:, items]
  return jnp.take_along_axis(rows, items, axis=1)


def _memoriser(num_users, num_items):
  """A strategy that memorises the (user, item) pairs of every block it is updated on."""

  def init(params, rng):
    del rng
    return params

  def update(table, block, rng):
    del rng
    return table.at[block["user"], block["positive"]].max(block["mask"].astype(table.dtype)), {}

  del num_users, num_items
  return learner_lib.Learner(init=init, update=update, params=lambda s: s)


class LoopTest(parameterized.TestCase):

  def test_no_block_scored_by_a_state_that_saw_it(self):
    data = _data()
    strategy = _memoriser(data.num_users, data.num_items)
    table = jnp.zeros((data.num_users, data.num_items), jnp.float32)
    ev = evaluate_lib.BlockEvaluator(_memorise_scores, data, num_negatives=20, exclude_known=False)
    res = loop_lib.run(strategy, table, data, ev, rng=jax.random.PRNGKey(0))
    # Deduplicated log: a pair is never repeated, so an unleaked memoriser ties everything (worst rank).
    for r in res.records:
      self.assertLess(r["full/MRR"], 0.1, r)
      self.assertLess(r["sampled20/MRR"], 0.2, r)
    # Positive control: scored after its own update, the memoriser ranks (nearly) perfectly.
    leaked = ev(strategy.update(res.state, data.block(len(data) - 1), None)[0], len(data) - 1)
    self.assertGreater(leaked["sampled20/MRR"], 0.5)

  @parameterized.parameters("fine-tune", "replay", "retrain-warm")
  def test_resume_is_bit_identical(self, name):
    env = _env("mf-bpr", kind="batch")
    data = env.data
    self.assertGreaterEqual(len(data), 4)
    full = _stream(name, env)

    class Killed(Exception):
      pass

    class Dying(blocks_lib.Blocks):
      def block(self, t):
        if t == 3:
          raise Killed()
        return super().block(t)

    dying = Dying(**{f: getattr(data, f) for f in data.__dataclass_fields__})
    d = strategies_lib.get(name)
    with tempfile.TemporaryDirectory() as wd:
      with self.assertRaises(Killed):
        _stream(name, env, workdir=wd, data=dying,
                config=loop_lib.StreamConfig(checkpoint_every=2, jit=d.jittable))
      paused = _stream(name, env, workdir=wd,
                       config=loop_lib.StreamConfig(checkpoint_every=2, max_blocks=1, jit=d.jittable))
      self.assertFalse(paused.done, f"records={len(paused.records)} blocks={len(data)} "
                       f"ckpts={sorted(os.listdir(os.path.join(wd, 'checkpoints')))}")
      self.assertLen(paused.records, 3)  # resumed at block 2 (last checkpoint), paused after block 2
      resumed = _stream(name, env, workdir=wd, config=loop_lib.StreamConfig(checkpoint_every=2,
                                                                            jit=d.jittable))
    self.assertTrue(resumed.done)
    self.assertEqual(_strip_times(resumed.records), _strip_times(full.records))
    learner = d.make(env)
    learner_contract.assert_trees_equal(self, learner.params(resumed.state), learner.params(full.state))

  def test_a_workdir_refuses_a_stream_of_another_config(self):
    from jaxrec.train import checkpoint as checkpoint_lib
    env = _env("mf-bpr", kind="batch")
    d = strategies_lib.get("fine-tune")
    learner = d.make(env)
    rng = jax.random.PRNGKey(0)
    ev = evaluate_lib.BlockEvaluator(registry.get(env.model).score_fn(env.module), env.data,
                                     num_negatives=20, seed=0)
    cfg = loop_lib.StreamConfig(max_blocks=1, jit=d.jittable)
    with tempfile.TemporaryDirectory() as wd:
      for run_config in ({"lr": 1}, {"lr": 1}):  # a fresh start, then a resume of the same config
        state = learner.init(strategies_lib.init_params(env, rng), rng)
        loop_lib.run(learner, state, env.data, ev, rng=rng, workdir=wd, config=cfg, run_config=run_config)
      state = learner.init(strategies_lib.init_params(env, rng), rng)
      with self.assertRaisesRegex(checkpoint_lib.ConfigMismatchError, "lr"):
        loop_lib.run(learner, state, env.data, ev, rng=rng, workdir=wd, config=cfg, run_config={"lr": 2})

  @parameterized.parameters("fine-tune", "replay", "retrain")
  def test_compile_count_flat_across_seeds(self, name):
    env = _env("mf-bpr")
    _stream(name, env, seed=0)
    before = learner_contract.compile_count()
    _stream(name, env, seed=1)
    self.assertEqual(learner_contract.compile_count() - before, 0)

  def test_blocks_static_shape_and_order(self):
    for kind in ("periods", "batch"):
      data = _data(5, kind)
      shapes = {tuple((k, np.shape(v)) for k, v in sorted(data.block(t).items())) for t in range(len(data))}
      self.assertLen(shapes, 1)
      np.testing.assert_array_equal(data.starts[1:], data.ends[:-1])
      self.assertEqual(int(data.starts[0]), data.offline_end)
      self.assertTrue(np.all(np.diff(data.log.timestamp) >= 0))

  def test_reservoir_keeps_everything_under_capacity_and_stays_full(self):
    rows = {"user": jnp.arange(10, dtype=jnp.int32), "mask": jnp.arange(10) < 7}
    res = {"user": jnp.full((8,), -1, jnp.int32)}
    res, seen = strategies_lib._reservoir_insert(res, jnp.int32(0), rows, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(res["user"], [0, 1, 2, 3, 4, 5, 6, -1])
    self.assertEqual(int(seen), 7)
    rows = {"user": 100 + jnp.arange(10, dtype=jnp.int32), "mask": jnp.ones(10, bool)}
    res, seen = strategies_lib._reservoir_insert(res, seen, rows, jax.random.PRNGKey(1))
    self.assertEqual(int(seen), 17)
    self.assertGreaterEqual(int(res["user"][7]), 100)  # the 8th arrival (100) filled the last slot
    self.assertTrue(np.all(np.asarray(res["user"]) >= 0))

  def test_weighted_average(self):
    recs = [{"size": 1, "m": 1.0}, {"size": 3, "m": 0.0}]
    self.assertAlmostEqual(loop_lib.weighted_average(recs, "m"), 0.25)


if __name__ == "__main__":
  unittest.main()
