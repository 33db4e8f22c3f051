"""The multi-device half of ``tests/test_sharding.py``, run in a subprocess with fake CPU devices.

``XLA_FLAGS=--xla_force_host_platform_device_count=4`` must be set before JAX initialises, which the
test process (one device, shared with the other tests) cannot do; so the test runs
``python -m tests.sharding_worker`` with that environment and reads one JSON object from stdout.

Each case trains one learner through ``loop.train`` on a mesh of 1 device (1 x 1), of 2 x 2 and of
1 x 4 devices (the last pads the 50-user and 30-item tables to 52 and 32 rows), from the same
parameters and batches, and reports the largest parameter difference to the 1-device run, the
shardings of the state, whether the padding rows stayed zero, and how many step compilations two runs
with the same learner and mesh made. ``loop.train`` fetches the metrics every ``log_every=12`` steps,
which blocks on the steps: on CPU too many undispatched collectives can deadlock.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import jax
import numpy as np
import optax

from jaxrec.methods import two_time_scale as tts
from jaxrec.models import mf, registry
from jaxrec.train import learner as learner_lib
from jaxrec.train import loop, sharding, sparse

USERS, ITEMS, EPOCHS, STEPS = 50, 30, 6, 4  # 24 steps
MESHES = {"1x1": (1, 1), "2x2": (2, 2), "1x4": (1, 4)}


def _mf_batches(b=16, n=3, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(STEPS):
    mask = np.ones(b, bool)
    mask[-3:] = False
    out.append({"user": (rng.zipf(1.5, b).clip(1, USERS) - 1).astype(np.int32),
                "positive": rng.integers(0, ITEMS, b).astype(np.int32),
                "negatives": rng.integers(0, ITEMS, (b, n)).astype(np.int32), "mask": mask})
  return out


def _tts_batches(feat_dim, b=32, seed=1):
  rng = np.random.default_rng(seed)
  feats = rng.normal(size=(ITEMS, feat_dim)).astype(np.float32)
  return [{"user": rng.integers(0, USERS, b).astype(np.int32),
           "item": (rng.zipf(1.3, b).clip(1, ITEMS) - 1).astype(np.int32), "item_features": feats}
          for _ in range(STEPS)]


def _train(learner, params, batches, plan, epochs=EPOCHS, workdir=None):
  sharded = sharding.shard_learner(learner, plan, params)
  state = sharded.init(params, jax.random.key(0))
  config = loop.LoopConfig(num_epochs=epochs, log_every=12, prefetch=2)
  state, history = loop.train(config, sharded, state, plan.batches(lambda epoch: batches),
                              rng=jax.random.key(3), workdir=workdir)
  return sharded, state, [h["loss"] for h in history if h["kind"] == "train"]


def _case(learner, params, batches, tables, replicated=()):
  out, ref = {}, None
  for name, (data, model) in MESHES.items():
    devices = jax.devices()[:data * model]
    plan = sharding.ShardingPlan(sharding.make_mesh(data, model, devices=devices), tables, replicated)
    sharded, state, losses = _train(learner, params, batches, plan)
    served = jax.device_get(sharded.params(state))
    rec = {"losses": losses}
    if ref is None:
      ref = served
    else:
      rec["abs_diff"] = {jax.tree_util.keystr(p): float(np.max(np.abs(np.asarray(a) - np.asarray(b)),
                                                                initial=0.0))
                         for (p, a), b in zip(jax.tree_util.tree_flatten_with_path(ref)[0],
                                              jax.tree.leaves(served))}
      rec["max_abs_ref"] = max(float(np.max(np.abs(np.asarray(a)))) for a in jax.tree.leaves(ref))
    rec["same_shapes"] = [np.shape(a) for a in jax.tree.leaves(ref)] == [
        np.shape(a) for a in jax.tree.leaves(served)]
    rec["state"] = {k: [list(v[0]), str(v[1]), [list(s) for s in v[2]]]
                    for k, v in sharding.describe(state).items()}
    # Padding rows (beyond the logical rows) of every sharded leaf stay zero.
    logical = dict(plan.table_rows(params))
    padded = {k: plan.padded(r) for k, r in logical.items()}
    pad_max = 0.0
    for path, x in jax.tree_util.tree_flatten_with_path(state)[0]:
      key = sharding._table_of(path, x, padded)
      if key is not None and padded[key] > logical[key]:
        pad_max = max(pad_max, float(np.max(np.abs(np.asarray(x)[logical[key]:]))))
    rec["padding_max_abs"] = pad_max
    # A second (short) run with the same learner and plan compiles no new step.
    step = learner_lib.jit_update(sharded)
    before = step._cache_size()
    _train(learner, params, batches, plan, epochs=1)
    rec["step_cache"] = [before, step._cache_size()]
    out[name] = rec
  return out


def _resume(learner, params, batches, tables):
  """Trains on 1 x 4 devices with a workdir, then calls ``train`` again: restored from the checkpoint."""
  plan = sharding.ShardingPlan(sharding.make_mesh(1, 4), tables)
  with tempfile.TemporaryDirectory() as d:
    sharded, first, _ = _train(learner, params, batches, plan, epochs=1, workdir=d)
    first = jax.device_get(first)
    _, again, _ = _train(learner, params, batches, plan, epochs=1, workdir=d)
  same = all(np.array_equal(a, b)
             for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(jax.device_get(again))))
  specs = sorted({str(x.sharding.spec) for x in jax.tree.leaves(again)})
  return {"restored_equal": same, "specs": specs}


def _local_slices(batches, process, processes):
  """Each process's slice of every batch (the leading axis split in process order)."""
  out = []
  for b in batches:
    h = b["user"].shape[0] // processes
    out.append({k: v[process * h:(process + 1) * h] for k, v in b.items()})
  return out


