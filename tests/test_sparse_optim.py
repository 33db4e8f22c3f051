"""Row-sparse embedding optimizers (jaxrec.train.sparse) against dense and brute-force references."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import absltest

from jaxrec.methods import two_time_scale as tts
from jaxrec.models import mf, registry
from jaxrec.train import learner as learner_lib
from jaxrec.train import sparse
from tests import learner_contract

ROWS, DIM, N = 20, 3, 24


def _steps(num_steps, seed=0):
  """Ids with duplicates (a few hot rows) and masked slots whose ids look real: some point at rows no
  real slot ever touches (rows 15..19), so moving a masked row shows."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(num_steps):
    ids = rng.choice(15, N, p=np.r_[[0.3, 0.2], np.full(13, 0.5 / 13)]).astype(np.int32)
    mask = rng.random(N) < 0.75
    ids[~mask] = rng.integers(10, ROWS, (~mask).sum())
    grads = rng.normal(size=(N, DIM)).astype(np.float32)
    out.append((ids, grads, mask))
  return out


def _table(seed=1):
  return np.random.default_rng(seed).normal(size=(ROWS, DIM)).astype(np.float32)


def _summed(ids, grads, mask):
  g = np.zeros((ROWS, DIM), np.float64)
  np.add.at(g, ids[mask], grads[mask])
  touched = np.zeros(ROWS, bool)
  touched[ids[mask]] = True
  return g, touched


class RowOptimizersTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_rowwise_adagrad_equals_numpy_reference(self):
    lr, a0, eps = 0.1, 0.1, 1e-7
    opt = sparse.rowwise_adagrad(lr, a0, eps)
    update = self.variant(opt.update)
    table, state = jnp.asarray(_table()), opt.init(jnp.asarray(_table()))
    w, acc = _table().astype(np.float64), np.full(ROWS, a0)
    for ids, grads, mask in _steps(4):
      table, state = update(table, state, ids, grads, mask)
      g, touched = _summed(ids, grads, mask)
      acc = acc + touched * np.mean(g ** 2, axis=1)  # untouched rows: g = 0 (the dense rule)
      w = w - lr * g / np.sqrt(acc + eps)[:, None]
    np.testing.assert_allclose(table, w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state.sum_of_squares, acc, rtol=1e-5)
    np.testing.assert_array_equal(table[15:], _table()[15:])  # only masked slots pointed there

  @chex.variants(with_jit=True, without_jit=True)
  def test_adagrad_equals_dense_optax_adagrad(self):
    opt, dense = sparse.adagrad(0.1), optax.adagrad(0.1)
    update = self.variant(opt.update)
    table, state = jnp.asarray(_table()), opt.init(jnp.asarray(_table()))
    ref, ref_state = jnp.asarray(_table()), dense.init(jnp.asarray(_table()))
    for ids, grads, mask in _steps(4, seed=3):
      table, state = update(table, state, ids, grads, mask)
      g, _ = _summed(ids, grads, mask)
      u, ref_state = dense.update(jnp.asarray(g, jnp.float32), ref_state)
      ref = optax.apply_updates(ref, u)
    np.testing.assert_allclose(table, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.sum_of_squares, ref_state[0].sum_of_squares, rtol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_lazy_adam_is_adam_on_touched_rows_only(self):
    lr, b1, b2, eps = 0.05, 0.9, 0.999, 1e-8
    opt = sparse.lazy_adam(lr, b1, b2, eps)
    update = self.variant(opt.update)
    table, state = jnp.asarray(_table()), opt.init(jnp.asarray(_table()))
    w, m, v = _table().astype(np.float64), np.zeros((ROWS, DIM)), np.zeros((ROWS, DIM))
    ever = np.zeros(ROWS, bool)
    for t, (ids, grads, mask) in enumerate(_steps(5, seed=5), start=1):
      before = jax.device_get((table, state))
      table, state = update(table, state, ids, grads, mask)
      g, touched = _summed(ids, grads, mask)
      ever |= touched
      r = touched[:, None]
      m = np.where(r, b1 * m + (1 - b1) * g, m)
      v = np.where(r, b2 * v + (1 - b2) * g ** 2, v)
      w = np.where(r, w - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps), w)
      # This step's untouched rows and their moments are bit-identical to before the step.
      for new, old in ((table, before[0]), (state.mu, before[1].mu), (state.nu, before[1].nu)):
        np.testing.assert_array_equal(np.asarray(new)[~touched], old[~touched])
      # On the touched rows, one lazy step is one optax.adam step from the same moments.
      dense = optax.adam(lr, b1, b2, eps)
      st = dense.init(before[0])
      st = (st[0]._replace(count=before[1].count, mu=before[1].mu, nu=before[1].nu),) + tuple(st[1:])
      u, _ = dense.update(jnp.asarray(g, jnp.float32), st)
      np.testing.assert_allclose(np.asarray(table)[touched],
                                 np.asarray(optax.apply_updates(before[0], u))[touched], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(table, w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state.mu, m, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(state.nu, v, rtol=1e-5, atol=1e-9)
    np.testing.assert_array_equal(np.asarray(table)[~ever], _table()[~ever])
    self.assertEqual(int(state.count), 5)

  def test_lazy_adam_equals_dense_adam_when_every_row_is_touched(self):
    opt, dense = sparse.lazy_adam(0.05), optax.adam(0.05)
    table, state = jnp.asarray(_table()), opt.init(jnp.asarray(_table()))
    ref, ref_state = jnp.asarray(_table()), dense.init(jnp.asarray(_table()))
    rng = np.random.default_rng(0)
    for _ in range(4):
      ids = np.r_[rng.permutation(ROWS), rng.integers(0, ROWS, 4)].astype(np.int32)  # all rows + repeats
      grads = rng.normal(size=(ids.size, DIM)).astype(np.float32)
      table, state = opt.update(table, state, ids, grads, None)
      g = np.zeros((ROWS, DIM), np.float32)
      np.add.at(g, ids, grads)
      u, ref_state = dense.update(jnp.asarray(g), ref_state)
      ref = optax.apply_updates(ref, u)
    np.testing.assert_allclose(table, ref, rtol=1e-5, atol=1e-6)

  def test_second_call_does_not_recompile_and_step_is_sparse(self):
    big = 200_000
    opt = sparse.lazy_adam(0.01)
    update = jax.jit(opt.update, donate_argnums=(0, 1))
    table = jnp.zeros((big, 16))
    state = opt.init(table)
    for seed in range(2):
      ids, grads, mask = _steps(1, seed)[0]
      grads = np.tile(grads, (1, 6))[:, :16]
      if seed == 1:
        before = learner_contract.compile_count()
      table, state = update(table, state, ids, grads, mask)
    jax.block_until_ready(table)
    self.assertEqual(learner_contract.compile_count() - before, 0)
    # The compiled step needs no table-sized temporary (a dense gradient or a where over the table).
    mem = update.lower(table, state, ids, grads, mask).compile().memory_analysis()
    if mem is None:
      pytest.skip("no memory analysis on this backend")
    self.assertLess(mem.temp_size_in_bytes, big * 16 * 4 // 20)


def _mf_batches(num_users, num_items, steps, b=16, n=3, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(steps):
    mask = np.ones(b, bool)
    mask[-3:] = False  # padding rows with real-looking ids
    out.append({"user": rng.zipf(1.5, b).clip(1, num_users).astype(np.int32) - 1,
                "positive": rng.integers(0, num_items, b).astype(np.int32),
                "negatives": rng.integers(0, num_items, (b, n)).astype(np.int32), "mask": mask})
  return out


def _run(learner, params, batches):
  update = learner_lib.jit_update(learner)
  state = learner.init(params, jax.random.key(0))
  losses = []
  for i, batch in enumerate(batches):
    state, m = update(state, batch, jax.random.key(i))
    losses.append(float(m["loss"]))
  return learner.params(state), losses


class SparseLearnerTest(absltest.TestCase):

  def _mf(self, name="mf-bpr", **hp):
    spec = registry.get(name)
    module = spec.make(60, 40, dim=8, **hp)
    params = spec.init(jax.random.key(1), module, registry.sample_batch("user"))
    return spec, module, params

  def test_mf_bpr_matches_dense_rowwise_adagrad_and_learns(self):
    spec, module, params = self._mf()
    batches = _mf_batches(60, 40, 4) * 10  # epochs over 4 fixed batches: the training loss must fall
    lookups = sparse.RowLookups(**mf.row_lookups(module))
    sp, sp_losses = _run(sparse.row_sparse_learner(mf.compact_loss_fn(module, "bpr"), lookups,
                                                   sparse.rowwise_adagrad(0.5, 1e-4)), params, batches)
    dense = learner_lib.gradient_learner(spec.loss_fn(module), sparse.rowwise_adagrad_dense(0.5, 1e-4))
    dn, dn_losses = _run(dense, params, batches)
    chex.assert_trees_all_close(sp, dn, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sp_losses, dn_losses, rtol=1e-5)
    self.assertLess(np.mean(sp_losses[-4:]), 0.5 * np.mean(sp_losses[:4]))
    # Users of the padding rows only (never in a real row) keep their initial embeddings.
    real = np.unique(np.concatenate([b["user"][b["mask"]] for b in batches]))
    untouched = np.setdiff1d(np.arange(60), real)
    self.assertNotEmpty(untouched)
    np.testing.assert_array_equal(sp["params"]["user_emb"]["embedding"][untouched],
                                  params["params"]["user_emb"]["embedding"][untouched])

  def test_lazy_adam_moves_only_rows_real_ids_touch_on_small_and_large_tables(self):
    # 16 examples x (1 positive + 3 negatives) = 64 item slots: more than 40 items (the whole-table path
    # of row_sparse_learner), fewer than 100 (deduplicated by unique_rows). Step 2's real examples use
    # items 20+ only, its masked ones items < 20: lazy Adam must leave rows < 20 where step 1 put them
    # (their momentum would move them if they counted as touched).
    for num_items in (40, 100):
      spec = registry.get("mf-bpr")
      module = spec.make(60, num_items, dim=8)
      params = spec.init(jax.random.key(1), module, registry.sample_batch("user"))
      rng = np.random.default_rng(0)
      mask = np.arange(16) < 10
      first = {"user": rng.integers(0, 60, 16).astype(np.int32),
               "positive": rng.integers(0, 20, 16).astype(np.int32),
               "negatives": rng.integers(0, 20, (16, 3)).astype(np.int32), "mask": np.ones(16, bool)}
      second = {"user": rng.integers(0, 60, 16).astype(np.int32),
                "positive": np.where(mask, rng.integers(20, 40, 16), rng.integers(0, 20, 16)).astype(np.int32),
                "negatives": np.where(mask[:, None], rng.integers(20, 40, (16, 3)),
                                      rng.integers(0, 20, (16, 3))).astype(np.int32), "mask": mask}
      learner = sparse.row_sparse_learner(mf.compact_loss_fn(module, "bpr"),
                                          sparse.RowLookups(**mf.row_lookups(module)), sparse.lazy_adam(0.1))
      after1, _ = _run(learner, params, [first])
      after2, _ = _run(learner, params, [first, second])
      emb = lambda p: np.asarray(p["params"]["item_emb"]["embedding"])  # pylint: disable=unnecessary-lambda-assignment
      self.assertFalse(np.array_equal(emb(after1)[:20], emb(params)[:20]), num_items)
      np.testing.assert_array_equal(emb(after2)[:20], emb(after1)[:20], err_msg=str(num_items))
      self.assertFalse(np.array_equal(emb(after2)[20:40], emb(after1)[20:40]), num_items)

  def test_mf_log_with_biases_sparse_tables_and_dense_global_bias(self):
    spec, module, params = self._mf("mf-log")
    batches = _mf_batches(60, 40, 6, seed=2)
    lookups = sparse.RowLookups(**mf.row_lookups(module))
    learner = sparse.row_sparse_learner(mf.compact_loss_fn(module, "log"), lookups, sparse.adagrad(0.1),
                                        optax.adagrad(0.1))
    sp, _ = _run(learner, params, batches)
    dn, _ = _run(learner_lib.gradient_learner(spec.loss_fn(module), optax.adagrad(0.1)), params, batches)
    chex.assert_trees_all_close(sp, dn, rtol=1e-4, atol=1e-5)
    self.assertNotEqual(float(sp["params"]["global_bias"]), 0.0)
    learner_contract.check(self, learner, params, [jax.tree.map(jnp.asarray, b) for b in batches[:2]],
                           jit_init=False)

  def test_2ts_stage1_with_features_matches_dense_adagrad(self):
    cfg = tts.TwoTimeScaleConfig(variant="ccf", d_id=8, d_feat=4, feat_hidden=8, num_offered=5)
    num_users, num_items, feat_dim = 50, 30, 3
    params = tts.init_params(cfg, jax.random.key(0), num_users, num_items, feat_dim)
    feats = jnp.asarray(np.random.default_rng(0).normal(size=(num_items, feat_dim)), jnp.float32)
    rng = np.random.default_rng(1)
    batches = [{"user": rng.integers(0, num_users, 32).astype(np.int32),
                "item": rng.zipf(1.3, 32).clip(1, num_items).astype(np.int32) - 1, "item_features": feats}
               for _ in range(5)]
    sp, sp_losses = _run(tts.training.sparse_stage1_learner(cfg, "adagrad", 0.1, with_features=True,
                                                                dense_optimizer="sgd"),
                         params, batches)
    tx = optax.multi_transform({"t": optax.adagrad(0.1), "d": optax.sgd(0.1)},
                               lambda p: {k: jax.tree.map(lambda _, k=k: "d" if k == "feat_net" else "t", v)
                                          for k, v in p.items()})
    dn, dn_losses = _run(learner_lib.gradient_learner(tts.stage_loss_fn(cfg, params, "stage1"), tx),
                         params, batches)
    chex.assert_trees_all_close(sp, dn, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sp_losses, dn_losses, rtol=1e-5)

  def test_2ts_sparse_stage1_of_a_two_stage_variant_freezes_the_stage2_keys(self):
    for feat_dim in (0, 3):
      cfg = tts.TwoTimeScaleConfig(variant="2ts-plus", d_id=8, d_feat=4, feat_hidden=8, num_offered=5)
      params = tts.init_params(cfg, jax.random.key(0), 50, 30, feat_dim)
      rng = np.random.default_rng(1)
      extra = {"item_features": jnp.asarray(rng.normal(size=(30, feat_dim)), jnp.float32)} if feat_dim else {}
      batches = [{"user": rng.integers(0, 50, 16).astype(np.int32),
                  "item": rng.integers(0, 30, 16).astype(np.int32), **extra} for _ in range(2)]
      learner = tts.training.sparse_stage1_learner(cfg.static(), "rowwise-adagrad", 0.1,
                                                   with_features=bool(feat_dim))
      out, _ = _run(learner, params, batches)
      for k in params:
        moved = any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(out[k]), jax.tree.leaves(params[k])))
        self.assertEqual(moved, k in tts.STAGE1_KEYS, (feat_dim, k))

  def test_2ts_train_with_a_sparse_stage1_through_the_loop_resumes(self):
    import tempfile
    from jaxrec.data import datasets, splits
    log = splits.chronological(datasets.load_dataset("synthetic:tiny", seed=0)).train
    cfg = tts.TwoTimeScaleConfig(variant="ccf", d_id=8, d_feat=4, feat_hidden=8, epochs_stage1=2,
                                 batch_stage1=64, lr_stage1=0.01)
    ref = tts.train(cfg, log, stage1_optimizer="lazy-adam")
    losses = [h["loss"] for h in ref.history]
    self.assertLess(losses[-1], losses[0])
    with tempfile.TemporaryDirectory() as d:
      tts.train(cfg, log, stage1_optimizer="lazy-adam", workdir=d)
      again = tts.train(cfg, log, stage1_optimizer="lazy-adam", workdir=d)  # restored from its checkpoint
      chex.assert_trees_all_equal(again.params, ref.params)
    with self.assertRaisesRegex(ValueError, "stage1_optimizer must be one of"):
      tts.train(cfg, log, stage1_optimizer="adam")

  def test_bad_configuration_is_one_line(self):
    _, module, params = self._mf("mf-log")
    lookups = sparse.RowLookups(**mf.row_lookups(module))
    learner = sparse.row_sparse_learner(mf.compact_loss_fn(module, "log"), lookups, sparse.adagrad(0.1))
    with self.assertRaisesRegex(ValueError, "global_bias.*dense_tx"):
      learner.init(params, None)
    with self.assertRaisesRegex(ValueError, "unknown row-sparse optimizer"):
      sparse.get("sgd", 0.1)
    with self.assertRaisesRegex(ValueError, "group 'users'"):
      sparse.RowLookups(groups=(("user", ("user",)),), tables=(("params/user_emb/embedding", "users"),))


if __name__ == "__main__":
  absltest.main()
