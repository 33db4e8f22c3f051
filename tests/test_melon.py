"""Tests of MeLON (jaxrec.methods.melon): the meta-gradient against finite differences and a full-table
reference, the first-order option against its definition, the selective update, B_last and the neighbours
strictly from the past, the strategy's contract in the stream loop (jit, determinism, no recompiles)."""

from __future__ import annotations

import dataclasses
import functools

from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.data import preprocess, synthetic
from jaxrec.methods import melon
from jaxrec.methods.melon import history as history_lib
from jaxrec.methods.melon import meta_model as meta_lib
from jaxrec.methods.melon import rows
from jaxrec.methods.melon import step as step_lib
from jaxrec.models import registry
from jaxrec.stream import blocks as blocks_lib
from jaxrec.stream import loop as loop_lib
from jaxrec.stream import strategies as strategies_lib
from jaxrec.train import checkpoint as checkpoint_lib
from jaxrec.train import learner as learner_lib
from tests import learner_contract

META = meta_lib.MetaConfig(hidden=6, rate_bias=-1.0, forget_bias=2.0)
CONFIG = melon.MelonConfig(meta=META, num_neighbours=3, offline_epochs=1)
STRATEGY = strategies_lib.StrategyConfig(batch_size=64, num_negatives=1, loss="bpr")


@functools.lru_cache(maxsize=None)
def _log():
  return preprocess.deduplicate(synthetic.generate("tiny", seed=0))


@functools.lru_cache(maxsize=None)
def _data():
  return blocks_lib.from_prequential(_log(), 64, 0.9)


@functools.lru_cache(maxsize=None)
def _module(model):
  log = _log()
  hp = {"dim": 4, "use_bias": True, "init_scale": 0.3} if model == "mf-bpr" else \
      {"mf_dim": 3, "mlp_layers": (4, 3, 3), "init_scale": 0.3}
  return registry.get(model).make(log.num_users, log.num_items, **hp)


@functools.lru_cache(maxsize=None)
def _init_fn(model):
  module = _module(model)
  return jax.jit(lambda rng: registry.get(model).init(rng, module, registry.sample_batch("user")))


def _params(model, dtype=jnp.float32, seed=0):
  return jax.tree.map(lambda x: x.astype(dtype), _init_fn(model)(jax.random.PRNGKey(seed)))


_observe = jax.jit(history_lib.observe)


def _history(n_rows=120, k=3, batch=16):
  """The history after the log's first ``n_rows`` rows (observed in batches of ``batch``)."""
  log = _data().log
  hist = history_lib.empty(log.num_users, log.num_items, k)
  for lo in range(0, n_rows, batch):
    sl = slice(lo, min(lo + batch, n_rows))
    b = blocks_lib.pad_rows({"user": log.user[sl].astype(np.int32),
                             "positive": log.item[sl].astype(np.int32)}, batch)
    hist = _observe(hist, jnp.asarray(b["user"]), jnp.asarray(b["positive"]), jnp.asarray(b["mask"]),
                               jax.random.PRNGKey(lo))
  return hist


def _batch(lo=120, n=10, size=12):
  """Rows ``[lo, lo + n)`` padded to ``size``, with a duplicated user and item (ties as in real data)."""
  log = _data().log
  users = log.user[lo:lo + n].astype(np.int32).copy()
  items = log.item[lo:lo + n].astype(np.int32).copy()
  users[3] = users[1]
  items[5] = items[2]
  b = blocks_lib.pad_rows({"user": users, "positive": items}, size)
  return {k: jnp.asarray(v) for k, v in b.items()}


def _cfg(model, order=2, dense="auto", meta=META):
  return step_lib.StepConfig(module=_module(model), loss="bpr", meta=meta, num_negatives=2, order=order,
                             dense=dense)


