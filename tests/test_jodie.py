"""JODIE (Kumar et al. 2019, as 2TS adapts it): the projection, the t-batches, no query leak, jit."""

import collections
import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.data.log import InteractionLog
from jaxrec.eval import protocols as protocols_lib
from jaxrec.eval.queries import Queries
from jaxrec.models import jodie
from jaxrec.train import fit as fit_lib

U, I, F = 7, 12, 3
_TX = ("sgd", 0.0, 0.0, None)  # learning rate 0: a pass leaves the parameters as they are
SMALL = dict(dim=8, static_dim=4, feat_dim=4, num_negatives=3, tbatch_size=2, tbatches_per_step=4,
             num_windows=3)


def _log(n=160, seed=0):
  """Time-ordered rows with repeated (user, item) pairs and many equal timestamps, split 70/10/20."""
  rng = np.random.default_rng(seed)
  user = rng.integers(0, U, n)
  item = np.where(rng.random(n) < 0.3, user % I, rng.integers(0, I, n))  # repeats
  t = np.sort(rng.integers(0, n // 3, n)) * 100  # about three rows per timestamp
  feats = (rng.random((I, F)) < 0.4).astype(np.float32)
  log = InteractionLog.from_arrays(user, item, t, num_users=U, num_items=I, item_features=feats)
  a, b = int(0.7 * n), int(0.8 * n)
  return [log.take(np.arange(0, a)), log.take(np.arange(a, b)), log.take(np.arange(b, n))]


# -- Eq. 3: the projection -------------------------------------------------------------------------------


def test_projection_is_identity_at_zero_and_grows_with_elapsed_time():
  rng = np.random.default_rng(0)
  w_p = jnp.asarray(rng.normal(size=16), jnp.float32)
  u = jnp.asarray(rng.normal(size=(5, 16)), jnp.float32)
  deltas = jnp.asarray([0.0, 0.01, 0.3, 1.0, 2.5, 10.0])
  moved = jax.vmap(lambda d: jnp.linalg.norm(jodie.project(w_p, u, jnp.full(5, d)) - u, axis=-1))(deltas)
  np.testing.assert_array_equal(jodie.project(w_p, u, jnp.zeros(5)), u)
  assert np.all(np.diff(np.asarray(moved), axis=0) > 0), moved
  np.testing.assert_allclose(moved, deltas[:, None] * jnp.linalg.norm(w_p * u, axis=-1), rtol=1e-5)


# -- t-batches -------------------------------------------------------------------------------------------


def _reference_tbatches(user, item, t, num_windows):
  """The authors' jodie.py loop: per time span, t-batch max(user's, item's last) + 1, spans in order."""
  span = t[-1] - t[0]
  out, batches, cur = [], {}, None
  for j in range(len(user)):
    w = 0 if span == 0 else min(int((t[j] - t[0]) * num_windows / span), num_windows - 1)
    if w != cur:  # a new span: flush the last one's t-batches, restart the ids
      out.extend(batches[k] for k in sorted(batches))
      batches, cur = collections.defaultdict(list), w
      last_u, last_i = collections.defaultdict(lambda: -1), collections.defaultdict(lambda: -1)
    k = max(last_u[user[j]], last_i[item[j]]) + 1
    last_u[user[j]] = last_i[item[j]] = k
    batches[k].append(j)
  out.extend(batches[k] for k in sorted(batches))
  return out


@pytest.mark.parametrize("num_windows", [1, 3, 500])
def test_tbatches_match_the_authors_assignment(num_windows):
  train = _log(300, seed=1)[0]
  s = jodie.make_stream([train])
  w, l = jodie.tbatch_levels(s.user, s.item, s.time, num_windows)
  layout = jodie.tbatch_layout(w, l, size=len(train))  # large enough: no chunking
  got = [[int(r) for r in row if r >= 0] for row in layout]
  assert got == _reference_tbatches(s.user, s.item, s.time, num_windows)


@pytest.mark.parametrize("size", [1, 2, 3])
def test_tbatch_chunks_never_repeat_a_user_or_item_and_keep_time_order(size):
  train = _log(300, seed=2)[0]
  s = jodie.make_stream([train])
  w, l = jodie.tbatch_levels(s.user, s.item, s.time, 3)
  layout = jodie.tbatch_layout(w, l, size)
  real = layout[layout >= 0]
  assert sorted(real.tolist()) == list(range(len(train)))  # every row exactly once
  where = {}
  for b, row in enumerate(layout):
    rows = row[row >= 0]
    assert len(set(s.user[rows])) == len(rows) and len(set(s.item[rows])) == len(rows), (b, rows)
    where.update({int(r): b for r in rows})
  for ids in (s.user, s.item):  # a user's (an item's) rows, in stream order, in increasing t-batches
    for x in np.unique(ids):
      batches = [where[r] for r in np.flatnonzero(ids == x)]
      assert all(a < b for a, b in zip(batches, batches[1:])), (x, batches)


def test_train_steps_address_the_right_rows():
  train = _log(300, seed=3)[0]
  cfg = jodie.JodieConfig(**SMALL)
  data = jodie.prepare_train(train, cfg)
  st = data.steps
  s_, k, b = st["user"].shape
  for s in range(s_):
    uid, iid = st["user_ids"][s], st["item_ids"][s]
    m = st["mask"][s]
    np.testing.assert_array_equal(uid[st["user_slot"][s]][m], st["user"][s][m])
    np.testing.assert_array_equal(iid[st["item_slot"][s]][m], st["item"][s][m])
    np.testing.assert_array_equal(iid[st["prev_slot"][s]], st["prev"][s])
    for t in range(k):  # a t-batch writes each slot once, padding included
      assert len(set(st["user_slot"][s, t])) == b and len(set(st["item_slot"][s, t])) == b
    written = np.zeros(iid.shape, bool)
    written[st["item_slot"][s][m]] = True
    np.testing.assert_array_equal(st["item_written"][s], written)
  assert int(st["mask"].sum()) == len(train)


def _initial_served(model, feats):
  nu, ni = model["user_static"].shape[0], model["item_static"].shape[0]
  return {"model": model, "feats": jnp.asarray(feats),
          "user_dyn": jnp.tile(model["user_init"], (nu, 1)),
          "item_dyn": jnp.tile(model["item_init"], (ni, 1))}


@functools.lru_cache(maxsize=None)
def _jitted_update(learner):
  """One jit object per learner: the tests below share its compilation."""
  return jax.jit(learner.update)


def test_tbatched_pass_reaches_the_sequential_state():
  """Eq. 1-2 read only the user's and the item's own state, so t-batching changes no embedding: one
  epoch of steps (learning rate 0) ends where consuming the rows one by one ends."""
  train = _log(300, seed=4)[0]
  cfg = jodie.JodieConfig(**SMALL)
  data = jodie.prepare_train(train, cfg)
  feats = jodie.padded_features(train.item_features, I)
  model = jodie.init_params(cfg, jax.random.PRNGKey(0), U, I, F)
  learner = jodie.make_learner(cfg, _TX)
  state = learner.init({"model": model, "feats": feats}, None)
  update = _jitted_update(learner)
  for step, batch in enumerate(data.batches(0)):
    state, _ = update(state, batch, jax.random.PRNGKey(step))
  served = learner.params(state)
  s = jodie.make_stream([train])
  rows = jodie.stream_rows(s, data.norm, np.arange(len(train)))
  seq, _ = jodie.rollout(_initial_served(model, feats), rows)
  np.testing.assert_allclose(served["user_dyn"][:U], seq["user_dyn"][:U], atol=1e-5)
  np.testing.assert_allclose(served["item_dyn"][:I], seq["item_dyn"][:I], atol=1e-5)
  assert not np.allclose(served["item_dyn"][0], model["item_init"])


# -- the step: jit vs no jit -----------------------------------------------------------------------------


def test_update_agrees_with_and_without_jit():
  train = _log(300, seed=4)[0]  # the data of the test above: one compilation
  cfg = jodie.JodieConfig(**SMALL)
  batch = next(jodie.prepare_train(train, cfg).batches(0))
  model = jodie.init_params(cfg, jax.random.PRNGKey(1), U, I, F)
  learner = jodie.make_learner(cfg, _TX)
  init = {"model": model, "feats": jodie.padded_features(train.item_features, I)}
  ref, ref_m = learner.update(learner.init(init, None), batch, jax.random.PRNGKey(0))  # eager
  got, m = _jitted_update(learner)(learner.init(init, None), batch, jax.random.PRNGKey(0))
  chex.assert_trees_all_close(got, ref, atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(m, ref_m, atol=1e-5, rtol=1e-5)
  assert np.isfinite(float(m["loss"])) and float(m["grad_norm"]) > 0
  assert float(jnp.abs(got["carry"][0] - learner.init(init, None)["carry"][0]).max()) > 0  # it moved


# -- fit, query features, scoring ------------------------------------------------------------------------


class _Forbidden:
  """Stands for logs[2] in fit: touching it fails the test."""

  def __getattr__(self, name):
    raise AssertionError(f"fit read logs[2].{name}")

  def __len__(self):
    raise AssertionError("fit read len(logs[2])")


@functools.lru_cache(maxsize=None)
def _fitted():
  logs = _log(160, seed=6)
  train, valid, _ = logs
  config = fit_lib.FitConfig(epochs=2, metric="valid/MRR", valid_negatives=4, patience=None)
  fitted = jodie.fit([train, valid, _Forbidden()], Queries.from_log(valid, [train]), config, seed=0,
                     **SMALL)
  return logs, fitted


def test_fit_records_validation_and_scores_test_queries():
  logs, fitted = _fitted()
  evals = [r for r in fitted.history if "valid/MRR" in r]
  assert len(evals) == 2 and all(0 < r["valid/MRR"] <= 1 for r in evals)
  d = SMALL["dim"] + SMALL["static_dim"] + SMALL["feat_dim"]
  assert fitted.params["item_table"].shape == (2, I, d)
  feats = jodie.query_features(fitted, logs, 2)
  assert feats["pred"].shape == (len(logs[2]), d) and np.all(feats["snapshot"] == 1)
  q = Queries.from_log(logs[2], logs[:2], features=feats)
  res = protocols_lib.evaluate(fitted.score_fn, fitted.params, q, protocols_lib.FullRanking(), I, ks=(10,))
  assert 0 < res.summary["MRR"] <= 1


def test_scorer_is_the_l2_distance_to_the_query_snapshot():
  _, fitted = _fitted()
  rng = np.random.default_rng(0)
  table = np.asarray(fitted.params["item_table"])
  pred = rng.normal(size=(4, table.shape[2])).astype(np.float32)
  snap = np.array([0, 1, 1, 0], np.int32)
  q = {"user": np.zeros(4, np.int32), "pred": pred, "snapshot": snap}
  want = -np.linalg.norm(pred[:, None, :] - table[snap][:, :, :], axis=-1)  # [4, I]
  shared = fitted.score_fn(fitted.params, q, jnp.arange(I))
  per_query = fitted.score_fn(fitted.params, q, jnp.tile(jnp.arange(I), (4, 1)))
  np.testing.assert_allclose(shared, want, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(per_query, want, rtol=1e-5, atol=1e-5)
  hash(fitted.score_fn)


@pytest.mark.parametrize("which", [1, 2])
def test_query_features_never_see_the_query_or_later_rows(which):
  logs, fitted = _fitted()
  base = jodie.query_features(fitted, logs, which)
  log = logs[which]
  order = np.argsort(log.timestamp, kind="stable")
  later_changed = 0
  for pos in (0, len(log) // 2, len(log) - 1):
    row = order[pos]
    for change_user in (False, True):
      user, item = log.user.copy(), log.item.copy()
      item[row] = (item[row] + 5) % I
      if change_user:
        user[row] = (user[row] + 3) % U
      changed = dataclasses.replace(log, user=user, item=item)
      got = jodie.query_features(fitted, logs[:which] + [changed] + logs[which + 1:], which)
      before = order[:pos] if change_user else order[:pos + 1]  # the row itself, unless its user moved
      np.testing.assert_array_equal(got["pred"][before], base["pred"][before])
      later_changed += not np.array_equal(got["pred"], base["pred"])
  assert later_changed  # later rows do see a change (the check above is not vacuous)
