"""2TS second pass: cells that start as an adaptation, mixed-group steps, per-group rates, shared stage 1.

Inputs are drawn from ``synthetic:tiny`` (power-law activity, repeats, equal timestamps), not hand-made.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.data import synthetic
from jaxrec.methods import two_time_scale as tts
from jaxrec.train import learner as learner_lib


@functools.lru_cache(maxsize=None)
def _log():
  return synthetic.generate("tiny", seed=3)


def _cfg(**kw):
  base = dict(variant="2ts", d_id=6, d_feat=2, feat_hidden=4, t_star=8, k=4, num_offered=5,
              batch_inactive=8, batch_active=4, batch_stage1=64)
  base.update(kw)
  return tts.TwoTimeScaleConfig(**base)


def _setup(**kw):
  cfg, log = _cfg(**kw), _log()
  feats = None if log.item_features is None else jnp.asarray(log.item_features)
  data = tts.prepare_training_data(log, cfg.t_star, cfg.k)
  params = tts.init_params(cfg, jax.random.key(1), data.num_users, data.num_items,
                           0 if feats is None else feats.shape[1])
  return cfg, data, params, feats


def _bits(tree):
  return [np.asarray(x).tobytes() for x in jax.tree.leaves(jax.device_get(tree))]


def test_residual_cell_is_the_identity_at_step_0_so_stage2_starts_from_the_ccf_scores():
  cfg, data, params, feats = _setup(cell="residual")
  d = params["user"].shape[1]
  h = jax.random.normal(jax.random.key(2), (5, d))
  x = jax.random.normal(jax.random.key(3), (5, d))
  for key in ("cell_in", "cell_act"):
    assert _bits(tts.cell_step(params, key, h, x)) == _bits(h)
  # Active users: every stage-2 query of the window is phi_u itself (the CCF query), bit for bit.
  group = data.group("active")
  qs, _, h_k, _ = jax.jit(functools.partial(tts.group_rollout, cfg, group="active"))(
      params, group, item_features=feats)
  phi = jnp.take(params["user"], group["user"], axis=0)
  assert _bits(qs) == _bits(jnp.broadcast_to(phi[:, None], qs.shape)) and _bits(h_k) == _bits(phi)
  # The gate is what learns first: its gradient is non-zero, the GRU's is exactly zero at s = 0.
  loss_fn = tts.stage_loss_fn(cfg, params, "stage2")
  batch = {"inactive": data.group("inactive"), "active": group, "item_features": feats}
  grads = jax.jit(jax.grad(lambda p, b: loss_fn(p, b, jax.random.key(0))[0]))(params, batch)
  assert np.abs(np.asarray(grads["gate_act"])).max() > 0 and np.abs(np.asarray(grads["gate_in"])).max() > 0
  assert not any(np.any(np.asarray(g)) for g in jax.tree.leaves(grads["cell_act"]))


def test_keep_gate_cell_moves_the_state_much_less_than_the_default_gru():
  moves = {}
  for cell in ("gru", "keep-gate"):
    _, _, params, _ = _setup(cell=cell, keep_gate_bias=3.0)
    d = params["user"].shape[1]
    h = 0.3 * jax.random.normal(jax.random.key(2), (64, d))
    x = 0.3 * jax.random.normal(jax.random.key(3), (64, d))
    moves[cell] = float(jnp.mean(jnp.linalg.norm(tts.cell_step(params, "cell_act", h, x) - h, axis=-1)))
  # Same kernels (same init key); only the update gate's bias differs: z ~ sigmoid(3) = 0.95 vs ~ 0.5.
  assert moves["keep-gate"] < 0.25 * moves["gru"], moves


def test_mixed_stage2_steps_carry_both_groups_and_their_loss_is_the_sum_of_the_group_losses():
  cfg, data, params, feats = _setup(stage2_steps="mixed")
  n_in = -(-data.in_user.shape[0] // cfg.batch_inactive)
  n_act = -(-data.act_user.shape[0] // cfg.batch_active)
  assert n_in != n_act  # the cycling below is exercised
  steps = tts.steps_per_epoch(cfg, data, "stage2")
  assert steps == max(n_in, n_act)
  batches = list(tts.stage_batches(cfg, data, "stage2", 0, feats))
  assert len(batches) == steps and all({"inactive", "active"} <= set(b) for b in batches)
  seen = {"inactive": [], "active": []}
  for b in batches:
    for g in seen:
      rows = b[g]["mask"].any(axis=1)
      seen[g] += list(b[g]["user"][rows])
  for g, users in (("inactive", data.in_user), ("active", data.act_user)):
    assert set(seen[g]) == set(users[data.group(g)["mask"].any(axis=1)]), g  # every row visited
  big = "inactive" if n_in > n_act else "active"
  assert len(seen[big]) == len(set(seen[big]))  # the larger group exactly once
  loss_fn = jax.jit(functools.partial(tts.stage2_loss, cfg))
  for b in batches[:3]:
    negs = {g: jax.random.randint(jax.random.key(i), b[g]["items"].shape + (cfg.num_offered,), 0,
                                  data.num_items) for i, g in enumerate(("inactive", "active"))}
    both, aux = loss_fn(params, b, jax.random.key(0), negs)
    l_in, _ = loss_fn(params, {"inactive": b["inactive"], "item_features": feats}, jax.random.key(0), negs)
    l_act, _ = loss_fn(params, {"active": b["active"], "item_features": feats}, jax.random.key(0), negs)
    np.testing.assert_allclose(float(both), float(l_in) + float(l_act), rtol=1e-6)
    np.testing.assert_allclose([float(aux["loss_in"]), float(aux["loss_act"])], [float(l_in), float(l_act)],
                               rtol=1e-6)
    assert float(l_in) > 0 and float(l_act) > 0


def test_one_group_steps_stay_the_default_and_visit_every_batch_once():
  cfg, data, _, feats = _setup()
  batches = list(tts.stage_batches(cfg, data, "stage2", 0, feats))
  assert len(batches) == tts.steps_per_epoch(cfg, data, "stage2")
  assert all(len({"inactive", "active"} & set(b)) == 1 for b in batches)


def test_per_group_learning_rates_reach_their_own_keys():
  # Adam's first update is lr * g / (|g| + eps): each key moves by its own group's rate.
  cfg, data, params, feats = _setup(variant="2ts-plus", lr_stage2=1e-3, lr_inactive=1e-2, lr_active=1e-4)
  learner = tts.stage_learner(cfg, params, "stage2")
  state = learner.init(params, jax.random.key(0))
  batch = {"inactive": data.group("inactive"), "active": data.group("active"), "item_features": feats}
  new, _ = learner_lib.jit_update(learner)(state, batch, jax.random.key(0))
  before = jax.device_get(params)

  def step(key):
    return max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
               for a, b in zip(jax.tree.leaves(new.params[key]), jax.tree.leaves(before[key])))

  np.testing.assert_allclose(step("cell_in"), 1e-2, rtol=1e-3)
  np.testing.assert_allclose(step("psi"), 1e-2, rtol=1e-3)
  np.testing.assert_allclose(step("cell_act"), 1e-4, rtol=1e-3)
  np.testing.assert_allclose(step("w"), 1e-3, rtol=1e-3)  # the shared 2TS-Plus head: lr_stage2
  assert step("user") == 0.0 and step("item") == 0.0


def test_bad_cell_or_step_names_are_refused_in_one_line():
  with pytest.raises(ValueError, match="cell must be one of"):
    _cfg(cell="lstm")
  with pytest.raises(ValueError, match="stage2_steps must be one of"):
    _cfg(stage2_steps="both")
  with pytest.raises(ValueError, match="lr_inactive"):
    _cfg(lr_inactive=-1.0)


def test_stage2_from_a_shared_stage1_equals_the_whole_pipeline():
  cfg = _cfg(epochs_stage1=2, epochs_stage2=2, lr_stage1=1e-2, lr_stage2=1e-2, cell="residual",
             stage2_steps="mixed")
  log = _log()
  whole = tts.train(cfg, log, metric=None)
  ccf = tts.train(dataclasses.replace(cfg, variant="ccf"), log, metric=None)
  reused = tts.train(cfg, log, metric=None, stage1_params=ccf.params)
  assert _bits(reused.params) == _bits(whole.params)
  assert [h["stage"] for h in reused.history] == ["stage2", "stage2"]
  with pytest.raises(ValueError, match="do not match"):
    tts.train(cfg, log, metric=None, stage1_params={"user": ccf.params["user"][:3]})
