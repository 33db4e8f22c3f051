"""Tests of MeLON's Table 2 baselines (jaxrec.methods.melon.baselines): the MW-Net and Meta-SGD
meta-gradients against a full-table reference written from their papers' equations (float64) and finite
differences, eALS's weighting against a brute-force loss, and the strategies' contract in the stream loop
(determinism, checkpoints, no recompiles, a new learner/seed compiles nothing, jitted == eager)."""

from __future__ import annotations

import dataclasses
import functools

from absl.testing import absltest, parameterized
import jax
import jax.numpy as jnp
import numpy as np
import optax
import flax

from jaxrec.methods.melon import baselines
from jaxrec.methods.melon import history as history_lib
from jaxrec.methods.melon import meta_model as meta_lib
from jaxrec.methods.melon import rows
from jaxrec.methods.melon import s2meta
from jaxrec.stream import blocks as blocks_lib
from jaxrec.stream import loop as loop_lib
from jaxrec.stream import strategies as strategies_lib
from jaxrec.train import learner as learner_lib
from jaxrec.train import state as state_lib
from tests import learner_contract
from tests.test_melon import _data, _log, _module  # shared fixtures (one synthetic:tiny stream)

_observe = jax.jit(history_lib.observe)
STRATEGY = strategies_lib.StrategyConfig(batch_size=64, num_negatives=1, loss="bpr", weight_decay=1e-3)
NAMES = ("eals", "mwnet", "metasgd", "s2meta")


def _env(model="mf-bpr"):
  return strategies_lib.Env(model, _module(model), STRATEGY, _data())


def _params(model, dtype=jnp.float32):
  env = _env(model)
  return jax.tree.map(lambda x: x.astype(dtype), strategies_lib.init_params(env, jax.random.PRNGKey(0)))


def _batch(lo, n=10, size=12, dup=True):
  """Log rows ``[lo, lo + n)`` padded to ``size``; a duplicated user and item (ties as in real data)."""
  log = _log()
  users = log.user[lo:lo + n].astype(np.int32).copy()
  items = log.item[lo:lo + n].astype(np.int32).copy()
  if dup:
    users[3] = users[1]
    items[5] = items[2]
  b = blocks_lib.pad_rows({"user": users, "positive": items}, size)
  return {k: jnp.asarray(v) for k, v in b.items()}


def _bpr_rows(module, params, users, slots):
  """Hand-written BPR per interaction on the full tables: ``mean_n softplus(s_neg_n - s_pos)``."""
  s = module.apply(params, {"user": users}, slots, method=module.score)
  return jnp.mean(jax.nn.softplus(s[:, 1:] - s[:, :1]), axis=1)


def _counts(n, idx, mask):
  """Real entries per table row (``idx [B, K]``), at least 1."""
  m = jnp.broadcast_to(mask[:, None], idx.shape).reshape(-1).astype(jnp.float64)
  return jnp.maximum(jnp.zeros((n,), jnp.float64).at[idx.reshape(-1)].add(m), 1.0)


def _reference_after(model, params, users, slots, mask, weights, rate):
  """Theta^ = Theta - rate o (grad_Theta sum_x weights_x L_x) / count, written into the full tables:
  the per-row mean of the per-interaction updates (dense leaves: the mean over the real interactions)."""
  module = _module(model)
  g = jax.grad(lambda p: jnp.sum(weights * mask * _bpr_rows(module, p, users, slots)))(params)
  roles = rows.leaf_roles(params)
  cu = _counts(module.num_users, users[:, None], mask)
  ci = _counts(module.num_items, slots, mask)
  n = jnp.maximum(mask.sum(), 1).astype(jnp.float64)
  flat_g = rows.split(g, roles)
  out = []
  for kind, c in zip((rows.USER, rows.ITEM, rows.DENSE), (cu, ci, None)):
    part = {}
    for path, v in rows.split(params, roles)[(rows.USER, rows.ITEM, rows.DENSE).index(kind)].items():
      r = rate[path] if isinstance(rate, dict) else rate
      scale = (1.0 / n) if c is None else (1.0 / c).reshape((-1,) + (1,) * (v.ndim - 1))
      part[path] = v - r * flat_g[(rows.USER, rows.ITEM, rows.DENSE).index(kind)][path] * scale
    out.append(part)
  return rows.merge(*out)


