"""Tests of jaxrec.methods.tp (paper 001): the alignment core against plain references, the adversary's
signs, the task batches, the TP protocol, the learner contract and an end-to-end run."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import tempfile

from absl.testing import absltest, parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrec.data import synthetic
from jaxrec.data.log import InteractionLog
from jaxrec.eval import paper_protocols as pp
from jaxrec.methods import tp
from jaxrec.methods.tp import adversary, alignment, tasks
from jaxrec.models import registry
from jaxrec.train import fit as fit_lib
from jaxrec.train import learner as learner_lib
from tests import learner_contract

L = 4
# The core tests use SumPooling (fast to compile); SASRec (with dropout) runs the contract and end to end.
HP = {"sumpool": {"dim": 8}, "sasrec": {"dim": 8, "max_len": L, "num_blocks": 1, "dropout": 0.1}}
CFG = tp.TPConfig(k=2, num_chains=3, support=4, history_len=L, num_negatives=2, alpha=0.5, lam=0.7,
                  dropout=False, epochs=1, patience=None, valid_negatives=20)
CFG_SASREC = dataclasses.replace(CFG, dropout=True, beta=1e-2, pretrain_lr=1e-2)


def _close(a, b, **kw):
  chex.assert_trees_all_close(jax.device_get(a), jax.device_get(b), **kw)


@functools.lru_cache(maxsize=None)
def _prepared():
  return pp.prepare(synthetic.generate("tiny", seed=0), pp.get("tp-user-holdout").replace(
      split_options={"new_fraction": 0.2, "valid_item": True, "min_item_count": 2, "min_user_count": 5}))


@functools.lru_cache(maxsize=None)
def _setup(model="sumpool"):
  prep = _prepared()
  train = prep.split.train
  _, module, params, length = tp.build(model, train.num_users, train.num_items, CFG, 0, HP[model])
  data = tasks.prepare(train, length, CFG.head_fraction)
  return module, params, data


def _batches(cfg=CFG, n=2, sampling="uniform", model="sumpool"):
  _, _, data = _setup(model)
  it = tasks.epoch_batches(data, num_chains=cfg.num_chains, k=cfg.k, support=cfg.support,
                           num_negatives=cfg.num_negatives, sampling=sampling, seed=0, epoch=0)
  return [jax.tree.map(jnp.asarray, b) for b, _ in zip(it, range(n))]


def _pair(cfg=CFG, model="sumpool"):
  module, params, _ = _setup(model)
  state = tp.tp_learner(module, cfg).init(params, jax.random.PRNGKey(3))
  return {"encoder": state.params, "disc": state.disc_params}


def _objective(cfg=CFG, model="sumpool"):
  module, _, _ = _setup(model)
  disc = adversary.Discriminator(hidden=cfg.disc_hidden)
  return adversary.inner_objective(module, disc, cfg.lam, cfg.dropout)


def _step(batch, c, i):
  keys = ("history", "history_mask", "user", "positive", "negatives", "mask", "head")
  return {k: batch[k][c, i] for k in keys}


def _rates(cfg=CFG):
  return {"encoder": cfg.alpha, "disc": cfg.disc_alpha or cfg.alpha}


def _reference_direction(objective, pair, batch, rng, rates, c):
  """Plain Python: k SGD steps of chain c (Eq. 6), then theta - theta_k."""
  theta = pair
  crng = jax.random.fold_in(rng, c)
  grad = jax.jit(jax.grad(lambda p, b, r: objective(p, b, r)[0]))
  for i in range(batch["mask"].shape[1]):
    g = grad(theta, _step(batch, c, i), jax.random.fold_in(crng, i))
    theta = {k: jax.tree.map(lambda p, u, a=rates[k]: p - a * u, theta[k], g[k]) for k in theta}
  return jax.tree.map(lambda a, b: a - b, pair, theta)


class AlignmentTest(parameterized.TestCase):

  def test_chains_are_plain_python_sgd_and_the_vmap_averages_them(self):
    """One chain: theta - theta_k of k plain SGD steps; C chains: the mean over the unmasked chains."""
    (batch,) = _batches(CFG, 1)
    pair, objective, rng = _pair(), _objective(), jax.random.PRNGKey(7)
    step_keys = list(_step(batch, 0, 0))
    direction = jax.jit(lambda p, b, r, m: alignment.outer_direction(
        objective, p, {k: b[k] for k in step_keys}, r, _rates(), m))
    # Chain c of the vmapped call is the single chain run on batch[c] with key fold_in(rng, c).
    single = [_reference_direction(objective, pair, batch, rng, _rates(), c) for c in (0, 2)]
    one, aux = direction(pair, batch, rng, jnp.array([True, False, False]))
    _close(one, single[0], atol=1e-6, rtol=1e-5)
    self.assertEqual(aux["loss"].shape, (3, CFG.k))
    self.assertGreater(float(optax.global_norm(one["encoder"])), 0)
    got, _ = direction(pair, batch, rng, jnp.array([True, False, True]))
    _close(got, jax.tree.map(lambda a, b: (a + b) / 2, *single), atol=1e-6, rtol=1e-5)

  @parameterized.parameters("sgd", "adam")
  def test_outer_step_is_eq7_through_the_optimizer(self, name):
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    theta_k = {"w": jnp.array([0.5, -1.0, 3.5])}
    direction = jax.tree.map(lambda a, b: a - b, params, theta_k)  # theta - theta_k
    tx = tp.outer_optimizer(name, 0.1)
    new, _ = alignment.outer_step(tx, params, direction, tx.init(params))
    if name == "sgd":  # Eq. 7: theta + beta (theta_k - theta): toward theta_k (Algorithm 1 prints away)
      _close(new, {"w": params["w"] + 0.1 * (theta_k["w"] - params["w"])})
    else:  # Adam's first step moves each coordinate by beta toward theta_k
      _close(new, {"w": params["w"] - 0.1 * jnp.sign(direction["w"])}, atol=1e-6)

  def test_two_step_chains_in_both_orders_follow_the_gradient_of_eq8_on_a_quadratic(self):
    """For quadratics, mean over the two task orders of theta - theta_2 = alpha grad Eq. 8 exactly."""
    rng = np.random.default_rng(0)
    d, alpha = 5, 0.3
    mats = []
    for _ in range(2):
      m = rng.normal(size=(d, d))
      mats.append(m @ m.T / d + np.eye(d))
    centres = rng.normal(size=(2, d))
    a, c = jnp.asarray(np.stack(mats), jnp.float32), jnp.asarray(centres, jnp.float32)

    def loss(theta, i):
      r = theta - c[i]
      return 0.5 * r @ a[i] @ r

    def objective(theta, batch, rng_):
      r = theta - batch["c"]
      return 0.5 * r @ batch["a"] @ r, {}

    order = jnp.array([[0, 1], [1, 0]])  # chain 0: D_1 then D_2; chain 1: D_2 then D_1
    batches = {"a": a[order], "c": c[order]}
    theta = jnp.asarray(rng.normal(size=d), jnp.float32)
    direction = jax.jit(lambda th, b: alignment.outer_direction(objective, th, b, jax.random.PRNGKey(0),
                                                                 alpha)[0])
    got = direction(theta, batches)

    def eq8(th):  # sum_i L_i - (alpha/2) sum_{j<i} g_i . g_j, for k = 2 (one pair)
      g = [jax.grad(loss)(th, i) for i in range(2)]
      return loss(th, 0) + loss(th, 1) - 0.5 * alpha * g[1] @ g[0]

    want = alpha * jax.jit(jax.grad(eq8))(theta)
    _close(got, want, rtol=1e-5, atol=1e-6)
    # One order alone differs from it by the asymmetric second-order term (Eq. 8 is the average).
    one = direction(theta, jax.tree.map(lambda x: x[:1], batches))
    self.assertGreater(float(jnp.abs(one - want).max()), 1e-4)


class AdversaryTest(absltest.TestCase):

  def test_gradients_encoder_maximises_discriminator_loss_with_weight_lambda(self):
    module, _, _ = _setup()
    disc = adversary.Discriminator(hidden=CFG.disc_hidden)
    (batch,) = _batches(CFG, 1)
    b = _step(batch, 0, 0)
    pair, lam = _pair(), CFG.lam
    rng = jax.random.PRNGKey(0)

    def parts(enc, dp):
      cands = jnp.concatenate([b["positive"][:, None], b["negatives"]], axis=1)
      phi, scores = module.apply(enc, b["history"], b["history_mask"], b["user"], cands, True,
                                 method=adversary.encode_and_score)
      rec = registry.get("sumpool").loss_fn(module, "log")(
          enc, {"history": b["history"], "history_mask": b["history_mask"], "user": b["user"],
                "positive": b["positive"], "negatives": b["negatives"], "mask": b["mask"]}, None)[0]
      del scores
      return rec, adversary.discriminator_bce(disc.apply(dp, phi), b["head"], b["mask"])

    @jax.jit
    def grads(pair):
      g = jax.grad(lambda p: adversary.inner_objective(module, disc, lam, False)(p, b, rng)[0])(pair)
      g0 = jax.grad(lambda p: adversary.inner_objective(module, disc, 0.0, False)(p, b, rng)[0])(pair)
      g_rec = jax.grad(lambda e: parts(e, pair["disc"])[0])(pair["encoder"])
      g_adv = jax.grad(lambda e: parts(e, pair["disc"])[1])(pair["encoder"])
      g_disc = jax.grad(lambda dp: parts(pair["encoder"], dp)[1])(pair["disc"])
      return g, g0, g_rec, g_adv, g_disc

    g, g0, g_rec, g_adv, g_disc = grads(pair)
    _close(g["encoder"], jax.tree.map(lambda r, a: r - lam * a, g_rec, g_adv), atol=1e-6, rtol=1e-5)
    _close(g["disc"], g_disc, atol=1e-6, rtol=1e-5)
    # Behaviour: a small encoder step along its adversarial part raises l_d, a discriminator step lowers it.
    bce_fn = jax.jit(lambda e, dp: parts(e, dp)[1])
    bce = lambda e, dp: float(bce_fn(e, dp))
    before = bce(pair["encoder"], pair["disc"])
    enc = jax.tree.map(lambda p, a: p + 1e-2 * a, pair["encoder"], g_adv)  # = -(step on -lam*l_d)/lam
    dsc = jax.tree.map(lambda p, a: p - 1e-1 * a, pair["disc"], g_disc)
    self.assertGreater(bce(enc, pair["disc"]), before)
    self.assertLess(bce(pair["encoder"], dsc), before)
    # lambda = 0: the encoder's gradient is the plain registry loss's.
    _close(g0["encoder"], g_rec, atol=1e-6, rtol=1e-5)

  def test_discriminator_bce_matches_numpy(self):
    logits = jnp.array([2.0, -1.0, 0.0, 3.0])
    head = jnp.array([True, False, True, True])
    mask = jnp.array([True, True, True, False])
    p = 1 / (1 + np.exp(-np.asarray(logits)))
    want = -np.mean([np.log(p[0]), np.log(1 - p[1]), np.log(p[2])])
    self.assertAlmostEqual(float(adversary.discriminator_bce(logits, head, mask)), want, places=5)


class LearnerTest(parameterized.TestCase):

  def test_k1_lambda0_is_plain_joint_training(self):
    """k = 1, lambda = 0: the outer Adam step is plain Adam training on the chains' mini-batches."""
    cfg = dataclasses.replace(CFG, k=1, lam=0.0, outer_optimizer="adam", alpha=0.25, beta=0.01)
    module, params, data = _setup()
    batch = next(tasks.epoch_batches(data, num_chains=cfg.num_chains, k=1, support=cfg.support,
                                     num_negatives=cfg.num_negatives, sampling="all", seed=1, epoch=0))
    batch["mask"][:] = True  # full mini-batches, so the mean of the chains' means is the batch mean
    batch = jax.tree.map(jnp.asarray, batch)
    learner = tp.tp_learner(module, cfg)
    state, _ = jax.jit(learner.update)(learner.init(params, jax.random.PRNGKey(0)), batch,
                                       jax.random.PRNGKey(1))
    flat = {k: batch[k][:, 0].reshape((-1,) + batch[k].shape[3:])
            for k in ("history", "history_mask", "user", "positive", "negatives", "mask")}
    # Adam on alpha * g with eps equals Adam on g with eps / alpha.
    tx = optax.adam(cfg.beta, eps=cfg.adam_eps / cfg.alpha)
    loss = registry.get("sumpool").loss_fn(module, "log")
    plain = learner_lib.gradient_learner(lambda p, b, r: loss(p, b, None), tx)
    ref, _ = jax.jit(plain.update)(plain.init(params, None), flat, None)
    _close(learner.params(state), ref.params, atol=1e-6, rtol=1e-4)

  def test_learner_contract_checkpoint_and_no_recompile(self):
    module, params, _ = _setup()
    learner = tp.tp_learner(module, CFG)
    learner_contract.check(self, learner, params, _batches(CFG, 2), jit_update=True)
    # Another seed / budget: the same learner object, so the same compiled update.
    self.assertIs(tp.tp_learner(module, dataclasses.replace(CFG, epochs=7, patience=2)), learner)

  @chex.variants(with_jit=True, without_jit=True)
  def test_update_jit_and_no_jit_agree(self):
    module, params, _ = _setup()
    learner = tp.tp_learner(module, CFG)
    (batch,) = _batches(CFG, 1)
    state = learner.init(params, jax.random.PRNGKey(0))
    new, metrics = self.variant(learner.update)(state, batch, jax.random.PRNGKey(2))
    fresh = jax.tree.map(jnp.copy, params)  # the jitted update donates its state
    ref, ref_metrics = learner_lib.jit_update(learner)(learner.init(fresh, jax.random.PRNGKey(0)), batch,
                                                       jax.random.PRNGKey(2))
    _close(new, ref, atol=1e-6, rtol=1e-5)
    _close(metrics, ref_metrics, atol=1e-6, rtol=1e-5)