def _problem(model, dtype, cfg):
  params = _params(model, dtype)
  roles = rows.leaf_roles(params)
  hist = _history()
  batch = _batch()
  last = history_lib.b_last(hist, batch["user"], batch["positive"], batch["mask"])
  n_items = _module(model).num_items
  neg_now = jax.random.randint(jax.random.PRNGKey(1), (12, 2), 0, n_items)
  neg_last = jax.random.randint(jax.random.PRNGKey(2), (24, 2), 0, n_items)
  inv_now = rows.gather(params, roles, batch["user"], batch["positive"], neg_now, batch["mask"])
  inv_last = rows.gather(params, roles, last["user"], last["positive"], neg_last, last["mask"])
  meta = meta_lib.init(cfg.meta, jax.random.PRNGKey(3), *_node_dims(params, roles), 3)
  # Away from the initialisation, where zero biases on a dead ReLU layer put pre-activations exactly on
  # the kink (finite differences would then see half the slope).
  leaves, tree = jax.tree.flatten(meta)
  keys = jax.random.split(jax.random.PRNGKey(4), len(leaves))
  meta = jax.tree.unflatten(tree, [(x + 0.1 * jax.random.normal(k, x.shape)).astype(dtype)
                                   for k, x in zip(keys, leaves)])
  full_loss = registry.get(model).loss_fn(_module(model), "bpr")
  now_batch = {"user": batch["user"], "positive": batch["positive"], "negatives": neg_now,
               "mask": batch["mask"]}
  return params, roles, hist, inv_now, inv_last, meta, full_loss, now_batch


def _node_dims(params, roles):
  user, item, _ = rows.split(params, roles)
  return sum(int(v[0].size) for v in user.values()), sum(int(v[0].size) for v in item.values())


def _tilde_full(cfg, params, roles, hist, inv_last, loss_fn, meta):
  """Reference Theta~: the preliminary update written into the full tables (scatter path)."""
  ps = rows.per_sample(loss_fn, inv_last)
  h = step_lib.interaction_repr(cfg, meta, params, roles, hist, inv_last)
  return rows.apply(params, roles, inv_last, step_lib.deltas(cfg, meta, inv_last, ps, h))


class MetaGradientTest(parameterized.TestCase):

  @parameterized.named_parameters(("mf", "mf-bpr", "auto", META),
                                  ("ncf_authors", "ncf", "batch",
                                   dataclasses.replace(melon.AUTHORS, hidden=6)))
  def test_second_order_matches_finite_differences(self, model, dense, meta):
    with jax.enable_x64():
      cfg = _cfg(model, 2, dense, meta)
      params, roles, hist, inv_now, inv_last, phi, full_loss, now_batch = _problem(model, jnp.float64, cfg)
      loss_fn = rows.local_loss(cfg.module, "bpr")
      objective = step_lib.meta_objective(cfg, params, roles, hist, inv_last, inv_now, loss_fn)
      value, grad = jax.jit(jax.value_and_grad(objective))(phi)

      def reference(meta):  # full tables, the registered model's own loss
        return full_loss(_tilde_full(cfg, params, roles, hist, inv_last, loss_fn, meta), now_batch, None)[0]

      ref_vg = jax.jit(jax.value_and_grad(reference))
      ref_value, ref_grad = ref_vg(phi)
      np.testing.assert_allclose(value, ref_value, rtol=1e-12)
      for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(ref_grad)):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-14)
      reference = lambda m: ref_vg(m)[0]  # noqa: E731  (the compiled value_and_grad: no other compile)
      # Central finite differences along random directions of the meta-parameters.
      leaves, tree = jax.tree.flatten(phi)
      for s in range(3):
        keys = jax.random.split(jax.random.PRNGKey(10 + s), len(leaves))
        v = jax.tree.unflatten(tree, [jax.random.normal(k, x.shape, jnp.float64)
                                      for k, x in zip(keys, leaves)])
        eps = 1e-5
        plus = reference(jax.tree.map(lambda x, d: x + 1e-5 * d, phi, v))
        minus = reference(jax.tree.map(lambda x, d: x - 1e-5 * d, phi, v))
        fd = (plus - minus) / (2 * eps)
        analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(v)))
        self.assertGreater(abs(float(analytic)), 1e-9)  # the meta-loss does depend on phi
        np.testing.assert_allclose(analytic, fd, rtol=1e-5)

  def test_first_order_matches_its_definition(self):
    with jax.enable_x64():
      cfg = _cfg("mf-bpr", 1)
      params, roles, hist, inv_now, inv_last, phi, full_loss, now_batch = _problem("mf-bpr", jnp.float64, cfg)
      loss_fn = rows.local_loss(cfg.module, "bpr")
      now_loss = lambda u, i, d: rows.batch_loss(loss_fn, inv_now._replace(user=u, item=i, dense=d))  # noqa
      grad_now = jax.jit(jax.grad(now_loss,
                                  argnums=(0, 1, 2)))(inv_now.user, inv_now.item, inv_now.dense)
      objective = step_lib.meta_objective(cfg, params, roles, hist, inv_last, inv_now, loss_fn, grad_now)
      grad = jax.jit(jax.grad(objective))(phi)
      # Definition: grad_phi <grad_Theta L_{Theta_t}(B_t), Theta~(phi)>, on the full tables.
      g_full = jax.jit(jax.grad(lambda p: full_loss(p, now_batch, None)[0]))(params)

      def linearised(meta):
        tilde = _tilde_full(cfg, params, roles, hist, inv_last, loss_fn, meta)
        return sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g_full), jax.tree.leaves(tilde)))

      for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(jax.jit(jax.grad(linearised))(phi))):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-14)