def _meta_problem(model):
  """float64 params, a previous batch and a new batch sharing users and items, explicit negatives
  (numpy randomness: no threefry compiles)."""
  params = jax.device_get(_params(model))
  params = jax.tree.map(lambda x: jnp.asarray(np.asarray(x, np.float64)), params)
  roles = rows.leaf_roles(params)
  prev, now = _batch(100), _batch(104)  # overlapping windows: shared users/items across the batches
  ni = _module(model).num_items
  r = np.random.default_rng(1)
  neg_prev, neg_now = r.integers(0, ni, (12, 2)), r.integers(0, ni, (12, 2))
  neg_prev[0, 0] = prev["positive"][0]  # a negative equal to the positive
  slots_prev = jnp.asarray(np.concatenate([np.asarray(prev["positive"])[:, None], neg_prev], 1), jnp.int32)
  slots_now = jnp.asarray(np.concatenate([np.asarray(now["positive"])[:, None], neg_now], 1), jnp.int32)

  @jax.jit
  def gather(params):
    return (rows.gather(params, roles, prev["user"], slots_prev[:, 0], slots_prev[:, 1:], prev["mask"]),
            rows.gather(params, roles, now["user"], slots_now[:, 0], slots_now[:, 1:], now["mask"]))

  inv_prev, inv_now = gather(params)
  return params, roles, prev, now, slots_prev, slots_now, inv_prev, inv_now


def _random_like(tree, seed, scale=1.0, shift=0.0, absolute=False):
  """A tree of N(shift, scale) float64 leaves (``absolute``: |N(0, scale)| + shift), from numpy."""
  r = np.random.default_rng(seed)
  def one(x):
    z = scale * r.standard_normal(np.shape(x))
    return jnp.asarray((np.abs(z) if absolute else z) + shift, jnp.float64)
  return jax.tree.map(one, tree)


def _check_meta_gradient(test, ours, reference, x, seed, eps=1e-5, rtol=1e-5):
  """``value_and_grad(ours)`` at ``x`` == the reference's (value rtol 1e-10, gradient 1e-8), and its
  directional derivatives along 2 random directions == central differences of ``ours`` (evaluated with
  the same compiled ``value_and_grad``: no further compile)."""
  vg = jax.jit(jax.value_and_grad(ours))
  (v, g), (v_ref, g_ref) = vg(x), jax.jit(jax.value_and_grad(reference))(x)
  np.testing.assert_allclose(v, v_ref, rtol=1e-10)
  test.assertGreater(float(optax.global_norm(g_ref)), 1e-8)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-14)
  for i in range(2):
    d = _random_like(x, seed + i)
    plus = vg(jax.tree.map(lambda a, e: a + eps * e, x, d))[0]
    minus = vg(jax.tree.map(lambda a, e: a - eps * e, x, d))[0]
    fd = (plus - minus) / (2 * eps)
    an = sum(np.vdot(a, e) for a, e in zip(jax.tree.leaves(g), jax.tree.leaves(d)))
    np.testing.assert_allclose(an, fd, rtol=rtol, atol=1e-12)