class TasksTest(parameterized.TestCase):

  def test_head_users_follow_the_20_percent_rule_with_ties(self):
    counts = np.array([5, 9, 9, 1, 0, 3, 9, 2, 2, 4, 7])  # user 4 has no training row
    user = np.repeat(np.arange(counts.size), counts)
    log = InteractionLog(user=user.astype(np.int32), item=np.zeros(user.size, np.int32),
                         timestamp=np.arange(user.size, dtype=np.int64), num_users=counts.size, num_items=3)
    head = tasks.head_users(log, 0.2)
    self.assertEqual(head.sum(), 2)  # ceil(0.2 * 10 users with rows)
    np.testing.assert_array_equal(np.flatnonzero(head), [1, 2])  # three tied at 9: smaller ids first
    self.assertGreaterEqual(counts[head].min(), counts[~head].max())

  @parameterized.parameters("uniform", "all")
  def test_epoch_batches_cover_tasks_of_one_user_each(self, sampling):
    _, _, data = _setup()
    out = list(tasks.epoch_batches(data, num_chains=3, k=2, support=4, num_negatives=2, sampling=sampling,
                                   seed=0, epoch=0))
    self.assertEqual(len(out), tasks.steps_per_epoch(data, 3, 2, 4, sampling))
    shapes = {jax.tree.map(np.shape, b)["history"] for b in out}
    self.assertEqual(shapes, {(3, 2, 4, data.history_len)})
    user = np.concatenate([b["user"].reshape(-1, 4) for b in out])
    mask = np.concatenate([b["mask"].reshape(-1, 4) for b in out])
    real = mask.any(axis=1)
    self.assertEqual(real.sum(), tasks.num_tasks(data, 4, sampling))
    for u, m in zip(user[real], mask[real]):  # one user per task
      self.assertEqual(np.unique(u[m]).size, 1)
    head = np.concatenate([b["head"].reshape(-1, 4) for b in out])
    np.testing.assert_array_equal(head[mask], data.head[user[mask]])
    neg = np.concatenate([b["negatives"].reshape(-1, 4, 2) for b in out])
    indptr, items = data.known
    for u, ns in zip(user[mask][:50], neg[mask][:50]):  # negatives are never the user's training items
      self.assertFalse(np.isin(ns, items[indptr[u]:indptr[u + 1]]).any())
    task_users = user[real][:, 0]
    if sampling == "uniform":  # every training user once
      np.testing.assert_array_equal(np.sort(task_users), data.users)
    else:  # every subsequence once: as many targets as windows
      self.assertEqual(mask.sum(), data.rows.size)
    again = next(tasks.epoch_batches(data, num_chains=3, k=2, support=4, num_negatives=2, sampling=sampling,
                                     seed=0, epoch=0))
    chex.assert_trees_all_equal(again, out[0])