class RowsTest(parameterized.TestCase):

  def test_rows_after_equals_scatter_then_gather(self):
    params = _params("ncf")
    roles = rows.leaf_roles(params)
    batch = _batch()
    upd = rows.gather(params, roles, batch["user"], batch["positive"],
                      jnp.tile(batch["positive"][::-1, None], 2), batch["mask"])
    delta = rows.PerSample(None, *[jax.tree.map(lambda x: jax.random.normal(jax.random.PRNGKey(7),
                                                                             (12,) + x.shape[1:]) * 0.1, d)
                                   for d in (upd.user, upd.item)],
                           jax.tree.map(lambda x: jax.random.normal(jax.random.PRNGKey(8), (12,) + x.shape),
                                        upd.dense))
    query = rows.gather(params, roles, batch["user"][::-1], batch["positive"], batch["positive"][:, None],
                        jnp.ones(12, bool))
    after = rows.involved_after(query, upd, delta)
    full = rows.apply(params, roles, upd, delta)
    expect = rows.gather(full, roles, query.user_idx, query.item_idx[:, 0], query.item_idx[:, 1:], query.mask)
    for a, b in zip(jax.tree.leaves((after.user, after.item, after.dense)),
                    jax.tree.leaves((expect.user, expect.item, expect.dense))):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

  def test_apply_subtracts_the_per_row_mean_of_the_deltas(self):
    """rows.apply against a Python loop: each table row minus the mean of the deltas of the real entries
    that hit it (duplicates within and across slots, padding dropped), dense leaves minus the batch mean."""
    params = _params("mf-bpr")
    roles = rows.leaf_roles(params)
    batch = _batch()  # duplicated users and items, 2 padding rows
    negatives = jnp.stack([batch["positive"][::-1], batch["positive"]], 1)  # items repeated across slots
    upd = rows.gather(params, roles, batch["user"], batch["positive"], negatives, batch["mask"])
    r = np.random.default_rng(0)
    noise = lambda x: jnp.asarray(r.normal(size=(12,) + x.shape[1:]), jnp.float32)  # noqa: E731
    delta = rows.PerSample(None, jax.tree.map(noise, upd.user), jax.tree.map(noise, upd.item),
                           jax.tree.map(lambda x: jnp.asarray(r.normal(size=(12,) + x.shape), jnp.float32),
                                        upd.dense))
    out = rows.split(rows.apply(params, roles, upd, delta), roles)
    ref = [dict((p, np.array(v)) for p, v in d.items()) for d in rows.split(params, roles)]
    mask = np.asarray(batch["mask"])
    for kind, idx, d in ((0, np.asarray(upd.user_idx)[:, None], delta.user),
                         (1, np.asarray(upd.item_idx), delta.item)):
      for p in ref[kind]:
        hits = {}
        for b in range(idx.shape[0]):
          for k in range(idx.shape[1]):
            if mask[b]:
              hits.setdefault(int(idx[b, k]), []).append(np.asarray(d[p])[b, k])
        for row, ds in hits.items():
          ref[kind][p][row] -= np.mean(ds, axis=0)
        np.testing.assert_allclose(out[kind][p], ref[kind][p], rtol=1e-5, atol=1e-6, err_msg=str(p))
    for p, v in ref[2].items():
      expect = v - np.asarray(delta.dense[p])[mask].mean(0)
      np.testing.assert_allclose(out[2][p], expect, rtol=1e-5, atol=1e-6)

  def test_roles(self):
    roles = rows.leaf_roles(_params("ncf"))
    by = {r: sorted("/".join(p) for p, v in roles.items() if v == r) for r in (rows.USER, rows.ITEM)}
    self.assertEqual(by[rows.USER], ["gmf_user/embedding", "mlp_user/embedding"])
    self.assertEqual(by[rows.ITEM], ["gmf_item/embedding", "mlp_item/embedding"])
    self.assertEqual(roles[("mlp_0_user", "kernel")], rows.DENSE)
    mf = rows.leaf_roles(_params("mf-bpr"))
    self.assertEqual(mf[("user_bias",)], rows.USER)
    self.assertEqual(mf[("item_bias",)], rows.ITEM)
    self.assertEqual(mf[("global_bias",)], rows.DENSE)

  def test_fusion_is_the_concatenated_linear_map(self):
    """Eq. 11-12 written as row blocks of the first layer equal the Dense layers on [theta, L, grad]."""
    cfg = meta_lib.MetaConfig(hidden=5)
    phi = meta_lib.init(cfg, jax.random.PRNGKey(0), 3, 3, 2)["params"]
    b, m = 4, 7
    rng = np.random.default_rng(0)
    h_x = jnp.asarray(rng.normal(size=(b, 5)), jnp.float32)
    theta = jnp.asarray(rng.normal(size=(b, m)), jnp.float32)
    loss = jnp.asarray(rng.uniform(0, 2, size=b), jnp.float32)
    grad = jnp.asarray(rng.normal(size=(b, m)) * np.array([1e-6, 1e-3, 1, 0, 1e-5, 10, 1e-2]), jnp.float32)
    model = meta_lib.MetaModel(cfg)
    rates = jax.jit(functools.partial(model.apply, method=model.rates))
    w, f = rates({"params": phi}, h_x, theta, loss, grad)
    feats = jnp.concatenate([theta[..., None],
                             jnp.broadcast_to(meta_lib.preprocess(loss)[:, None], (b, m, 2)),
                             meta_lib.preprocess(grad)], -1)
    h = jax.nn.relu(feats @ phi["role_0_kernel"] + phi["role_0_bias"])
    h = jax.nn.relu(h @ phi["role_1"]["kernel"] + phi["role_1"]["bias"])
    heads = h @ phi["head_theta"]["kernel"]
    lw = (h_x @ phi["lr_x"]["kernel"] + phi["lr_x"]["bias"]) + heads[..., 0]
    lf = (h_x @ phi["f_x"]["kernel"] + phi["f_x"]["bias"]) + heads[..., 1]
    np.testing.assert_allclose(w, jax.nn.sigmoid(lw), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(f, jax.nn.sigmoid(lf), rtol=1e-5, atol=1e-6)

  def test_preprocess(self):
    x = jnp.asarray([0.0, 1e-6, -3e-5, -3e-4, 2.0, -1.0])  # e^-10 = 4.5e-5 separates the two branches
    out = np.asarray(meta_lib.preprocess(x))
    np.testing.assert_allclose(out[:, 0], [-1, -1, -1, np.log(3e-4) / 10, np.log(2) / 10, 0], rtol=1e-5)
    np.testing.assert_allclose(out[:, 1], [0, np.exp(10) * 1e-6, -np.exp(10) * 3e-5, -1, 1, -1], rtol=1e-5)


class SelectiveUpdateTest(parameterized.TestCase):

  def test_untouched_rows_are_bit_identical(self):
    """Only the rows the batch's interactions involve change (not B_last's, not padding's row 0); and
    ``init``'s offline pass compiled the update the stream reuses: the first stream update of a
    configuration no other test uses compiles nothing."""
    env = _env()
    learner = melon.make(env, dataclasses.replace(CONFIG, meta_learning_rate=7e-4))  # fresh compilation
    params = _params("mf-bpr")
    state = jax.block_until_ready(learner.init(params, jax.random.PRNGKey(0)))
    t = 2
    block = env.data.block(t)
    rng = jax.random.PRNGKey(5)
    before = jax.tree.map(np.array, state.params)
    last = history_lib.b_last(state.history, jnp.asarray(block["user"]), jnp.asarray(block["positive"]),
                              jnp.asarray(block["mask"]))
    compiles = learner_contract.compile_count()
    # Committed as the stream loop (``stream.run``) commits its state before the first update.
    new, _ = jax.block_until_ready(learner_lib.jit_update(learner)(checkpoint_lib.commit(state), block, rng))
    self.assertEqual(learner_contract.compile_count() - compiles, 0, "the stream compiled the update again")
    # The negatives the step drew (mini-batch 0 of the block: key fold_in(rng, 0), split in three).
    negatives = jax.random.randint(jax.random.split(jax.random.fold_in(rng, 0), 3)[1], (64, 1), 0,
                                   env.module.num_items)
    m = block["mask"]
    self.assertFalse(m.all())  # the last block is padded: padding rows must write nothing
    users = set(block["user"][m].tolist())
    items = set(block["positive"][m].tolist()) | set(np.asarray(negatives)[m].ravel().tolist())
    lm = np.asarray(last["mask"])
    self.assertTrue((set(np.asarray(last["user"])[lm].tolist()) - users)
                    or (set(np.asarray(last["positive"])[lm].tolist()) - items))
    roles = rows.leaf_roles(params)
    flat_b = rows.split(before, roles)
    flat_a = rows.split(jax.tree.map(np.asarray, new.params), roles)
    for kind, touched, n in ((0, users, env.module.num_users), (1, items, env.module.num_items)):
      untouched = np.asarray(sorted(set(range(n)) - touched))
      idx = np.asarray(sorted(touched))
      for p in flat_b[kind]:
        np.testing.assert_array_equal(flat_a[kind][p][untouched], flat_b[kind][p][untouched], err_msg=str(p))
        if p == ("user_bias",):  # BPR's gradient of the user bias is zero (it cancels): it stays 0
          continue
        a_rows = flat_a[kind][p][idx].reshape(len(idx), -1)
        changed = np.any(a_rows != flat_b[kind][p][idx].reshape(len(idx), -1), axis=1)
        self.assertTrue(np.all(changed), str(p))


class HistoryTest(parameterized.TestCase):

  def test_b_last_and_neighbours_strictly_from_the_past(self):
    log = _data().log
    k, bs = 3, 16
    hist = history_lib.empty(log.num_users, log.num_items, k)
    observe = _observe
    users_all, items_all = log.user.astype(np.int32), log.item.astype(np.int32)
    for t, lo in enumerate(range(0, 400, bs)):
      b = blocks_lib.pad_rows({"user": users_all[lo:lo + bs], "positive": items_all[lo:lo + bs]}, bs)
      u, i, m = (jnp.asarray(b[x]) for x in ("user", "positive", "mask"))
      last = jax.tree.map(np.asarray, history_lib.b_last(hist, u, i, m))
      pu, pi = users_all[:lo], items_all[:lo]
      for j in range(bs):
        # Brute force: the user's last item and the item's last user among rows < lo.
        prev_items = pi[pu == b["user"][j]]
        prev_users = pu[pi == b["positive"][j]]
        self.assertEqual(bool(last["mask"][j]), len(prev_items) > 0)
        self.assertEqual(bool(last["mask"][bs + j]), len(prev_users) > 0)
        if len(prev_items):
          self.assertEqual(last["positive"][j], prev_items[-1])
        if len(prev_users):
          self.assertEqual(last["user"][bs + j], prev_users[-1])
      for node in set(b["user"].tolist()):
        ids, mask = history_lib.neighbours(hist.user_nbrs, hist.user_seen, jnp.asarray([node]))
        past = pi[pu == node]
        got = np.asarray(ids)[0][np.asarray(mask)[0]]
        self.assertEqual(len(got), min(len(past), k))
        self.assertTrue(set(got.tolist()) <= set(past.tolist()))
        if len(past) <= k:
          np.testing.assert_array_equal(got, past)
      hist = observe(hist, u, i, m, jax.random.PRNGKey(t))
    # Reservoirs are uniform: over many users with long pasts, every arrival position is kept about
    # equally often (not only the first k, not only the last k).
    seen = np.asarray(hist.user_seen)
    self.assertTrue(np.all(seen == np.bincount(users_all[:400], minlength=log.num_users)))


def _env(model="mf-bpr"):
  return strategies_lib.Env(model, _module(model), STRATEGY, _data())


class StrategyTest(parameterized.TestCase):

  def test_registered(self):
    for name in ("melon", "melon-authors", "melon-i", "melon-p", "melon-fo"):
      self.assertTrue(strategies_lib.get(name).jittable)

  def test_contract_and_no_recompile(self):
    env = _env()
    config = CONFIG
    learner = melon.make(env, config)
    blocks = [env.data.block(t) for t in range(2)]
    params = strategies_lib.init_params(env, jax.random.PRNGKey(0))
    learner_contract.check(self, learner, params, blocks, jit_update=True, jit_init=False)
    # Another seed, a new learner of the same configuration: nothing compiles again.
    learner2 = melon.make(env, config)
    before = learner_contract.compile_count()
    state = learner2.init(strategies_lib.init_params(env, jax.random.PRNGKey(1)), jax.random.PRNGKey(1))
    learner_lib.jit_update(learner2)(state, blocks[1], jax.random.PRNGKey(2))
    self.assertEqual(learner_contract.compile_count() - before, 0)

  def test_offline_pass_reads_only_the_prefix(self):
    env = _env()
    config = CONFIG
    data = env.data
    poisoned_examples = {k: v.copy() for k, v in data.examples.items()}
    for v in poisoned_examples.values():
      v[data.offline_end:] = v[data.offline_end:][::-1]
    poisoned = strategies_lib.Env(env.model, env.module, env.config,
                                  dataclasses.replace(data, examples=poisoned_examples))
    params = strategies_lib.init_params(env, jax.random.PRNGKey(0))
    a = melon.make(env, config).init(params, jax.random.PRNGKey(0))
    b = melon.make(poisoned, config).init(params, jax.random.PRNGKey(0))
    learner_contract.assert_trees_equal(self, a, b)
    # The recommender is served as given (meta-only offline pass); the meta-model has moved.
    learner_contract.assert_trees_equal(self, a.params, params)
    self.assertGreater(int(a.meta_opt[0].count), 0)

  def test_jitted_and_not_agree(self):
    env = _env()
    learner = melon.make(env, CONFIG)
    params = _params("mf-bpr")
    block = env.data.block(0)
    ref, m_ref = learner_lib.jit_update(learner)(learner.init(params, jax.random.PRNGKey(0)), block,
                                                 jax.random.PRNGKey(3))
    # Not jitted: the update called eagerly (its lax.scan over mini-batches is still staged; a fully
    # op-by-op run under jax.disable_jit takes minutes on two cores).
    out, m = learner.update(learner.init(params, jax.random.PRNGKey(0)), block, jax.random.PRNGKey(3))
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
      np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(m["meta_loss"], m_ref["meta_loss"], rtol=1e-5)

  def test_stream_loop_scores_before_update(self):
    """Every block is scored by the parameters of the state that has not consumed it."""
    env = _env()
    learner = melon.make(env, CONFIG)
    params = strategies_lib.init_params(env, jax.random.PRNGKey(0))
    state = learner.init(params, jax.random.PRNGKey(0))
    seen = []

    def evaluate_fn(p, t):
      seen.append(jax.tree.map(np.array, p))
      return {"x": 0.0}

    res = loop_lib.run(learner, state, env.data, evaluate_fn, rng=jax.random.PRNGKey(0))
    self.assertTrue(res.done)
    learner_contract.assert_trees_equal(self, seen[0], params)
    # Block 0's update did change the served parameters before block 1 was scored.
    self.assertFalse(all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(seen[0]),
                                                               jax.tree.leaves(seen[1]))))