class MetaGradientTest(parameterized.TestCase):

  def test_mwnet_meta_gradient_matches_reference_and_fd(self):
    """Eq. 3-4 of Shu et al.: phi -> mean_{B_t} L(Theta - alpha V(L_x; phi)-weighted step on B_{t-1})."""
    with jax.enable_x64():
      model = "mf-bpr"  # its global bias is a dense leaf (the batch-mean path)
      module = _module(model)
      cfg = baselines.MetaLearnedConfig(hidden=5, virtual_lr=0.7)
      params, _, prev, now, slots_prev, slots_now, inv_prev, inv_now = _meta_problem(model)
      shapes = jax.eval_shape(lambda: baselines.WeightNet(cfg.hidden).init(jax.random.PRNGKey(3),
                                                                          jnp.zeros((1,), jnp.float32)))
      meta = _random_like(shapes, 4, scale=0.7)
      loss_fn = rows.local_loss(module, "bpr")
      ours = baselines.mwnet_objective(cfg, loss_fn, inv_prev, inv_now)

      def reference(phi):
        p = phi["params"]
        m = prev["mask"].astype(jnp.float64)
        losses_prev = jax.lax.stop_gradient(_bpr_rows(module, params, prev["user"], slots_prev))
        h = jax.nn.relu(losses_prev[:, None] @ p["hidden"]["kernel"] + p["hidden"]["bias"])
        w = jax.nn.sigmoid(h @ p["out"]["kernel"] + p["out"]["bias"])[:, 0] * m
        w = w * m.sum() / w.sum()  # normalised to mean 1 over the real rows
        after = _reference_after(model, params, prev["user"], slots_prev, m, w, cfg.virtual_lr)
        mn = now["mask"].astype(jnp.float64)
        return jnp.sum(mn * _bpr_rows(module, after, now["user"], slots_now)) / mn.sum()

      _check_meta_gradient(self, ours, reference, meta, 5)

  def test_metasgd_meta_gradient_matches_reference_and_fd(self, model="ncf"):
    """Eq. 1 and 3 of Li et al.: alpha -> mean_{B_t} L(Theta - alpha o grad L_{B_{t-1}})."""
    with jax.enable_x64():
      module = _module(model)
      params, roles, prev, now, slots_prev, slots_now, inv_prev, inv_now = _meta_problem(model)
      alpha = _random_like(params, 3, scale=0.3, shift=0.2, absolute=True)
      loss_fn = rows.local_loss(module, "bpr")
      ours = baselines.metasgd_objective(loss_fn, roles, inv_prev, inv_now)

      def reference(a):
        m = prev["mask"].astype(jnp.float64)
        flat_a = {}
        for d in rows.split(a, roles):
          flat_a.update(d)
        after = _reference_after(model, params, prev["user"], slots_prev, m, jnp.ones_like(m), flat_a)
        mn = now["mask"].astype(jnp.float64)
        return jnp.sum(mn * _bpr_rows(module, after, now["user"], slots_now)) / mn.sum()

      _check_meta_gradient(self, ours, reference, alpha, 5)


  def test_s2meta_meta_gradient_matches_reference_and_fd(self):
    """Du et al.'s update controller on the full tables: touched rows ``f o theta - i o gbar`` with
    ``(i, f)`` the meta-LSTM gates of ``[gbar, L, theta, gate_prev]``, ``gbar`` the row-mean gradient."""
    with jax.enable_x64():
      model = "ncf"
      module = _module(model)
      params, roles, prev, now, slots_prev, slots_now, inv_prev, inv_now = _meta_problem(model)
      phi = _random_like(s2meta.init_meta(s2meta.S2MetaConfig(), jax.random.PRNGKey(0)), 3, scale=0.5)
      gate_state = {"i": _random_like(params, 4, 0.1, 0.2), "f": _random_like(params, 5, 0.1, 0.8)}
      loss_fn = rows.local_loss(module, "bpr")
      ours = s2meta.objective(loss_fn, roles, inv_prev, inv_now, gate_state)

      def sig(x):
        return 1.0 / (1.0 + jnp.exp(-x))

      def reference(phi):
        m = prev["mask"].astype(jnp.float64)
        per = _bpr_rows(module, params, prev["user"], slots_prev)
        loss = jnp.sum(m * per) / m.sum()
        gbar = _reference_after(model, params, prev["user"], slots_prev, m, jnp.ones_like(m), -1.0)
        gbar = jax.tree.map(lambda a, p: a - p, gbar, params)  # Gbar = G / count (dense: / n)
        # Rows the previous batch touches (only they are updated).
        cu = jnp.zeros((module.num_users,)).at[prev["user"]].add(m) > 0
        ci = jnp.zeros((module.num_items,)).at[slots_prev.reshape(-1)].add(
            jnp.repeat(m, slots_prev.shape[1])) > 0
        flat = {}
        for kind, (pd, gd, ipd, fpd) in zip((rows.USER, rows.ITEM, rows.DENSE), zip(
            rows.split(params, roles), rows.split(gbar, roles), rows.split(gate_state["i"], roles),
            rows.split(gate_state["f"], roles))):
          for path, theta in pd.items():
            g = gd[path]
            pre = lambda x: meta_lib.preprocess(x)  # noqa: E731
            x = jnp.concatenate([pre(g), jnp.broadcast_to(pre(loss), g.shape + (2,)), theta[..., None]], -1)
            i = sig(jnp.concatenate([x, ipd[path][..., None]], -1) @ phi["w_i"] + phi["b_i"])
            f = sig(jnp.concatenate([x, fpd[path][..., None]], -1) @ phi["w_f"] + phi["b_f"])
            new = f * theta - i * g
            if kind != rows.DENSE:
              hit = (cu if kind == rows.USER else ci).reshape((-1,) + (1,) * (theta.ndim - 1))
              new = jnp.where(hit, new, theta)
            flat[path] = new
        after = {"params": flax.traverse_util.unflatten_dict(flat)}
        mn = now["mask"].astype(jnp.float64)
        return jnp.sum(mn * _bpr_rows(module, after, now["user"], slots_now)) / mn.sum()

      _check_meta_gradient(self, ours, reference, phi, 6)