class ProtocolTest(absltest.TestCase):

  def test_tp_protocol_new_users_never_train_and_last_items_are_tested(self):
    log = synthetic.generate("small", seed=0)
    p = pp.prepare(log, pp.get("tp-user-holdout").with_seed(2))
    sp, info = p.split, p.split.info
    new = info["new_users"]
    self.assertAlmostEqual(new.size / (new.size + info["existing_users"].size), 0.2, places=2)
    self.assertFalse(np.isin(sp.train.user, new).any())
    self.assertFalse(np.isin(sp.valid.user, new).any())
    self.assertTrue(np.isin(info["test_context"].user, new).all())
    # Filters: items < 5 first, then users < 10 (one pass each).
    every = sp.train.concat(sp.valid).concat(info["test_context"]).concat(sp.test)
    counts = every.user_counts()
    self.assertGreaterEqual(counts[counts > 0].min(), 10)
    # One test row per user, its most recent one; known items exclude the context (never the positive).
    self.assertEqual(np.unique(sp.test.user).size, len(sp.test))
    for u, t in zip(sp.test.user[:30], sp.test.timestamp[:30]):
      self.assertGreaterEqual(t, max(every.timestamp[every.user == u]))
    self.assertFalse(p.test_queries.positive_is_known().any())
    q = p.test_queries
    u0 = int(new[0])
    known = q.known_items[q.known_indptr[u0]:q.known_indptr[u0 + 1]]
    ctx = info["test_context"]
    np.testing.assert_array_equal(known, np.unique(ctx.item[ctx.user == u0]))
    # New users' queries see their context as history.
    spec = registry.get("sasrec")
    feats = fit_lib.query_features(spec, [sp.train, sp.valid, ctx, sp.test], 3, 50)
    row = int(np.flatnonzero(sp.test.user == u0)[0])
    hist = feats["history"][row][feats["history_mask"][row]]
    self.assertEqual(set(hist.tolist()), set(ctx.item[ctx.user == u0].tolist()[-50:]))
    self.assertEqual(set(p.rankings()), {"full", "sampled100"})


