"""Tests of the 2TS / 2TS-Plus core (jaxrec/methods/two_time_scale/), tiny shapes."""

import dataclasses
import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from jaxrec.data.log import InteractionLog
from jaxrec.methods import two_time_scale as tts
from jaxrec.train import learner as learner_lib

NUM_USERS, NUM_ITEMS, FEAT = 7, 16, 3
# per-user training sequences (time order); t* = 3, K = 2: users 0 and 3 active, 5 and 6 new.
SEQS = {0: [1, 2, 3, 4, 5], 1: [6, 7], 2: [8, 9, 10], 3: [11, 12, 13, 14, 15, 0], 4: [3]}


def _log(seqs, num_users=NUM_USERS, num_items=NUM_ITEMS, t0=0, feats=None):
  users, items, times = [], [], []
  for u, s in seqs.items():
    users += [u] * len(s)
    items += s
    times += [t0 + 10 * t + u for t in range(len(s))]
  order = np.random.default_rng(0).permutation(len(users))  # rows out of order on purpose
  return InteractionLog.from_arrays(np.array(users)[order], np.array(items)[order], np.array(times)[order],
                                    num_users=num_users, num_items=num_items, item_features=feats)


def _cfg(variant="2ts", feats=True, **kw):
  # d = 7 with or without features, so that the eager init ops compile once for the whole file
  base = dict(variant=variant, d_id=4 if feats else 7, d_feat=3, feat_hidden=5, t_star=3, k=2, num_offered=3)
  base.update(kw)
  return tts.TwoTimeScaleConfig(**base)


def _setup(variant="2ts", feats=True):
  cfg = _cfg(variant, feats)
  f = np.random.default_rng(1).normal(size=(NUM_ITEMS, FEAT)).astype(np.float32) if feats else None
  data = tts.prepare_training_data(_log(SEQS, feats=f), cfg.t_star, cfg.k)
  params = tts.init_params(cfg, jax.random.key(0), NUM_USERS, NUM_ITEMS, FEAT if feats else 0)
  if cfg.plus:  # move W away from [I; 0] so that the x_prev path matters
    params["w"] = params["w"] + 0.3 * jax.random.normal(jax.random.key(5), params["w"].shape)
    params["x_start"] = 0.2 * jnp.ones_like(params["x_start"])
  return cfg, data, params, (None if f is None else jnp.asarray(f))


@functools.lru_cache(maxsize=None)
def _jit_cell(d):
  cell = nn.GRUCell(features=d)
  return jax.jit(lambda p, h, x: cell.apply({"params": p}, h[None], x[None])[0][0])


@functools.lru_cache(maxsize=None)
def _jit_group_rollout(cfg, group):
  return jax.jit(lambda p, g, f: tts.group_rollout(cfg, p, g, group, f))


_jit_table = jax.jit(tts.item_table, static_argnums=0)


def _stage2_batch(data, feats):
  batch = {"inactive": data.group("inactive"), "active": data.group("active")}
  if feats is not None:
    batch["item_features"] = feats
  return batch


def test_prepare_training_data_groups():
  data = tts.prepare_training_data(_log(SEQS), t_star=3, k=2)
  np.testing.assert_array_equal(data.active, [True, False, False, True, False, False, False])
  np.testing.assert_array_equal(data.in_user, [1, 2, 4])
  np.testing.assert_array_equal(data.in_items, [[6, 7, 0], [8, 9, 10], [3, 0, 0]])
  np.testing.assert_array_equal(data.in_mask, [[1, 1, 0], [1, 1, 1], [1, 0, 0]])
  np.testing.assert_array_equal(data.act_user, [0, 3])
  np.testing.assert_array_equal(data.act_items, [[4, 5], [15, 0]])  # the LAST K, in time order
  np.testing.assert_array_equal(data.act_prev, [3, 14])
  np.testing.assert_array_equal(data.last_item, [5, 7, 10, 0, 3, -1, -1])
  assert data.pair_user.shape == (17,)


def test_prepare_eval_sequences_rows_line_up():
  valid = _log({0: [1, 2], 5: [3]}, t0=1000)
  test = _log({0: [4], 2: [6, 7]}, t0=2000)
  seqs = tts.prepare_eval_sequences([valid, test])
  np.testing.assert_array_equal(seqs.user, [0, 2, 5])
  np.testing.assert_array_equal(seqs.items, [[1, 2, 4], [6, 7, 0], [3, 0, 0]])
  cat_items = np.concatenate([valid.item, test.item])
  np.testing.assert_array_equal(cat_items[seqs.row[seqs.mask]], seqs.items[seqs.mask])
  assert (seqs.row[~seqs.mask] == -1).all() and seqs.num_rows == 6