class EalsTest(parameterized.TestCase):

  def test_weights_new_interactions_by_w_new(self, w_new=4.0):
    """One eALS step == one SGD step on a brute-force weighted loss: the batch's rows weighted
    ``w_new``, each batch user's / item's sampled earlier interactions weighted 1. (SGD, so that the
    step is the weighted gradient itself: Adam's first step is close to ``lr * sign(grad)`` and hides
    the weights.)"""
    model, k = "mf-bpr", 2
    env = strategies_lib.Env(model, _module(model), dataclasses.replace(STRATEGY, optimizer="sgd",
                                                                        learning_rate=1.0), _data())
    module = env.module
    cfg = baselines.EalsConfig(w_new=w_new, old_per_node=k)
    st = baselines.static(env, cfg)
    params = _params(model)
    log = _log()
    hist = history_lib.empty(log.num_users, log.num_items, k)
    for lo in range(0, 96, 16):
      b = blocks_lib.pad_rows({"user": log.user[lo:lo + 16], "positive": log.item[lo:lo + 16]}, 16)
      hist = _observe(hist, jnp.asarray(b["user"]), jnp.asarray(b["positive"]),
                                 jnp.asarray(b["mask"]), jax.random.PRNGKey(lo))
    batch = _batch(96)
    ts = state_lib.create(params, st.optimizer())
    rng = jax.random.PRNGKey(9)
    out, metrics = jax.jit(functools.partial(baselines.eals_step, st))(
        baselines.EalsState(train=ts, history=hist), batch, rng)

    # Brute force: the rows listed one by one from the history's arrays.
    un, us, inb, isn = (np.asarray(x) for x in (hist.user_nbrs, hist.user_seen, hist.item_nbrs,
                                                  hist.item_seen))
    users, items, mask = (np.asarray(batch[x]) for x in ("user", "positive", "mask"))
    listed = [(u, i, w_new if m else 0.0) for u, i, m in zip(users, items, mask)]
    for u, m in zip(users, mask):
      listed += [(u, un[u, j], 1.0 if (m and j < min(us[u], k)) else 0.0) for j in range(k)]
    for i, m in zip(items, mask):
      listed += [(inb[i, j], i, 1.0 if (m and j < min(isn[i], k)) else 0.0) for j in range(k)]
    lu, li, lw = (np.asarray(x) for x in zip(*listed))
    negs = jax.random.randint(jax.random.split(rng)[0], (len(listed), 1), 0, module.num_items, jnp.int32)
    self.assertGreater(lw[len(users):].sum(), 0)  # some old rows are real

    def brute(p):
      per = _bpr_rows(module, p, jnp.asarray(lu, jnp.int32),
                      jnp.concatenate([jnp.asarray(li, jnp.int32)[:, None], negs], 1))
      return jnp.sum(lw * per) / lw.sum()

    tx = st.optimizer()

    @jax.jit
    def expected_step(p):
      upd, _ = tx.update(jax.grad(brute)(p), tx.init(p), p)
      return optax.apply_updates(p, upd), brute(p)

    expected, brute_loss = expected_step(params)
    for a, b in zip(jax.tree.leaves(out.train.params), jax.tree.leaves(expected)):
      np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(metrics["loss"], brute_loss, rtol=1e-5)
    n_new = mask.sum()
    np.testing.assert_allclose(metrics["new_weight_share"],
                               w_new * n_new / (w_new * n_new + lw[len(users):].sum()), rtol=1e-6)


