"""jaxrec.train.sharding: the same learner on 1 device and on 4 fake CPU devices.

The 4-device half runs in a subprocess (``tests/sharding_worker.py``) because
``--xla_force_host_platform_device_count`` must be set before JAX initialises. Multi-host
runs as 2 local processes of 2 CPU devices each (``jax.distributed.initialize`` on localhost, gloo
collectives), compared with 1 process of 4 devices; real multi-machine runs are not testable here.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys

import chex
import jax
import numpy as np
import optax
import pytest
from absl.testing import absltest

from jaxrec.models import mf, registry
from jaxrec.train import learner as learner_lib
from jaxrec.train import sharding, sparse
from tests import learner_contract

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Float32 tolerance of 1 vs 4 devices after 40 steps. Splitting the batch over the data axis reorders
# the loss's and gradients' sums (rounding ~ eps32 * |x| = 1.2e-7 * 2.5 per step); measured differences
# are <= 4.2e-7 (2 x 2 mesh) and exactly 0 with the model axis alone (1 x 4). 1e-5 leaves a 20x margin
# and is four orders of magnitude below what a wrong shard or a lost update gives (0.05 to 0.3).
ATOL = 1e-5


def _mf():
  spec = registry.get("mf-bpr")
  module = spec.make(50, 30, dim=8)
  params = spec.init(jax.random.key(1), module, registry.sample_batch("user"))
  return spec, module, params


def _batches(steps=6, b=16, seed=0):
  rng = np.random.default_rng(seed)
  mask = np.ones(b, bool)
  mask[-3:] = False
  return [{"user": (rng.zipf(1.5, b).clip(1, 50) - 1).astype(np.int32),
           "positive": rng.integers(0, 30, b).astype(np.int32),
           "negatives": rng.integers(0, 30, (b, 3)).astype(np.int32), "mask": mask} for _ in range(steps)]


def _run(learner, params, batches):
  update = learner_lib.jit_update(learner)
  state = learner.init(params, jax.random.key(0))
  for i, batch in enumerate(batches):
    state, _ = update(state, batch, jax.random.key(i))
  return jax.device_get(learner.params(state))


class OneDeviceTest(absltest.TestCase):

  def test_one_device_mesh_is_the_unsharded_learner(self):
    spec, module, params = _mf()
    tables = ("params/user_emb/embedding", "params/item_emb/embedding")
    plan = sharding.ShardingPlan(sharding.make_mesh(1, 1, devices=jax.devices()[:1]), tables)
    for learner in (learner_lib.gradient_learner(spec.loss_fn(module), optax.adam(0.05)),
                    sparse.row_sparse_learner(mf.compact_loss_fn(module, "bpr"),
                                              sparse.RowLookups(**mf.row_lookups(module)),
                                              sparse.lazy_adam(0.05))):
      sharded = sharding.shard_learner(learner, plan, params)
      self.assertIs(sharded, sharding.shard_learner(learner, plan, params))  # one jitted step per plan
      placed = [plan.put_batch(b) for b in _batches()]
      chex.assert_trees_all_equal(_run(sharded, params, placed), _run(learner, params, _batches()))
      learner_contract.check(self, sharded, params, placed[:2], jit_init=False)

  def test_bad_mesh_and_plan_are_one_line(self):
    n = len(jax.devices())
    with self.assertRaisesRegex(sharding.MeshError, f"must equal the {n} devices, got data=3, model=2"):
      sharding.make_mesh(3, 2)
    with self.assertRaisesRegex(sharding.MeshError, "at most one of data, model"):
      sharding.make_mesh(-1, -1)
    mesh = sharding.make_mesh()
    self.assertEqual(dict(mesh.shape), {"data": 1, "model": n})
    with self.assertRaisesRegex(sharding.MeshError, "lack 'rows'"):
      sharding.ShardingPlan(mesh, ("user",), model_axis="rows")
    _, _, params = _mf()
    with self.assertRaisesRegex(ValueError, "no table .* at parameter path 'params/user'"):
      sharding.ShardingPlan(mesh, ("params/user",)).table_rows(params)

  def test_initialize_distributed_calls_jax_distributed_only_when_asked(self):
    calls = []
    real = jax.distributed.initialize
    jax.distributed.initialize = lambda **kw: calls.append(kw)
    try:
      self.assertFalse(sharding.initialize_distributed())
      self.assertFalse(sharding.initialize_distributed(num_processes=1))
      self.assertTrue(sharding.initialize_distributed("10.0.0.1:1234", 2, 1, initialization_timeout=60))
      self.assertTrue(sharding.initialize_distributed("auto"))
    finally:
      jax.distributed.initialize = real
    self.assertEqual(calls[0], dict(coordinator_address="10.0.0.1:1234", num_processes=2, process_id=1,
                                    initialization_timeout=60))
    self.assertEqual(calls[1], dict(coordinator_address=None, num_processes=None, process_id=None))


def _xla_flags(flag: str) -> str:
  """The session's XLA flags (tests/conftest.py) plus ``flag``, for a worker process."""
  return (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()


@functools.lru_cache(maxsize=None)
def _four_devices() -> dict:
  env = dict(os.environ, XLA_FLAGS=_xla_flags("--xla_force_host_platform_device_count=4"),
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "tests.sharding_worker"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  if proc.returncode:
    raise AssertionError(f"sharding_worker failed:\n{proc.stderr[-4000:]}")
  return json.loads(proc.stdout)


@pytest.mark.slow  # one subprocess of ~25 s on quiet cores, almost all XLA compiles of 12 sharded steps
class FourDevicesTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.results = _four_devices()

  def _check_case(self, name, rows, dim, zero_grad=()):
    case = self.results[name]
    ref = case["1x1"]
    for mesh in ("2x2", "1x4"):
      rec = case[mesh]
      for leaf, diff in rec["abs_diff"].items():
        if leaf not in zero_grad:
          self.assertLessEqual(diff, ATOL, f"{name} {mesh} {leaf}")
      np.testing.assert_allclose(rec["losses"], ref["losses"], rtol=1e-5, err_msg=f"{name} {mesh}")
      self.assertTrue(rec["same_shapes"], f"{name} {mesh}: served params are the unpadded tables")
      self.assertEqual(rec["padding_max_abs"], 0.0)
    for mesh in ("1x1", "2x2", "1x4"):
      self.assertEqual(case[mesh]["step_cache"], [1, 1], f"{name} {mesh}: a second run recompiled")
    # The tables and every optimizer leaf of their shape are split by rows; the rest is replicated.
    for mesh, shards in (("2x2", 2), ("1x4", 4)):
      state = case[mesh]["state"]
      for table, r in rows.items():
        padded = -(-r // shards) * shards
        leaves = {k: v for k, v in state.items() if table in k and v[0][:1] == [padded]}
        self.assertGreaterEqual(len(leaves), 2, f"{name} {mesh} {table}: table + optimizer state")
        for k, (shape, spec, shard_shapes) in leaves.items():
          self.assertEqual(spec, "P('model',)", k)
          self.assertEqual(shard_shapes, [[padded // shards] + shape[1:]], k)
      for k, (shape, spec, _) in state.items():
        if not any(t in k and shape[:1] == [-(-r // shards) * shards] for t, r in rows.items()):
          self.assertEqual(spec, "P()", k)
    self.assertIn([52, dim], [v[0] for v in case["1x4"]["state"].values()])  # 50 users padded to 52

  def test_mf_bpr_dense_adam(self):
    self._check_case("mf_dense_adam", {"user_emb": 50, "item_emb": 30}, 8)

  def test_mf_bpr_lazy_adam(self):
    self._check_case("mf_lazy_adam", {"user_emb": 50, "item_emb": 30}, 8)

  def test_2ts_stage1_dense_adam(self):
    # feat_net's output bias has a zero gradient in exact arithmetic (the offer-set softmax cancels a
    # shift common to every item); Adam normalises its rounding noise into lr-sized steps, so it is
    # left out of the parameter comparison (its measured gradient is 1e-6 of the others').
    grads = self.results["tts_grad_abs_max"]
    zero = {k for k, g in grads.items() if g < 1e-5 * max(grads.values())}
    self.assertEqual(zero, {"['feat_net']['Dense_0']['bias']"})
    self._check_case("tts_stage1_dense_adam", {"user": 50, "item": 30}, 12, zero_grad=zero)

  def test_2ts_stage1_rowwise_adagrad(self):
    # feat_net is trained by Adam here too: the same zero-gradient leaf is left out.
    grads = self.results["tts_grad_abs_max"]
    zero = {k for k, g in grads.items() if g < 1e-5 * max(grads.values())}
    self._check_case("tts_stage1_rowwise_adagrad", {"user": 50, "item": 30}, 12, zero_grad=zero)

  def test_sharded_checkpoint_restores_sharded(self):
    rec = self.results["mf_lazy_adam_resume"]
    self.assertTrue(rec["restored_equal"])
    self.assertEqual(rec["specs"], ["P('model',)", "P()"])


@pytest.mark.slow  # two JAX processes
class TwoProcessesTest(absltest.TestCase):

  def test_two_processes_through_jax_distributed_equal_one_process(self):
    """2 processes x 2 CPU devices (``jax.distributed`` over localhost, gloo collectives), each feeding
    its half of every batch, reach the parameters of 1 process x 4 devices on the same 2 x 2 mesh."""
    with socket.socket() as s:
      s.bind(("localhost", 0))
      port = s.getsockname()[1]
    env = dict(os.environ, XLA_FLAGS=_xla_flags("--xla_force_host_platform_device_count=2"),
               JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, "-m", "tests.sharding_worker", str(k), "2", str(port)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
      self.assertEqual(p.returncode, 0, err[-3000:])
    line = [x for x in outs[0][0].splitlines() if x.startswith("RESULT ")][-1]
    got = json.loads(line[len("RESULT "):])["params"]
    want = _four_devices()["multihost_reference"]
    self.assertLen(got, len(want))
    for g, w in zip(got, want):
      np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=0, atol=ATOL)


if __name__ == "__main__":
  absltest.main()