def _reference_rollout(cfg, params, data, group, feats):
  """Per-user Python loop calling the GRU cells one step at a time."""
  table = np.asarray(_jit_table(cfg, params, feats))
  d = table.shape[1]
  cell = _jit_cell(d)
  g = data.group(group)
  key = "cell_in" if group == "inactive" else "cell_act"
  queries, finals = np.zeros(g["items"].shape + (d,), np.float32), []
  for b in range(g["items"].shape[0]):
    h = params["psi"] if group == "inactive" else params["user"][g["user"][b]]
    prev = g["prev"][b]
    xp = (table[prev] if prev >= 0 else params["x_start"]) if cfg.plus else np.zeros(d)
    for t in range(g["items"].shape[1]):
      if not g["mask"][b, t]:
        continue
      queries[b, t] = np.concatenate([h, xp]) @ params["w"] if cfg.plus else h
      x = table[g["items"][b, t]]
      h = np.asarray(cell(params[key], jnp.asarray(h), jnp.asarray(x)))
      xp = x
    finals.append(np.asarray(h))
  return queries, np.stack(finals)


@pytest.mark.parametrize("variant", ["2ts", "2ts-plus"])
def test_batched_stage2_matches_per_user_loop_and_loss(variant):
  cfg, data, params, feats = _setup(variant)
  batch = _stage2_batch(data, feats)
  negs, per_group = {}, []
  for i, group in enumerate(("inactive", "active")):
    ref_q, ref_h = _reference_rollout(cfg, params, data, group, feats)
    qs, _, h, _ = _jit_group_rollout(cfg, group)(params, batch[group], feats)
    m = data.group(group)["mask"]
    np.testing.assert_allclose(np.asarray(qs)[m], ref_q[m], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(h), ref_h, rtol=1e-5, atol=1e-5)
    # stage-2 loss (Eq. 11, 12) against numpy on the reference queries
    items = data.group(group)["items"]
    negs[group] = jax.random.randint(jax.random.key(i), items.shape + (3,), 0, NUM_ITEMS)
    table = np.asarray(_jit_table(cfg, params, feats))
    cand = np.concatenate([items[..., None], np.asarray(negs[group])], -1)
    logits = np.einsum("bld,blcd->blc", ref_q, table[cand])
    per = np.log(np.exp(logits).sum(-1)) - logits[..., 0]
    per_group.append((per * m).sum() / m.sum())
  loss_fn = jax.jit(functools.partial(tts.stage2_loss, cfg))
  loss, aux = loss_fn(params, batch, jax.random.key(0), negs)
  np.testing.assert_allclose(float(loss), sum(per_group), rtol=1e-5)
  np.testing.assert_allclose(float(aux["loss_in"]), per_group[0], rtol=1e-5)
  for i, group in enumerate(("inactive", "active")):  # one-group steps: that group's term alone
    one = {group: batch[group], "item_features": feats}
    loss, aux = loss_fn(params, one, jax.random.key(0), {group: negs[group]})
    np.testing.assert_allclose(float(loss), per_group[i], rtol=1e-5)
    assert float(aux["loss_act" if group == "inactive" else "loss_in"]) == 0.0


@pytest.mark.parametrize("variant", ["2ts", "2ts-plus"])
def test_bucketed_stage2_batches_match_per_user_loop(variant):
  cfg, data, params, feats = _setup(variant)
  cfg = dataclasses.replace(cfg, batch_inactive=2, batch_active=1)
  refs = {g: _reference_rollout(cfg, params, data, g, feats) for g in ("inactive", "active")}
  for batch in tts.stage_batches(cfg, data, "stage2", 0, feats):
    (group,) = [g for g in batch if g != "item_features"]
    gb = batch[group]
    qs, _, h, _ = _jit_group_rollout(cfg, group)(params, gb, feats)
    users = data.group(group)["user"]
    for b in np.flatnonzero(gb["mask"].any(axis=1)):
      row = int(np.flatnonzero(users == gb["user"][b])[0])
      m = gb["mask"][b]
      np.testing.assert_allclose(np.asarray(qs)[b][m], refs[group][0][row][: m.shape[0]][m], rtol=1e-5,
                                 atol=1e-5)
      np.testing.assert_allclose(np.asarray(h)[b], refs[group][1][row], rtol=1e-5, atol=1e-5)


def test_bucket_width_is_a_capped_power_of_two():
  assert [tts.bucket_width(n, 100) for n in (0, 1, 2, 3, 5, 64, 65, 100)] == [1, 1, 2, 4, 8, 64, 100, 100]
  assert tts.bucket_width(3, 2) == 2