class TrainTest(absltest.TestCase):

  def test_end_to_end_pretrain_then_tp_through_the_stage_runner(self):
    prep = _prepared()
    sp = prep.split
    spec = registry.get("sumpool")
    valid_q = dataclasses.replace(prep.valid_queries, features=fit_lib.query_features(
        spec, [sp.train, sp.valid], 1, L))
    # The same static config and shapes as the contract test: the compiled TP update is reused.
    cfg = dataclasses.replace(CFG, epochs=2, pretrain_epochs=1)
    res = tp.train(cfg, "sumpool", sp.train, valid_queries=valid_q, hparams=HP["sumpool"])
    self.assertEqual(set(res.histories), {"pretrain", "tp"})
    evals = [r for r in res.histories["tp"] if r["kind"] == "eval"]
    self.assertLen(evals, 2)
    self.assertLen(res.epoch_seconds["tp"], 2)
    pre = [r for r in res.histories["pretrain"] if r["kind"] == "eval"]
    self.assertLen(pre, 1)
    self.assertTrue(all(np.isfinite(r["valid/NDCG@10"]) for r in evals + pre))
    train_recs = [r for r in res.histories["tp"] if r["kind"] == "train"]
    self.assertTrue(all(0 <= r["disc_acc"] <= 1 for r in train_recs))
    # The served params are the encoder's, scored by the registry's ScoreFn.
    scores = res.score_fn(res.params, {k: jnp.asarray(v[:2]) for k, v in valid_q.features.items()},
                          jnp.arange(5))
    self.assertEqual(scores.shape, (2, 5))