class StrategyTest(parameterized.TestCase):

  def test_registered(self):
    for name in NAMES:
      self.assertTrue(strategies_lib.get(name).jittable)

  @parameterized.parameters(("eals", "mf-bpr"), ("mwnet", "mf-bpr"), ("metasgd", "mf-bpr"),
                            ("s2meta", "mf-bpr"), ("metasgd", "ncf"))
  def test_contract_and_no_recompile(self, name, model):
    """(ncf once: its dense layers take the selective update's batch-mean path; the eALS and MW-Net
    steps on ncf are the Default's dense optimizer step, and MW-Net's virtual step on ncf is checked
    against the reference in MetaGradientTest.)"""
    env = _env(model)
    learner = strategies_lib.get(name).make(env)
    blocks = [env.data.block(t) for t in range(2)]
    params = _params(model)
    learner_contract.check(self, learner, params, blocks, jit_update=True, jit_init=False)
    # A new learner of the same configuration, another seed: nothing compiles again.
    learner2 = strategies_lib.get(name).make(env)
    before = learner_contract.compile_count()
    state = learner2.init(strategies_lib.init_params(env, jax.random.PRNGKey(1)), jax.random.PRNGKey(1))
    state, m = learner_lib.jit_update(learner2)(state, blocks[1], jax.random.PRNGKey(2))
    jax.block_until_ready(state)
    self.assertEqual(learner_contract.compile_count() - before, 0)
    self.assertTrue(np.isfinite(float(m["loss"])))

  # The two meta-learned updates with their own state (eals / metasgd share MeLON's selective path,
  # whose jit == eager check is in test_melon.py): kept to two for the suite's time budget.
  @parameterized.parameters("mwnet", "s2meta")
  def test_jitted_and_not_agree_and_scored_before_update(self, name):
    env = _env()
    learner = strategies_lib.get(name).make(env)
    params = _params("mf-bpr")
    state = learner.init(params, jax.random.PRNGKey(0))
    # init serves the given recommender (the offline pass only warms the meta-part / fills the history).
    learner_contract.assert_trees_equal(self, learner.params(state), params)
    block = env.data.block(0)
    ref, m_ref = learner_lib.jit_update(learner)(learner.init(params, jax.random.PRNGKey(0)), block,
                                                 jax.random.PRNGKey(3))
    out, m = learner.update(state, block, jax.random.PRNGKey(3))
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
      np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(m["loss"], m_ref["loss"], rtol=1e-5)
    seen = []

    def evaluate_fn(p, t):
      del t
      seen.append(jax.tree.map(np.array, p))
      return {"x": 0.0}

    res = loop_lib.run(learner, learner.init(params, jax.random.PRNGKey(0)), env.data, evaluate_fn,
                       rng=jax.random.PRNGKey(0))
    self.assertTrue(res.done)
    learner_contract.assert_trees_equal(self, seen[0], params)
    self.assertFalse(all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(seen[0]),
                                                               jax.tree.leaves(seen[1]))))

  def test_bad_config(self):
    with self.assertRaisesRegex(ValueError, "w_new"):
      baselines.EalsConfig(w_new=0.0)
    with self.assertRaisesRegex(ValueError, "init_range"):
      baselines.MetaLearnedConfig(init_range=(0.2, 0.1))
    with self.assertRaisesRegex(ValueError, "user model"):
      baselines.mwnet(strategies_lib.Env("gru4rec", None, STRATEGY, _data()))


if __name__ == "__main__":
  absltest.main()