@pytest.mark.parametrize("variant", ["2ts", "2ts-plus"])
def test_no_interaction_is_scored_with_a_state_that_has_seen_it(variant):
  cfg, data, params, feats = _setup(variant, feats=False)
  items = jnp.array([[2, 5, 9, 11]])
  mask = jnp.ones((1, 4), bool)
  table = _jit_table(cfg, params, None)
  state = {"h": params["psi"][None], "x_prev": params["item"][jnp.array([7])], "active": jnp.array([False])}
  rollout = jax.jit(functools.partial(tts.eval_rollout, cfg))
  q0, moves, _ = rollout(params, table, state, items, mask)
  assert moves.shape == (1, 4) and (moves > 0).all()
  for t in range(3):
    q1, _, _ = rollout(params, table.at[items[0, t]].add(1.0), state, items, mask)
    np.testing.assert_array_equal(q1[0, : t + 1], q0[0, : t + 1])  # step t and before: unchanged
    assert not np.allclose(q1[0, t + 1], q0[0, t + 1])               # step t + 1 sees item i_t
  # the same on the training side (stage-2 rollout through item params)
  g = data.group("inactive", np.array([1]))  # items [8, 9, 10]
  fn = _jit_group_rollout(cfg, "inactive")
  q0 = fn(params, g, None)[0]
  q1 = fn(dict(params, item=params["item"].at[9].add(1.0)), g, None)[0]
  np.testing.assert_array_equal(q1[0, :2], q0[0, :2])
  assert not np.allclose(q1[0, 2], q0[0, 2])


def _bits(tree):
  """Raw bytes of every leaf: equality is bit-identity (unlike ``==``, which equates 0.0 and -0.0)."""
  return [np.asarray(x).tobytes() for x in jax.tree.leaves(jax.device_get(tree))]


def test_stage2_step_keeps_frozen_params_bit_identical_and_learns_the_rest():
  cfg, data, params, feats = _setup("2ts-plus")
  frozen = _bits({k: params[k] for k in tts.STAGE1_KEYS})
  before = jax.device_get(params)
  learner = tts.stage_learner(cfg, params, "stage2", learning_rate=1e-2)
  step, state = learner_lib.jit_update(learner), learner.init(params, jax.random.key(0))
  batch = _stage2_batch(data, feats)
  for s in range(3):
    state, metrics = step(state, batch, jax.random.key(s))
  p = state.params
  assert _bits({k: p[k] for k in tts.STAGE1_KEYS}) == frozen
  for k in ("cell_in", "cell_act", "psi", "w", "x_start"):
    assert not np.allclose(jax.tree.leaves(p[k])[0], jax.tree.leaves(before[k])[0]), k
  assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
  assert int(state.step) == 3


def test_stage_optimizer_keeps_no_adam_moments_for_frozen_keys():
  cfg, _, params, _ = _setup("2ts")
  tx = tts.stage_optimizer(cfg, params, "stage2")
  n_moments = sum(x.size for x in jax.tree.leaves(tx.init(params)) if x.ndim > 0)
  trained = sum(x.size for k in tts.trainable_keys(cfg, params, "stage2") for x in jax.tree.leaves(params[k]))
  assert n_moments == 2 * trained  # mu and nu of the trained keys only


def _grads(cfg, params, stage, batch):
  loss_fn = tts.stage_loss_fn(cfg, params, stage)
  return jax.jit(jax.grad(lambda p, b: loss_fn(p, b, jax.random.key(0))[0]))(params, batch)


def _nonzero(tree):
  return any(np.any(np.asarray(g)) for g in jax.tree.leaves(tree))


@pytest.mark.parametrize("variant", ["2ts", "2ts-plus", "2-gru"])
def test_stage2_gradients_are_zero_exactly_on_frozen_keys_and_nonzero_on_every_trained_key(variant):
  cfg, data, params, feats = _setup(variant)
  grads = _grads(cfg, params, "stage2", _stage2_batch(data, feats))
  trained = set(tts.trainable_keys(cfg, params, "stage2"))
  assert trained == set(params) - set(tts.STAGE1_KEYS) and "psi" in trained
  for k in params:
    if k in trained:
      assert _nonzero(grads[k]), k
    else:
      assert not _nonzero(grads[k]), k


def test_single_stage_gradients_reach_every_key():
  cfg, data, params, feats = _setup("single-stage")
  batch = dict(_stage2_batch(data, feats), pairs={"user": data.pair_user, "item": data.pair_item})
  grads = _grads(cfg, params, "single", batch)
  assert set(grads) == {"user", "item", "feat_net", "cell_in", "cell_act", "psi"}
  for k in grads:
    assert _nonzero(grads[k]), k