class ExperimentTest(absltest.TestCase):

  def test_binary_rows_segments_sweep_and_figures(self):
    from experiments import registry as exp_registry  # pylint: disable=import-outside-toplevel
    from experiments import tp as exp  # pylint: disable=import-outside-toplevel
    # SumPooling and CFG's static config: the compiled updates of the tests above are reused.
    opts = exp.Options(encoders=("sumpool",), dim=8, tp=dataclasses.replace(CFG, epochs=1), plain_epochs=1,
                       sweep_k=(2,), sweep_encoder="sumpool", ks=(5, 10))
    with tempfile.TemporaryDirectory() as d:
      results, figs = exp.run_all(["synthetic:tiny"], opts, d, log=lambda m: None)
      with open(os.path.join(d, "results.json"), encoding="utf-8") as f:
        saved = json.load(f)
      self.assertTrue(all(os.path.exists(p) for p in figs))
    self.assertEqual([r["method"] for r in saved["rows"]], ["SumPooling", "SumPooling-TP"])
    row = results["rows"][1]
    for col in ("full HR@10", "sampled68 NDCG@10", "full new NDCG@10", "full existing/tail NDCG@10",
                "epoch s", "subseq/s"):
      self.assertIn(col, row)
    self.assertIn("python -m experiments.tp --dataset=synthetic:tiny", row["command"])
    self.assertIn("--config.encoders=", row["command"])
    self.assertIn("sampled68 NDCG@10", exp.tables(results)[0].columns)  # 100 capped: tiny has 100 items
    ev = results["datasets"]["synthetic:tiny"]["per_seed"][0][1]["eval"]["full"]
    seg = ev["segments"]
    self.assertEqual(seg["existing"]["count"] + seg["new"]["count"], ev["summary"]["num_queries"])
    self.assertEqual(seg["new/head"]["count"] + seg["new/tail"]["count"], seg["new"]["count"])
    self.assertLen(results["datasets"]["synthetic:tiny"]["sweeps"]["k"], 1)
    self.assertLen(exp.tables(results), 3)
    self.assertIsInstance(exp.EXPERIMENT, exp_registry.Experiment)
    self.assertIn("quick", exp.EXPERIMENT.suites)
    with self.assertRaisesRegex(fit_lib.ConfigError, "encoders"):
      exp.Options(encoders=("mf-bpr",))
    with self.assertRaisesRegex(fit_lib.ConfigError, "k must be >= 1"):
      tp.TPConfig(k=0)


class GroupLabelsTest(absltest.TestCase):

  def test_head_is_the_top_fifth_within_each_group_ties_by_user_index(self):
    rng = np.random.default_rng(0)
    n = 500
    counts = np.minimum(rng.zipf(1.6, n), 300)  # long-tailed, many ties
    counts[rng.random(n) < 0.1] = 0             # users with no interaction before the test item
    new = rng.random(n) < 0.3
    labels = tp.group_labels(counts, new)
    for group, mask in (("existing", ~new), ("new", new)):
      active = [u for u in range(n) if mask[u] and counts[u] > 0]
      ranked = sorted(active, key=lambda u: (-counts[u], u))
      head = set(ranked[:int(np.ceil(0.2 * len(active)))])
      expected = [f"{group}/{'head' if u in head else 'tail'}" for u in range(n) if mask[u]]
      self.assertEqual(labels[mask].tolist(), expected)
    self.assertEqual(set(labels), {f"{g}/{x}" for g in ("existing", "new") for x in ("head", "tail")})


if __name__ == "__main__":
  absltest.main()