def _multihost_run(process, processes):
  """MF-BPR with lazy Adam on a 2 x 2 mesh, 12 steps through ``loop.train``; batches are given
  as each process's local slice. Returns the served params (gathered to every process)."""
  from jax.experimental import multihost_utils
  spec = registry.get("mf-bpr")
  module = spec.make(USERS, ITEMS, dim=8)
  params = spec.init(jax.random.key(1), module, registry.sample_batch("user"))
  lookups = sparse.RowLookups(**mf.row_lookups(module))
  plan = sharding.ShardingPlan(sharding.make_mesh(2, 2), tuple(p for p, _ in lookups.tables))
  learner = sparse.row_sparse_learner(mf.compact_loss_fn(module, "bpr"), lookups, sparse.lazy_adam(0.05))
  local = _local_slices(_mf_batches(), process, processes)
  _, state, _ = _train(learner, params, local, plan, epochs=3)
  served = sharding.shard_learner(learner, plan, params).params(state)
  gathered = multihost_utils.process_allgather(served, tiled=True)
  return [np.asarray(x).tolist() for x in jax.tree.leaves(gathered)]


def multihost(process: int, processes: int, port: int) -> None:
  """One process of a ``processes``-process run (2 CPU devices each) through ``jax.distributed``."""
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  assert sharding.initialize_distributed(f"localhost:{port}", processes, process)
  assert jax.process_count() == processes and len(jax.devices()) == 2 * processes
  leaves = _multihost_run(process, processes)
  if process == 0:  # gloo logs to stdout too: the result is the line starting with RESULT
    print("RESULT " + json.dumps({"params": leaves}), flush=True)


def main():
  assert len(jax.devices()) == 4, jax.devices()
  spec = registry.get("mf-bpr")
  module = spec.make(USERS, ITEMS, dim=8)
  params = spec.init(jax.random.key(1), module, registry.sample_batch("user"))
  lookups = sparse.RowLookups(**mf.row_lookups(module))
  tables = tuple(p for p, _ in lookups.tables)
  batches = _mf_batches()
  results = {
      "mf_dense_adam": _case(learner_lib.gradient_learner(spec.loss_fn(module), optax.adam(0.05)),
                             params, batches, tables),
      "mf_lazy_adam": _case(sparse.row_sparse_learner(mf.compact_loss_fn(module, "bpr"), lookups,
                                                      sparse.lazy_adam(0.05)), params, batches, tables),
  }
  results["multihost_reference"] = _multihost_run(0, 1)
  results["mf_lazy_adam_resume"] = _resume(
      sparse.row_sparse_learner(mf.compact_loss_fn(module, "bpr"), lookups, sparse.lazy_adam(0.05)),
      params, batches, tables)
  cfg = tts.TwoTimeScaleConfig(variant="ccf", d_id=8, d_feat=4, feat_hidden=8, num_offered=5)
  tparams = tts.init_params(cfg, jax.random.key(0), USERS, ITEMS, 3)
  tbatches = _tts_batches(3)
  results["tts_stage1_dense_adam"] = _case(tts.stage_learner(cfg, tparams, "stage1", 0.05), tparams,
                                           tbatches, ("user", "item"), ("item_features",))
  results["tts_stage1_rowwise_adagrad"] = _case(
      tts.training.sparse_stage1_learner(cfg, "rowwise-adagrad", 0.1, with_features=True), tparams,
      tbatches, ("user", "item"), ("item_features",))
  # Leaves whose gradient is zero in exact arithmetic: feat_net's output bias shifts every offered item's
  # score by the same u . b, which the offer-set softmax cancels. Adam (g / sqrt(v)) turns their rounding
  # noise into lr-sized steps, so 1 and 4 devices move them differently; the test leaves them out.
  loss_fn = tts.stage_loss_fn(cfg, tparams, "stage1")
  grads = jax.jit(jax.grad(lambda p: loss_fn(p, tbatches[0], jax.random.key(0))[0]))(tparams)
  results["tts_grad_abs_max"] = {jax.tree_util.keystr(p): float(np.max(np.abs(g)))
                                 for p, g in jax.tree_util.tree_flatten_with_path(grads)[0]}
  json.dump(results, sys.stdout)


if __name__ == "__main__":
  if len(sys.argv) == 4:  # python -m tests.sharding_worker PROCESS PROCESSES PORT (2 devices each)
    multihost(*map(int, sys.argv[1:]))
  elif "--xla_force_host_platform_device_count=4" not in os.environ.get("XLA_FLAGS", ""):
    sys.exit("run with XLA_FLAGS=--xla_force_host_platform_device_count=4")
  else:
    main()