def test_stage1_step_only_moves_stage1_params():
  cfg, data, params, feats = _setup("2ts")
  before = jax.device_get(params)
  learner = tts.stage_learner(cfg, params, "stage1", learning_rate=1e-2)
  step, state = learner_lib.jit_update(learner), learner.init(params, jax.random.key(0))
  batch = {"user": data.pair_user, "item": data.pair_item, "item_features": feats}
  p = step(state, batch, jax.random.key(0))[0].params
  assert _bits({k: p[k] for k in ("cell_in", "cell_act", "psi")}) == _bits(
      {k: before[k] for k in ("cell_in", "cell_act", "psi")})
  assert not np.allclose(p["feat_net"]["Dense_0"]["kernel"], before["feat_net"]["Dense_0"]["kernel"])


def _resume_cfg():
  return _cfg("2ts-plus", feats=False, epochs_stage1=2, epochs_stage2=3, batch_stage1=8, batch_inactive=2,
              batch_active=1, lr_stage1=0.05, lr_stage2=0.02)


def test_stage2_through_the_shared_loop_keeps_stage1_params_bit_identical():
  cfg, log = _resume_cfg(), _log(SEQS)
  seen = {}

  def eval_fn(stage, params):
    seen[(stage, 1 + sum(k[0] == stage for k in seen))] = jax.device_get(params)
    return {}

  res = tts.train(cfg, log, eval_fn=eval_fn, metric=None)
  after_stage1 = seen[("stage1", cfg.epochs_stage1)]
  assert _bits({k: res.params[k] for k in tts.STAGE1_KEYS if k in res.params}) == _bits(
      {k: after_stage1[k] for k in tts.STAGE1_KEYS if k in after_stage1})
  for k in ("cell_in", "cell_act", "psi", "w", "x_start"):
    assert _bits(res.params[k]) != _bits(after_stage1[k]), k
  assert [(h["stage"], h["epoch"]) for h in res.history] == [("stage1", 1), ("stage1", 2), ("stage2", 1),
                                                             ("stage2", 2), ("stage2", 3)]
  walls = [h["wall_time"] for h in res.history]
  assert all(b > a for a, b in zip(walls, walls[1:]))
  np.testing.assert_allclose(walls[-1], sum(h["epoch_time"] for h in res.history))


class _Killed(Exception):
  pass


def test_a_killed_stage_resumes_from_its_checkpoint_to_the_same_params(tmp_path):
  cfg, log = _resume_cfg(), _log(SEQS)
  reference = tts.train(cfg, log)

  calls = []

  def kill(stage, params):
    del params
    calls.append(stage)
    if calls.count("stage2") == 2:  # after the stage-2 epoch-1 checkpoint, before epoch 2's
      raise _Killed()
    return {}

  with pytest.raises(_Killed):
    tts.train(cfg, log, eval_fn=kill, metric=None, workdir=str(tmp_path))
  assert (tmp_path / "stage1" / "metrics.jsonl").exists() and (tmp_path / "stage2" / "checkpoints").exists()
  resumed = tts.train(cfg, log, workdir=str(tmp_path))
  assert _bits(resumed.params) == _bits(reference.params)
  key = lambda h: (h["stage"], h["epoch"], h["step"], h["loss"])
  assert [key(h) for h in resumed.history] == [key(h) for h in reference.history]


def test_a_workdir_refuses_a_run_with_another_config(tmp_path):
  from jaxrec.train import checkpoint as checkpoint_lib
  cfg, log = _resume_cfg(), _log(SEQS)
  tts.train(cfg, log, workdir=str(tmp_path))
  tts.train(cfg, log, workdir=str(tmp_path))  # the same config: a finished run, restored
  other = dataclasses.replace(cfg, lr_stage1=cfg.lr_stage1 * 2)
  with pytest.raises(checkpoint_lib.ConfigMismatchError, match=r"lr_stage1"):
    tts.train(other, log, workdir=str(tmp_path))


def test_eval_fn_keeps_the_best_epoch_and_stops_early():
  cfg, log = _resume_cfg(), _log(SEQS)
  scores = {("stage1", 1): 1.0, ("stage1", 2): 0.5, ("stage2", 1): 0.1, ("stage2", 2): 0.9}
  calls, seen = [], {}

  def eval_fn(stage, params):
    calls.append(stage)
    seen[(stage, calls.count(stage))] = jax.device_get(params)
    return {"mrr": scores.get((stage, calls.count(stage)), 0.0)}

  res = tts.train(cfg, log, eval_fn=eval_fn, metric="mrr", patience=1)
  # stage 2 starts from stage 1's epoch-1 params; it stops after one bad epoch (3rd) and keeps epoch 2
  assert calls == ["stage1", "stage1", "stage2", "stage2", "stage2"]
  assert _bits(res.params) == _bits(seen[("stage2", 2)])
  assert _bits(res.params["user"]) == _bits(seen[("stage1", 1)]["user"])
  assert [h["mrr"] for h in res.history] == [1.0, 0.5, 0.1, 0.9, 0.0]


