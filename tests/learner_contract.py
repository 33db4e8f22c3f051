"""The contract every :class:`jaxrec.train.learner.Learner` (and every stream strategy) satisfies.

In the spirit of learned_optimization's ``optimizers/test_utils.py``: one shared check, so a new learner's
test is a few lines::

    learner_contract.check(self, learner, params, [batch0, batch1], jit_update=True)

It checks that ``init``/``update``/``params`` run (under ``jax.jit`` where asked), that the state is a
pytree of arrays that survives an Orbax checkpoint round trip exactly, that ``update`` is deterministic
given the rng, that the served params keep their structure, shapes and dtypes across updates, and that a
second update (same shapes, new values, new key) compiles nothing.
"""

from __future__ import annotations

import os
import tempfile

import jax
import numpy as np
from jax import monitoring

from jaxrec.train import checkpoint as checkpoint_lib
from jaxrec.train import learner as learner_lib

_COMPILES = [0]


def _on_event(event: str, duration: float, **kwargs) -> None:
  del duration, kwargs
  if event == "/jax/core/compile/backend_compile_duration":
    _COMPILES[0] += 1


monitoring.register_event_duration_secs_listener(_on_event)


def compile_count() -> int:
  """Backend compilations so far in this process (every jit, eager op and evaluation kernel)."""
  return _COMPILES[0]


def _signature(tree):
  return jax.tree.structure(tree), [(np.shape(x), np.asarray(x).dtype) for x in jax.tree.leaves(tree)]


def _host(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def assert_trees_equal(test, a, b, msg=""):
  """Same structure and bit-identical leaves."""
  test.assertEqual(jax.tree.structure(a), jax.tree.structure(b), msg)
  for x, y in zip(_host(a), _host(b)):
    np.testing.assert_array_equal(x, y, err_msg=msg)


def check(test, learner: learner_lib.Learner, params, batches, *, jit_update: bool = True,
          jit_init: bool = True, rng=None) -> None:
  """Runs the whole contract on ``learner`` (``test``: a ``unittest.TestCase``).

  Args:
    test: the test case (for assertions).
    learner: the learner or strategy.
    params: initial served params.
    batches: at least two batches (or blocks) of one static shape.
    jit_update: the update is jittable (False: a host composition of jitted steps, run as is).
    jit_init: ``init`` is jittable.
    rng: base key (default ``PRNGKey(0)``).
  """
  test.assertGreaterEqual(len(batches), 2, "the contract needs two batches")
  rng = jax.random.PRNGKey(0) if rng is None else rng
  init = jax.jit(learner.init) if jit_init else learner.init
  update = learner_lib.jit_update(learner) if jit_update else learner.update
  served = jax.jit(learner.params) if jit_update else learner.params

  def trajectory():
    state = init(params, rng)
    sigs, metrics = [_signature(served(state))], []
    for i, batch in enumerate(batches):
      state, m = update(state, batch, jax.random.fold_in(rng, i))
      sigs.append(_signature(served(state)))
      metrics.append(jax.device_get(m))
    return state, sigs, metrics

  state_a, sigs, metrics = trajectory()
  # The state is a pytree of arrays.
  for leaf in jax.tree.leaves(state_a):
    test.assertTrue(hasattr(leaf, "shape") and hasattr(leaf, "dtype"), f"state leaf {leaf!r}")
  # Served params keep structure, shapes and dtypes.
  for s in sigs[1:]:
    test.assertEqual(s, sigs[0], "served params changed structure/shape/dtype across updates")
  test.assertEqual(_signature(served(state_a)), _signature(params), "served params differ from init's")
  for m in metrics:
    test.assertIsInstance(m, dict)
  # Deterministic given the rng.
  state_b, _, _ = trajectory()
  assert_trees_equal(test, state_a, state_b, "update is not deterministic given the rng")
  # Another update of the same shapes compiles nothing (the trajectories above warmed every shape).
  before = compile_count()
  state_c = init(params, jax.random.PRNGKey(7))
  for i, batch in enumerate(batches):
    state_c, _ = update(state_c, batch, jax.random.fold_in(rng, 100 + i))
  jax.block_until_ready(state_c)
  test.assertEqual(compile_count() - before, 0, "a further update recompiled")
  # Checkpoint round trip.
  with tempfile.TemporaryDirectory() as d:
    host = jax.device_get(state_a)
    with checkpoint_lib.Checkpointer(os.path.join(d, "ckpt"), async_save=False) as ckpt:
      ckpt.save(1, host, {"k": 1})
    with checkpoint_lib.Checkpointer(os.path.join(d, "ckpt"), async_save=False) as ckpt:
      restored, meta = ckpt.restore(1, checkpoint_lib.abstract_like(host))
    test.assertEqual(meta, {"k": 1})
    assert_trees_equal(test, host, restored, "state changed through a checkpoint round trip")