def test_stage_batches_depend_only_on_seed_stage_and_epoch():
  cfg, data, _, _ = _setup("2ts")
  cfg = dataclasses.replace(cfg, batch_inactive=1, batch_active=1)
  first = list(tts.stage_batches(cfg, data, "stage2", 1))
  again = list(tts.stage_batches(cfg, data, "stage2", 1))
  other = list(tts.stage_batches(cfg, data, "stage2", 2))
  assert len(first) == tts.steps_per_epoch(cfg, data, "stage2") == 5
  chex.assert_trees_all_equal(first, again)
  assert [_bits(b) for b in first] != [_bits(b) for b in other]
  pairs = list(tts.stage_batches(cfg, data, "stage1", 0))
  assert all(b["user"].shape == (cfg.batch_stage1,) for b in pairs)
  seen = np.concatenate([b["user"] * NUM_ITEMS + b["item"] for b in pairs])
  np.testing.assert_array_equal(np.unique(seen), np.unique(data.pair_user * NUM_ITEMS + data.pair_item))


def test_stage2_epoch_visits_each_row_once_in_length_buckets():
  # inactive lengths 1..5 (t* = 5), two active users; K = 2
  seqs = {u: list(range(u, u + n)) for u, n in enumerate([1, 2, 3, 4, 5, 1, 2, 6, 7, 3, 2, 1])}
  cfg = _cfg("2ts", feats=False, t_star=5, k=2, batch_inactive=3, batch_active=1)
  data = tts.prepare_training_data(_log(seqs, num_users=12), cfg.t_star, cfg.k)
  batches = list(tts.stage_batches(cfg, data, "stage2", 0))
  assert len(batches) == tts.steps_per_epoch(cfg, data, "stage2") == 4 + 2
  seen = {"inactive": [], "active": []}
  for batch in batches:
    (group,) = batch
    g = batch[group]
    width = cfg.t_star if group == "inactive" else cfg.k
    rows = g["mask"].any(axis=1)
    length = tts.bucket_width(g["mask"].sum(1).max(), width)
    assert g["items"].shape == (3 if group == "inactive" else 1, length)
    assert (g["prev"][~rows] == -1).all() and not g["items"][~rows].any()  # fill rows: fully masked
    seen[group] += [(int(u), tuple(i[m])) for u, i, m in zip(g["user"][rows], g["items"][rows],
                                                              g["mask"][rows])]
  for group, got in seen.items():
    full = data.group(group)
    want = [(int(u), tuple(i[m])) for u, i, m in zip(full["user"], full["items"], full["mask"])]
    assert sorted(got) == sorted(want)  # every row exactly once, no cycling
  shapes = {b["inactive"]["items"].shape[1] for b in batches if "inactive" in b}
  assert shapes <= {1, 2, 4, 5} and len(shapes) > 1


def test_table_scores_takes_the_table_as_params_and_does_not_recompile():
  from jaxrec.eval import protocols  # pylint: disable=import-outside-toplevel
  from jaxrec.eval.queries import Queries  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(0)
  test = _log({0: [1], 1: [2], 2: [3], 3: [9]}, t0=100)
  vecs = rng.normal(size=(4, 5)).astype(np.float32)
  table = jnp.asarray(rng.normal(size=(NUM_ITEMS, 5)).astype(np.float32))
  np.testing.assert_allclose(tts.table_scores(table, {"user_vec": vecs}, jnp.arange(NUM_ITEMS)),
                             vecs @ np.asarray(table).T, rtol=1e-5)
  queries = Queries.from_log(test, features={"user_vec": vecs[np.argsort(np.argsort(test.user))]})
  protocol = protocols.FullRanking(8)
  res = protocols.evaluate(tts.table_scores, table, queries, protocol, NUM_ITEMS, batch_size=4)
  scores = queries.features["user_vec"] @ np.asarray(table).T
  ref = 1 + (scores >= scores[np.arange(4), queries.positive][:, None]).sum(1) - 1
  np.testing.assert_array_equal(res.ranks, ref)
  before = protocols._full_ranks._cache_size()
  protocols.evaluate(tts.table_scores, table * 2.0, queries, protocol, NUM_ITEMS, batch_size=4)
  assert protocols._full_ranks._cache_size() == before


def test_offer_sets_never_contain_the_positive_and_cover_the_rest():
  num_items = 5
  pos = jnp.tile(jnp.arange(num_items), 40)
  negs = np.asarray(tts.sample_offer_negatives(jax.random.key(3), pos, num_items, 50))
  assert negs.shape == (200, 50)
  assert (negs != np.asarray(pos)[:, None]).all()
  assert negs.min() >= 0 and negs.max() < num_items
  for i in range(num_items):  # every other item can be offered, including the last one
    assert set(np.unique(negs[np.asarray(pos) == i])) == set(range(num_items)) - {i}


def test_ccf_loss_matches_numpy():
  cfg, _, params, _ = _setup("ccf", feats=False)
  users, items = np.array([0, 3, 3, 6]), np.array([1, 0, 15, 2])
  negs = np.array([[0, 2, 2], [1, 5, 9], [14, 3, 3], [15, 0, 1]])
  loss, _ = tts.ccf_loss(cfg, params, {"user": users, "item": items}, jax.random.key(0),
                         negatives=jnp.asarray(negs))
  phi, x = np.asarray(params["user"], np.float64), np.asarray(params["item"], np.float64)
  logits = np.einsum("bd,bcd->bc", phi[users], x[np.concatenate([items[:, None], negs], 1)])
  ref = np.mean(np.log(np.exp(logits).sum(1)) - logits[:, 0])
  np.testing.assert_allclose(float(loss), ref, rtol=1e-5)


def _planted_log():
  """Two user clusters, each walking through its own half of the items in a fixed cycle."""
  rng = np.random.default_rng(0)
  seqs = {}
  for u in range(24):
    half = (u % 2) * 8
    n = 12 if u < 8 else 3  # 8 active (> t* = 6) and 16 inactive users
    start = rng.integers(8)
    seqs[u] = [half + (start + t) % 8 for t in range(n)]
  return _log(seqs, num_users=24, num_items=16)


@pytest.mark.parametrize("variant", ["2ts-plus", "single-stage"])
def test_losses_decrease_on_planted_structure(variant):
  cfg = _cfg(variant, feats=False, t_star=6, k=4, num_offered=4, epochs_stage1=8, epochs_stage2=20,
             epochs_single=8, batch_stage1=32, batch_inactive=8, batch_active=4, lr_stage1=0.05,
             lr_stage2=0.02, lr_single=0.02)
  res = tts.train(cfg, _planted_log())
  stages = sorted({h["stage"] for h in res.history})
  for stage in stages:
    losses = [h["loss"] for h in res.history if h["stage"] == stage]
    assert np.mean(losses[-3:]) < 0.85 * losses[0], (stage, losses)
  assert all(h["wall_time"] > 0 for h in res.history)
  assert stages == (["single"] if variant == "single-stage" else ["stage1", "stage2"])


class Stage2LossJitTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_stage2_loss_jit_agrees(self):
    cfg, data, params, feats = _setup("2ts-plus")
    batch = _stage2_batch(data, feats)
    fn = self.variant(lambda p, b, r: tts.stage2_loss(cfg, p, b, r)[0])
    ref = tts.stage2_loss(cfg, params, batch, jax.random.key(7))[0]
    np.testing.assert_allclose(float(fn(params, batch, jax.random.key(7))), float(ref), rtol=1e-5)


class VariantTest(parameterized.TestCase):

  def test_two_gru_ignores_phi(self):
    cfg, data, params, _ = _setup("2-gru", feats=False)
    g = data.group("active")
    fn = _jit_group_rollout(cfg, "active")
    q0 = fn(params, g, None)[0]
    q1 = fn(dict(params, user=params["user"] + 1.0), g, None)[0]
    np.testing.assert_array_equal(q0, q1)
    np.testing.assert_allclose(q0[:, 0], np.broadcast_to(params["psi_act"], q0[:, 0].shape))

  def test_bad_variant(self):
    with self.assertRaises(ValueError):
      _cfg("3ts")

  @parameterized.parameters("ccf", "2ts")
  def test_eval_query_vectors_line_up_with_rows(self, variant):
    cfg, data, params, _ = _setup(variant, feats=False)
    valid = _log({0: [1, 2], 5: [3]}, t0=1000)
    test = _log({0: [4], 1: [6, 7]}, t0=2000)
    seqs = tts.prepare_eval_sequences([valid, test])
    out = tts.eval_query_vectors(cfg, params, data, seqs, batch_size=2)
    users = np.concatenate([valid.user, test.user])
    states = tts.user_states(cfg, params, data)
    first = out.seen == 0  # the first later interaction is scored with the end-of-training state
    np.testing.assert_allclose(out.user_vec[first], np.asarray(states["h"])[users[first]], rtol=1e-6)
    np.testing.assert_array_equal(out.active, data.active[users])
    if variant == "ccf":
      np.testing.assert_allclose(out.user_vec, np.asarray(params["user"])[users], rtol=1e-6)
      self.assertTrue((out.move == 0).all())
    else:
      np.testing.assert_allclose(states["h"][5], params["psi"], rtol=1e-6)  # new user: psi
      self.assertTrue((out.move > 0).all())
      scores = tts.table_scores(tts.item_table(cfg, params), {"user_vec": out.user_vec}, jnp.arange(4))
      self.assertEqual(scores.shape, (out.user_vec.shape[0], 4))


def _learners(cfg, log):
  data = tts.prepare_training_data(log, cfg.t_star, cfg.k)
  params = tts.init_params(cfg, jax.random.key(0), data.num_users, data.num_items)
  return [tts.stage_learner(cfg, params, s) for s in tts.stage_names(cfg)]


def _update_cache_sizes(cfg, log):
  return [learner_lib.jit_update(learner)._cache_size() for learner in _learners(cfg, log)]


def test_another_seed_or_epoch_count_does_not_recompile_the_updates():
  log = _log(SEQS)
  base = _cfg("2ts", feats=False, epochs_stage1=1, epochs_stage2=1, batch_stage1=8, batch_inactive=2,
              batch_active=1)
  tts.train(base, log)
  sizes = _update_cache_sizes(base, log)
  assert all(n >= 1 for n in sizes), sizes
  for seed, epochs in ((1, 1), (0, 2), (1, 2)):
    cfg = dataclasses.replace(base, seed=seed, epochs_stage1=epochs, epochs_stage2=epochs)
    tts.train(cfg, log)
    # the runs use the first run's jitted updates, which compiled nothing new
    assert _learners(cfg, log) == _learners(base, log), (seed, epochs)
    assert _update_cache_sizes(base, log) == sizes, (seed, epochs)
  # another static setting (here the offer-set size) is another learner and compiles on its own
  assert _update_cache_sizes(dataclasses.replace(base, num_offered=4), log) == [0, 0]


@pytest.mark.parametrize("variant", ["2ts-plus", "ccf"])  # the cells (with the Plus head), and none
def test_bucketed_rollout_equals_the_unbucketed_one_on_synthetic_data(variant):
  from jaxrec.data import datasets, splits  # pylint: disable=import-outside-toplevel

  sp = splits.chronological(datasets.load_dataset("synthetic:tiny", seed=0))
  feats = jnp.asarray(sp.train.item_features)
  cfg = _cfg(variant, t_star=5, k=3)
  data = tts.prepare_training_data(sp.train, cfg.t_star, cfg.k)
  params = tts.init_params(cfg, jax.random.key(1), data.num_users, data.num_items, feats.shape[1])
  seqs = tts.prepare_eval_sequences([sp.valid, sp.test])
  lengths = seqs.mask.sum(1)
  assert lengths.min() < seqs.mask.shape[1] // 4  # ragged enough for several buckets
  ref = tts.eval_query_vectors(cfg, params, data, seqs, feats, batch_size=16, bucketed=False)
  out = tts.eval_query_vectors(cfg, params, data, seqs, feats, batch_size=16)
  np.testing.assert_allclose(out.user_vec, ref.user_vec, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out.move, ref.move, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(out.seen, ref.seen)
  real, computed = tts.padded_steps(seqs, 16)
  assert real == seqs.mask.sum() and computed < tts.padded_steps(seqs, 16, bucketed=False)[1]
  # the validation rows alone give the same validation queries (they precede the test rows)
  valid = tts.eval_query_vectors(cfg, params, data, tts.prepare_eval_sequences([sp.valid]), feats,
                                 batch_size=16)
  np.testing.assert_allclose(valid.user_vec, out.user_vec[:len(sp.valid)], rtol=1e-5, atol=1e-6)


def _on_disk(tmp_path):
  """A 2TS training log as it arrives in real data (rows out of time order, ties in time, exact
  duplicates), in memory and written as 4 consecutive row slices (each user spread over the shards)."""
  from jaxrec.data import datasets, shards, splits
  base = splits.chronological(datasets.load_dataset("synthetic:tiny", seed=0)).train
  rng = np.random.default_rng(0)
  idx = rng.permutation(base.user.shape[0])
  idx = np.concatenate([idx, idx[rng.integers(0, idx.shape[0], 200)]])
  log = dataclasses.replace(base, user=base.user[idx], item=base.item[idx],
                            timestamp=base.timestamp[idx] // (7 * 86400), rating=None)
  cuts = np.linspace(0, idx.shape[0], 5).astype(int)
  chunks = [dataclasses.replace(log, **{c: getattr(log, c)[a:b] for c in ("user", "item", "timestamp")})
            for a, b in zip(cuts, cuts[1:])]
  return log, shards.write(str(tmp_path / "shards"), chunks)


def test_sharded_training_data_is_the_in_memory_one(tmp_path):
  log, on_disk = _on_disk(tmp_path)
  pairs = np.stack([log.user, log.timestamp], 1)
  assert len(np.unique(pairs, axis=0)) < 0.8 * log.user.shape[0]  # many ties in time within a user
  for t_star, k in ((20, 5), (3, 2)):
    want = tts.prepare_training_data(log, t_star, k)
    got = tts.batches.prepare_sharded_training_data(on_disk, t_star, k, max_rows=300)
    assert want.in_user.shape[0] > 1 and want.act_user.shape[0] > 1
    for f in dataclasses.fields(want):
      if f.name in ("pair_user", "pair_item"):  # stage 1 streams from the shards
        assert getattr(got, f.name).shape == (0,)
        continue
      np.testing.assert_array_equal(getattr(got, f.name), getattr(want, f.name), err_msg=f.name)


def test_ccf_loss_gives_masked_pairs_no_weight():
  cfg, _, params, _ = _setup("ccf", feats=False)
  users, items = np.array([0, 3, 3, 6, 1]), np.array([1, 0, 15, 2, 7])
  negs = jnp.asarray(np.random.default_rng(0).integers(0, NUM_ITEMS, (5, 3)))
  mask = np.array([True, False, True, True, False])
  masked, _ = tts.ccf_loss(cfg, params, {"user": users, "item": items, "mask": mask}, jax.random.key(0),
                           negatives=negs)
  kept, _ = tts.ccf_loss(cfg, params, {"user": users[mask], "item": items[mask]}, jax.random.key(0),
                         negatives=negs[mask])
  np.testing.assert_allclose(float(masked), float(kept), rtol=1e-6)


def test_train_on_a_sharded_log(tmp_path):
  log, on_disk = _on_disk(tmp_path)
  cfg = tts.TwoTimeScaleConfig(variant="2ts", d_id=8, d_feat=4, feat_hidden=8, t_star=3, k=2,
                               epochs_stage1=2, epochs_stage2=1, batch_stage1=500, batch_inactive=16,
                               batch_active=16, lr_stage1=0.05)
  res = tts.train(dataclasses.replace(cfg, variant="ccf"), on_disk, stage1_optimizer="rowwise-adagrad")
  stage1 = res.history
  assert len(stage1) == 2 and np.isfinite(stage1[-1]["loss"]) and stage1[-1]["loss"] < stage1[0]["loss"]
  assert stage1[-1]["step"] == 2 * -(-on_disk.num_rows // 500)  # the shards' rows, the last batch masked
  # Stage 2 from the same stage 1: the same groups, so the same steps and parameters as in memory.
  s1 = {k: res.params[k] for k in tts.STAGE1_KEYS if k in res.params}
  a = tts.train(cfg, on_disk, stage1_params=s1)
  b = tts.train(cfg, log, stage1_params=s1)
  chex.assert_trees_all_equal(a.params, b.params)
  with pytest.raises(ValueError, match="single-stage variant needs the log in memory"):
    tts.train(dataclasses.replace(cfg, variant="single-stage"), on_disk)


def test_item_vectors_run_the_feature_net_per_item_or_per_reference_alike():
  cfg, _, params, feats = _setup("2ts-plus")
  idx = jnp.asarray(np.random.default_rng(0).integers(0, NUM_ITEMS, (5, 8)))  # 40 >= 16 items: per item

  def per_reference(p):  # slices of 5 < 16 references: the net on each gathered row
    return jnp.concatenate([tts.item_vectors(cfg, p, idx[:, j], feats) for j in range(idx.shape[1])], 0)

  def per_item(p):
    return jnp.swapaxes(tts.item_vectors(cfg, p, idx, feats), 0, 1).reshape(-1, cfg.dim(FEAT))

  chex.assert_trees_all_close(per_item(params), per_reference(params), rtol=1e-6, atol=1e-7)
  # per_item runs the net on the [16, f] feature table itself (once per item), per_reference never does.
  def net_inputs(f):
    return {tuple(e.invars[0].aval.shape) for e in jax.make_jaxpr(f)(params).jaxpr.eqns
            if e.primitive.name == "pjit" or e.primitive.name == "dot_general"}
  assert (NUM_ITEMS, FEAT) in net_inputs(per_item) and (NUM_ITEMS, FEAT) not in net_inputs(per_reference)
  w = jax.random.normal(jax.random.key(3), per_item(params).shape)
  g_item = jax.grad(lambda p: jnp.sum(w * per_item(p)))(params)["feat_net"]
  g_ref = jax.grad(lambda p: jnp.sum(w * per_reference(p)))(params)["feat_net"]
  chex.assert_trees_all_close(g_item, g_ref, rtol=1e-5, atol=1e-6)
