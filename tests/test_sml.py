"""SML (paper 003): transfer network (Eq. 4-7), Step 1 / Step 2 (Eq. 8-11), strategy, evaluation."""

from __future__ import annotations

import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.data import splits
from jaxrec.methods import sml
from jaxrec.methods.sml import evaluate as sml_eval
from jaxrec.methods.sml import protocol as protocol_lib
from jaxrec.methods.sml import steps, transfer
from jaxrec.models import registry
from jaxrec.stream import blocks as blocks_lib
from jaxrec.stream import loop as loop_lib
from jaxrec.stream import strategies as strategies_lib
from jaxrec.train import learner as learner_lib
from jaxrec.train.fit import ConfigError

D = 8
SMALL = dict(filters=(3, 2), hidden=16)


def _tcfg(**kw):
  return transfer.TransferConfig(dim=D, **{**SMALL, **kw})


_apply_rows = jax.jit(transfer.apply_rows, static_argnums=3)


# -- transfer network -------------------------------------------------------------------------------


def _gelu_ref(x, kind):
  if kind == "sigmoid":
    return x / (1.0 + math.exp(-1.702 * x))
  if kind == "tanh":
    return 0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
  return 0.5 * x * (1 + math.erf(x / math.sqrt(2)))


def _transfer_ref(theta, w_prev, w_hat, cfg):
  """Eq. 4-7 written with explicit loops over filters, columns and units (float64)."""
  th = {k: np.asarray(v, np.float64) for k, v in theta.items()}
  d = len(w_prev)
  norm = math.sqrt(sum(float(x) ** 2 for x in w_prev))
  h0 = [list(map(float, w_prev)), list(map(float, w_hat)),
        [float(w_prev[m]) * float(w_hat[m]) / (norm + cfg.eps) for m in range(d)]]
  g = lambda x: _gelu_ref(x, cfg.gelu)  # noqa: E731
  if cfg.cnn:
    n1, n2 = cfg.filters
    h1 = [[g(sum(th["F1"][j, r] * h0[r][m] for r in range(3)) + th["c1"][j]) for m in range(d)]
          for j in range(n1)]
    h2 = [[g(sum(th["F2"][j, r] * h1[r][m] for r in range(n1)) + th["c2"][j]) for m in range(d)]
          for j in range(n2)]
    flat = [h2[c][m] for c in range(n2) for m in range(d)]  # channel-major
  else:
    flat = [h0[c][m] for c in range(3) for m in range(d)]
  if cfg.fc:
    z = [g(sum(th["Wf"][i, u] * flat[i] for i in range(len(flat))) + th["b1"][u])
         for u in range(cfg.hidden)]
  else:
    z = flat
  return np.array([sum(th["Wo"][u, o] * z[u] for u in range(len(z))) + th["b2"][o] for o in range(d)])


@pytest.mark.parametrize("kw", [dict(), dict(gelu="sigmoid", eps=0.0), dict(gelu="tanh"),
                                dict(cnn=False), dict(fc=False)])
def test_transfer_matches_hand_written_eq_4_to_7(kw):
  cfg = _tcfg(**kw)
  theta = transfer.init(jax.random.PRNGKey(0), cfg)
  rng = np.random.default_rng(1)
  prev = rng.normal(size=(3, D)).astype(np.float32)
  hat = prev + 0.3 * rng.normal(size=(3, D)).astype(np.float32)
  hat[2] = prev[2]  # a row whose w_hat equals w_prev (an untouched row)
  out = _apply_rows(theta, jnp.asarray(prev), jnp.asarray(hat), cfg)
  chex.assert_shape(out, (3, D))
  for r in range(3):
    np.testing.assert_allclose(np.asarray(out[r]), _transfer_ref(theta, prev[r], hat[r], cfg),
                               rtol=2e-4, atol=2e-5)


def test_transfer_parameter_shapes_and_ablations():
  n1, n2 = SMALL["filters"]
  full = transfer.init(jax.random.PRNGKey(0), _tcfg())
  chex.assert_trees_all_equal_shapes(full, {
      "F1": jnp.zeros((n1, 3)), "c1": jnp.zeros(n1), "F2": jnp.zeros((n2, n1)), "c2": jnp.zeros(n2),
      "Wf": jnp.zeros((n2 * D, 16)), "b1": jnp.zeros(16), "Wo": jnp.zeros((16, D)), "b2": jnp.zeros(D)})
  assert set(transfer.init(jax.random.PRNGKey(0), _tcfg(cnn=False))) == {"Wf", "b1", "Wo", "b2"}
  assert transfer.init(jax.random.PRNGKey(0), _tcfg(cnn=False))["Wf"].shape == (3 * D, 16)
  assert transfer.init(jax.random.PRNGKey(0), _tcfg(fc=False))["Wo"].shape == (n2 * D, D)
  with pytest.raises(ConfigError, match="cnn"):
    _tcfg(cnn=False, fc=False)
  with pytest.raises(ConfigError, match="gelu"):
    _tcfg(gelu="relu")


def test_detach_hat_only_changes_the_gradient_through_the_product_row():
  cfg, cfg_d = _tcfg(), _tcfg(detach_hat=True)
  theta = transfer.init(jax.random.PRNGKey(0), cfg)
  prev = jax.random.normal(jax.random.PRNGKey(1), (D,))
  hat = jax.random.normal(jax.random.PRNGKey(2), (D,))
  f = lambda c: lambda h: jnp.sum(transfer.apply_row(theta, prev, h, c) ** 2)  # noqa: E731
  np.testing.assert_allclose(jax.jit(f(cfg))(hat), jax.jit(f(cfg_d))(hat), rtol=1e-6)
  g, g_d = jax.jit(jax.grad(f(cfg)))(hat), jax.jit(jax.grad(f(cfg_d)))(hat)
  assert not np.allclose(g, g_d)
  # the detached gradient is the one with the product row's w_hat held at its value
  dot = prev * hat / (jnp.linalg.norm(prev) + cfg.eps)
  def frozen(h):
    x = jnp.stack([prev, h, dot])
    x = transfer.gelu(theta["F1"] @ x + theta["c1"][:, None], "erf")
    x = transfer.gelu(theta["F2"] @ x + theta["c2"][:, None], "erf").reshape(-1)
    x = transfer.gelu(x @ theta["Wf"] + theta["b1"], "erf")
    return jnp.sum((x @ theta["Wo"] + theta["b2"]) ** 2)
  np.testing.assert_allclose(g_d, jax.jit(jax.grad(frozen))(hat), rtol=1e-5, atol=1e-6)


# -- steps ------------------------------------------------------------------------------------------


def _tables(seed, users=6, items=7):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  return {"user": 0.3 * jax.random.normal(k1, (users, D)), "item": 0.3 * jax.random.normal(k2, (items, D))}


def _batch():
  # ties and duplicates: user 1 twice, item 2 as positive and as a negative, a padded row
  return {"user": jnp.array([1, 1, 3, 0], jnp.int32), "positive": jnp.array([2, 4, 2, 0], jnp.int32),
          "negatives": jnp.array([[5], [2], [6], [1]], jnp.int32), "mask": jnp.array([1, 1, 1, 0], bool)}


def _theta(cfg, seed=3):
  ku, ki = jax.random.split(jax.random.PRNGKey(seed))
  return {"user": transfer.init(ku, cfg), "item": transfer.init(ki, cfg)}


def test_step2_is_first_order():
  """Eq. 11: Step 2's gradient is the gradient with W_hat frozen, and differs from the second-order one
  (differentiating through a Step-1 update of W_hat that depends on Theta)."""
  cfg = _tcfg()
  # scaled up so that the transfer is sensitive to w_hat and the second-order term is visible
  theta = jax.tree.map(lambda x: 3.0 * x, _theta(cfg))
  prev, hat0 = (jax.tree.map(lambda x: 5.0 * x, _tables(s)) for s in (0, 1))
  batch_t = _batch()
  batch_next = dict(_batch(), user=jnp.array([2, 4, 1, 0], jnp.int32))

  def step1_sgd(th):  # one plain SGD Step 1 on D_t, as a function of Theta
    g = jax.grad(steps.step1_loss)(hat0, prev, th, batch_t, cfg, 0.0)
    return jax.tree.map(lambda h, gi: h - 1.0 * gi, hat0, g)

  @jax.jit
  def grads(th):
    hat1 = step1_sgd(th)
    first = jax.grad(lambda t: steps.step2_loss(t, prev, step1_sgd(t), batch_next, cfg))(th)
    frozen = jax.grad(lambda t: steps.mf_log_loss(t, prev, jax.lax.stop_gradient(hat1), batch_next, cfg))(th)
    second = jax.grad(lambda t: steps.mf_log_loss(t, prev, step1_sgd(t), batch_next, cfg))(th)
    g_hat = jax.grad(lambda h: steps.step2_loss(th, prev, h, batch_next, cfg))(hat1)
    return first, frozen, second, g_hat

  first, frozen, second, g_hat = grads(theta)
  chex.assert_trees_all_close(first, frozen, rtol=1e-5, atol=1e-6)
  size = max(float(jnp.abs(a).max()) for a in jax.tree.leaves(first))
  diff = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second)))
  assert diff > 1e-2 * size
  assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(g_hat))  # W_hat is a constant


def test_step1_gradient_matches_finite_differences_and_eq_9():
  cfg = _tcfg()
  theta, prev, hat, batch = _theta(cfg), _tables(0), _tables(1), _batch()
  l2 = 0.1
  loss = jax.jit(lambda h: steps.step1_loss(h, prev, theta, batch, cfg, l2))
  g = jax.jit(jax.grad(loss))(hat)
  # Eq. 9: dL0/dx . df/dhat + l2 term (here: the mean over real rows of the batch rows' squared norms)
  eps = 1e-3
  for group, row, col in [("user", 1, 0), ("item", 2, 3), ("user", 3, 5)]:
    e = jnp.zeros_like(hat[group]).at[row, col].set(eps)
    fd = (loss(dict(hat, **{group: hat[group] + e})) - loss(dict(hat, **{group: hat[group] - e}))) / (2 * eps)
    np.testing.assert_allclose(float(g[group][row, col]), float(fd), rtol=2e-2, atol=2e-4)
  # rows the batch does not read get no gradient (user 5, items 0 only in a padded row, 3)
  assert float(jnp.abs(g["user"][5]).max()) == 0.0
  assert float(jnp.abs(g["item"][3]).max()) == 0.0


def test_transfer_untouched_false_keeps_rows_step1_never_moved():
  cfg = _tcfg()
  theta, prev = _theta(cfg), _tables(0)
  hat = dict(prev, user=prev["user"].at[2].add(0.1))  # only user 2 moved
  fn = jax.jit(steps.transfer_tables, static_argnums=(3, 4))
  keep, every = fn(theta, prev, hat, cfg, False), fn(theta, prev, hat, cfg, True)
  others = np.arange(6) != 2
  np.testing.assert_array_equal(np.asarray(keep["user"])[others], np.asarray(prev["user"])[others])
  np.testing.assert_array_equal(keep["item"], prev["item"])
  np.testing.assert_allclose(keep["user"][2], every["user"][2])
  assert not np.allclose(every["user"][0], prev["user"][0])  # the paper's default transfers every row


class StepVariantsTest(chex.TestCase):
  """Step 1 and Step 2 under jit and without it agree with a direct call."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_step1_moves_only_touched_rows(self):
    cfg = _tcfg()
    theta, prev, batch = _theta(cfg), _tables(0), _batch()
    hat = jax.tree.map(jnp.copy, prev)
    opt = steps.lazy_adam_init(hat)
    step = lambda h, o, b: steps.step1(h, o, prev, theta, b, tconfig=cfg, lr=0.01, l2=1e-3)  # noqa: E731
    new, opt2, loss = self.variant(step)(hat, opt, batch)
    ref, _, ref_loss = step(hat, opt, batch)
    chex.assert_trees_all_close(new, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    touched_u, touched_i = {1, 3}, {2, 4, 5, 6}  # user 0 / item 1 only in the padded row
    for u in range(6):
      same = np.array_equal(np.asarray(new["user"][u]), np.asarray(prev["user"][u]))
      assert same == (u not in touched_u), u
      assert np.array_equal(np.asarray(opt2.mu["user"][u]), np.zeros(D)) == (u not in touched_u)
    for i in range(7):
      assert np.array_equal(np.asarray(new["item"][i]), np.asarray(prev["item"][i])) == (i not in touched_i)

  @chex.variants(with_jit=True, without_jit=True)
  def test_step2_decreases_the_loss(self):
    cfg = _tcfg()
    theta, prev, hat, batch = _theta(cfg), _tables(0), _tables(1), _batch()
    tx = sml.strategy.step2_tx(sml.SMLConfig(step2_lr=1e-2))
    opt = tx.init(theta)
    step = lambda th, o: steps.step2(th, o, prev, hat, batch, tconfig=cfg, tx=tx)  # noqa: E731
    fn = self.variant(step)
    th1, _, _ = fn(theta, opt)
    chex.assert_trees_all_close(th1, step(theta, opt)[0], rtol=1e-5, atol=1e-6)
    th, o = theta, opt
    for _ in range(5):
      th, o, _ = fn(th, o)
    loss = jax.jit(steps.step2_loss, static_argnums=4)
    assert float(loss(th, prev, hat, batch, cfg)) < float(loss(theta, prev, hat, batch, cfg))


# -- the strategy in the stream loop -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_stream():
  from jaxrec.data import datasets
  log = datasets.load_dataset("synthetic:tiny", seed=0)
  pb = protocol_lib.make_blocks(log, protocol_lib.PeriodProtocol(8, "count", 3, 1, 2), pad_multiple=64)
  module = registry.get("mf-log").make(log.num_users, log.num_items, dim=D, use_bias=False)
  env = strategies_lib.Env("mf-log", module, strategies_lib.StrategyConfig(batch_size=64), pb.data)
  params = strategies_lib.init_params(env, jax.random.PRNGKey(0))
  return pb, module, params


def _cfg(**kw):
  return sml.SMLConfig(**{"reps": 2, "step1_batch": 64, "step2_batch": 64, **SMALL, **kw})


def _checksum(params):
  return float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(params)))


def test_no_period_is_scored_by_a_model_that_trained_on_it(tiny_stream):
  """The parameters that score block t are the same whatever block t (and later blocks) contain."""
  pb, module, params = tiny_stream
  data = pb.data
  learner = sml.learner(_cfg(), module, data.block_size)

  def scored(d):
    seen = {}
    loop_lib.run(learner, learner.init(params, jax.random.PRNGKey(1)), d,
                 lambda p, t: seen.setdefault(t, _checksum(p)) and {}, rng=jax.random.PRNGKey(2))
    return seen

  base = scored(data)
  t = 2
  ex = dict(data.examples)
  lo = int(data.starts[t])
  rng = np.random.default_rng(0)
  ex["positive"] = ex["positive"].copy()
  ex["positive"][lo:] = rng.integers(0, data.num_items, len(ex["positive"]) - lo)
  changed = scored(dataclasses.replace(data, examples=ex))
  for b in range(len(data)):
    assert (changed[b] == base[b]) == (b <= t), b  # blocks <= t: same model; later: it learned from t
  assert len(set(base.values())) == len(base)  # every block is scored by a new model


@pytest.mark.parametrize("first_task", ["initial", "zeros", "skip"])
def test_first_task_trains_the_transfer_before_it_serves(tiny_stream, first_task):
  """Algorithm 1 trains Theta on the first task too: after the first block, the served W_1 comes from a
  Theta that learned on that block (``skip``: from the random initial Theta), and ``W_{-1}`` is W_0
  (``initial``) or zero (``zeros``, the authors' code)."""
  pb, module, params = tiny_stream
  block = jax.tree.map(jnp.asarray, pb.data.block(0))
  cfg = _cfg(first_task=first_task)
  learner = sml.learner(cfg, module, pb.data.block_size)
  state = learner.init(params, jax.random.PRNGKey(1))
  w0 = sml.tables_of(params)
  expected_prev = jax.tree.map(jnp.zeros_like, w0) if first_task == "zeros" else w0
  chex.assert_trees_all_equal(state.prev, expected_prev)
  new, metrics = learner.update(state, block, jax.random.PRNGKey(2))
  moved = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(new.theta),
                                                           jax.tree.leaves(state.theta)))
  assert (moved > 0) == (first_task != "skip")
  assert int(metrics["adapted"]) == (first_task != "skip")
  if first_task == "skip":  # W_t is the pre-trained model
    chex.assert_trees_all_equal(new.prev, w0)
  else:  # W_t = f_Theta(W_{-1}, W_hat_0 = W_0) with the trained Theta
    tcfg = cfg.transfer_config(D)
    chex.assert_trees_all_close(new.prev, steps.transfer_tables(new.theta, expected_prev, w0, tcfg),
                                rtol=1e-5, atol=1e-6)


def test_multiple_passes_train_theta_on_the_training_periods_only(tiny_stream):
  """Sec. 3.3's multiple passes: init runs passes - 1 passes over the warm-up blocks, then the stream
  starts from the pre-trained tables with the trained Theta."""
  pb, module, params = tiny_stream
  data = pb.data
  warm = [data.block(t) for t in pb.train[:2]]
  one = sml.learner(_cfg(), module, data.block_size).init(params, jax.random.PRNGKey(1))
  two_l = sml.learner(_cfg(passes=2), module, data.block_size, warm)
  two = two_l.init(params, jax.random.PRNGKey(1))
  w0 = sml.tables_of(params)
  for tabs in (two.prev, two.hat, two.served):
    chex.assert_trees_all_equal(tabs, w0)
  assert int(two.blocks) == 0 and not bool(two.last["mask"].any())
  assert max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(two.theta),
                                                           jax.tree.leaves(one.theta))) > 0
  with pytest.raises(ValueError, match="passes"):
    sml.learner(_cfg(passes=2), module, data.block_size)


def test_pass_hat_init_passes_w_hat_through(tiny_stream):
  """theta_init="pass-hat": the transfer starts close to f(w_prev, w_hat) = w_hat on the tables' rows
  (d f / d w_hat ~ I, d f / d w_prev ~ 0), unlike the random start; "random" is the paper's."""
  pb, module, params = tiny_stream
  tc = _cfg().transfer_config(D)
  w = sml.tables_of(params)["item"]
  h = w + 0.5 * jnp.std(w) * jax.random.normal(jax.random.PRNGKey(3), w.shape)
  def err(theta):
    return float(jnp.mean((steps.transfer_tables(theta, {"item": w}, {"item": h}, tc)["item"] - h) ** 2))
  rand = sml.learner(_cfg(), module, pb.data.block_size).init(params, jax.random.PRNGKey(1))
  warm = sml.learner(_cfg(theta_init="pass-hat", theta_init_steps=1000), module,
                     pb.data.block_size).init(params, jax.random.PRNGKey(1))
  assert err(warm.theta) < 0.05 * err(rand.theta)
  jac_hat = jax.jacfwd(lambda x: transfer.apply_row(warm.theta["item"], w[0], x, tc))(h[0])
  jac_prev = jax.jacfwd(lambda x: transfer.apply_row(warm.theta["item"], x, h[0], tc))(w[0])
  assert float(jnp.abs(jnp.diag(jac_hat)).mean()) > 2 * float(jnp.abs(jnp.diag(jac_prev)).mean())
  chex.assert_trees_all_equal(warm.served, rand.served)  # only Theta changes


def test_first_block_is_scored_by_the_initial_model_and_no_recompile(tiny_stream):
  pb, module, params = tiny_stream
  data = pb.data
  cfg = _cfg()
  first = {}
  learner = sml.learner(cfg, module, data.block_size)
  eval_fn = lambda p, t: first.setdefault(t, jax.tree.map(np.array, p)) and {}  # noqa: E731
  res = loop_lib.run(learner, learner.init(params, jax.random.PRNGKey(1)), data, eval_fn,
                     rng=jax.random.PRNGKey(2))
  chex.assert_trees_all_equal(sml.tables_of(first[0]), sml.tables_of(params))
  assert [r["train/adapted"] for r in res.records] == [1.0] * len(data)  # the first block is a task
  jitted = learner_lib.jit_update(learner)
  size = jitted._cache_size()
  again = sml.learner(cfg, module, data.block_size)  # another run, another seed
  assert again.update is learner.update
  res2 = loop_lib.run(again, again.init(params, jax.random.PRNGKey(7)), data, lambda p, t: {},
                      rng=jax.random.PRNGKey(8))
  assert jitted._cache_size() == size == 1
  assert np.isfinite(res2.records[-1]["train/loss"])


def test_variants_run_and_sml_s_freezes_the_transfer(tiny_stream):
  pb, module, params = tiny_stream
  data = pb.data
  thetas = {}
  for v in ("sml-s",):
    cfg = _cfg(variant=v, freeze_from=2, reps=1)
    learner = sml.learner(cfg, module, data.block_size)
    state = learner.init(params, jax.random.PRNGKey(1))
    traj = []
    update = learner_lib.jit_update(learner)
    for t in range(len(data)):
      state, m = update(state, data.block(t), jax.random.PRNGKey(t))
      traj.append(jax.tree.map(np.asarray, state.theta))
      assert np.isfinite(float(m["loss"])), (v, t)
    thetas[v] = traj
  s = thetas["sml-s"]
  chex.assert_trees_all_equal(s[1], s[2], s[3])  # frozen from block 2 on
  assert not np.allclose(s[0]["user"]["Wo"], s[1]["user"]["Wo"])  # trained before


def test_strategy_rejects_biased_mf(tiny_stream):
  pb, _, _ = tiny_stream
  biased = registry.get("mf-log").make(10, 10, dim=D)
  with pytest.raises(ValueError, match="without biases"):
    sml.learner(_cfg(), biased, pb.data.block_size)
  with pytest.raises(ConfigError, match="variant"):
    sml.SMLConfig(variant="sml-x")
  with pytest.raises(ConfigError, match="first_task.*eps"):
    sml.SMLConfig(variant="sml-code", first_task="zeros")
  with pytest.raises(ConfigError, match="first_task"):
    sml.SMLConfig(first_task="random")
  assert "sml" in strategies_lib.STRATEGIES and "sml-cnn" in strategies_lib.STRATEGIES


# -- evaluation -------------------------------------------------------------------------------------


def test_seen_negatives_exclude_history_and_terminate_when_few_remain():
  rng = np.random.default_rng(0)
  num_items = 30
  seen = np.zeros(num_items, bool)
  seen[:20] = True  # items 20.. never seen: never candidates
  hist_u = np.array([0] * 15 + [1, 1, 1])
  hist_i = np.array(list(range(15)) + [3, 3, 7])  # user 0 has seen 15 of 20 items; duplicates for user 1
  users, pos = np.array([0, 1, 0, 2]), np.array([16, 3, 25, 0])
  neg = sml_eval.sample_seen_negatives(users, pos, seen, hist_u, hist_i, 999, rng)
  assert neg.shape == (4, 999)
  for q, expect in enumerate([set(range(15, 20)) - {16}, set(range(20)) - {3, 7}, set(range(15, 20)),
                              set(range(1, 20))]):
    got = neg[q][neg[q] >= 0]
    assert len(got) == len(set(got.tolist()))
    assert set(got.tolist()) == expect, q  # all remaining items when fewer than 999
  big = sml_eval.sample_seen_negatives(np.array([0, 1]), np.array([16, 3]), seen, hist_u, hist_i, 4, rng)
  assert (big >= 0).all() and len(set(big[1].tolist())) == 4
  assert not set(big[0].tolist()) & (set(range(15)) | {16} | set(range(20, 30)))


def test_period_evaluator_ranks_match_brute_force(tiny_stream):
  pb, module, params = tiny_stream
  data = pb.data
  ev = sml_eval.PeriodEvaluator(registry.get("mf-log").score_fn(module), data, num_negatives=50, seed=3,
                                ks=(5, 20), full=True, blocks=pb.test)
  assert ev(params, pb.train[0]) == {}
  t = pb.test[0]
  ranks, ncand = ev.sampled_ranks(params, t)
  cands = ev.candidates(t)
  tabs = sml.tables_of(params)
  users = data.examples["user"][int(data.starts[t]):int(data.ends[t])]
  for q in range(0, len(users), 7):
    c = cands[q][cands[q] >= 0]
    s = np.asarray(tabs["item"])[c] @ np.asarray(tabs["user"])[users[q]]
    assert ranks[q] == 1 + int((s[1:] >= s[0]).sum())
    assert ncand[q] == len(c)
  out = ev(params, t)
  assert out["num_queries"] == len(users)
  np.testing.assert_allclose(out["sampled50/NDCG@5"],
                             np.mean(np.where(ranks <= 5, 1 / np.log2(ranks + 1), 0.0)), rtol=1e-6)
  assert {"full/Recall@20", "sampled50/Recall@20"} <= set(out)
  np.testing.assert_array_equal(ev.candidates(t), cands)  # drawn once, reproducible
  # A model that outputs NaN (a 0/0 in a transfer) ranks last under both protocols, never first.
  nan_user = users[0]
  bad = sml.params_of({"user": tabs["user"].at[nan_user].set(jnp.nan), "item": tabs["item"]})
  bad_ranks, bad_ncand = ev.sampled_ranks(bad, t)
  hit = users == nan_user
  np.testing.assert_array_equal(bad_ranks[hit], bad_ncand[hit])
  np.testing.assert_array_equal(bad_ranks[~hit], ranks[~hit])
  all_nan = sml.params_of({"user": jnp.full_like(tabs["user"], jnp.nan), "item": tabs["item"]})
  nan_out = ev(all_nan, t)
  assert out["full/Recall@20"] > 0 and nan_out["full/Recall@20"] == 0 == nan_out["sampled50/Recall@20"]


def test_period_evaluator_feeds_sequence_models_their_history(tiny_stream):
  """GRU4Rec / Caser rows: the sampled ranks of a sequence model read each row's history window."""
  pb, _, _ = tiny_stream
  data = dataclasses.replace(pb.data, examples=blocks_lib.stream_examples(pb.data.log, 5))
  spec = registry.get("sumpool")
  module = spec.make(data.num_users, data.num_items, dim=8)
  env = strategies_lib.Env("sumpool", module, strategies_lib.StrategyConfig(), data)
  params = strategies_lib.init_params(env, jax.random.PRNGKey(0))
  ev = sml_eval.PeriodEvaluator(spec.score_fn(module), data, num_negatives=30, seed=1, full=False)
  t = pb.test[-1]
  lo, hi = int(data.starts[t]), int(data.ends[t])
  ranks, _ = ev.sampled_ranks(params, t)
  cands = ev.candidates(t)
  ex = data.examples
  assert ex["history_mask"][lo:hi].any(axis=1).mean() > 0.5  # most rows have a history
  for q in range(0, hi - lo, 11):
    r = lo + q
    c = cands[q][cands[q] >= 0]
    query = {"user": ex["user"][r:r + 1], "history": ex["history"][r:r + 1],
             "history_mask": ex["history_mask"][r:r + 1]}
    s = np.asarray(spec.score_fn(module)(params, query, jnp.asarray(c[None])))[0]
    assert ranks[q] == 1 + int((s[1:] >= s[0]).sum())


def test_interaction_types_match_brute_force(tiny_stream):
  """Fig. 6: new = absent from every row before the first test period (not just before the block)."""
  pb, module, params = tiny_stream
  data = pb.data
  f = int(data.starts[pb.test[0]])
  ev = sml_eval.PeriodEvaluator(registry.get("mf-log").score_fn(module), data, num_negatives=50, seed=3,
                                ks=(20,), full=False, blocks=pb.valid + pb.test, types_from=f)
  assert not any(k.startswith("types/") for k in ev(params, pb.valid[-1]))
  ex = data.examples
  seen_u, seen_i = set(ex["user"][:f].tolist()), set(ex["positive"][:f].tolist())
  for t in pb.test:
    lo, hi = int(data.starts[t]), int(data.ends[t])
    out = ev(params, t)
    ranks, _ = ev.sampled_ranks(params, t)
    labels = np.array([("NU" if u not in seen_u else "OU") + "-" + ("NI" if i not in seen_i else "OI")
                       for u, i in zip(ex["user"][lo:hi], ex["positive"][lo:hi])])
    assert sum(out[f"types/{k}"] for k in sml_eval.INTERACTION_TYPES) == hi - lo
    for k in sml_eval.INTERACTION_TYPES:
      sel = labels == k
      assert out[f"types/{k}"] == sel.sum()
      if sel.any():
        np.testing.assert_allclose(out[f"sampled50/Recall@20/{k}"], np.mean(ranks[sel] <= 20))
      else:
        assert f"sampled50/Recall@20/{k}" not in out
  assert len({lab for lab in labels}) >= 2  # the tiny stream has new users or items in its test periods


def test_protocol_presets_roles():
  from jaxrec.data import datasets
  log = datasets.load_dataset("synthetic:tiny", seed=0)
  pb = protocol_lib.make_blocks(log, protocol_lib.PRESETS["yelp-like"], pad_multiple=64)
  assert len(pb.data) == 30 and pb.valid == (20, 21, 22) and pb.test == tuple(range(23, 30))
  assert pb.train == tuple(range(20))
  assert pb.data.offline_end == sum(len(p) for p in splits.periods(log, 40)[:10])
  with pytest.raises(ValueError):
    protocol_lib.PeriodProtocol(10, "count", 5, 3, 3)
  assert isinstance(pb.data, blocks_lib.Blocks)


# -- the binary's validation-selected grid --------------------------------------------------------------


def test_grid_points_cover_each_groups_product_and_select_uses_validation_only():
  from experiments import sml as sml_binary
  cfg = dataclasses.replace(sml_binary.SMLExperimentConfig(), grid=(
      "sml.step1_lr=1e-2|1e-3", "sml.reps=1|3", "strategy.learning_rate=1e-2|0.05|1"))
  sml_points = sml_binary.grid_points(cfg, "sml")
  assert [lab for lab, _ in sml_points] == [
      "sml.step1_lr=0.01,sml.reps=1", "sml.step1_lr=0.01,sml.reps=3",
      "sml.step1_lr=0.001,sml.reps=1", "sml.step1_lr=0.001,sml.reps=3"]
  assert [(c.sml.step1_lr, c.sml.reps) for _, c in sml_points] == [(1e-2, 1), (1e-2, 3), (1e-3, 1), (1e-3, 3)]
  assert all(c.strategy == cfg.strategy for _, c in sml_points)  # other groups untouched
  shared = sml_binary.grid_points(cfg, "strategy")
  assert [c.strategy.learning_rate for _, c in shared] == [1e-2, 0.05, 1.0]
  assert isinstance(shared[2][1].strategy.learning_rate, float)  # int literal for a float field
  assert sml_binary.grid_points(cfg, "sequence_strategy") == [("", cfg)]
  rows = [{"valid Recall@20": 0.30, "test Recall@20": 0.9}, {"valid Recall@20": 0.41, "test Recall@20": 0.1},
          {"valid Recall@20": 0.41, "test Recall@20": 0.5}]
  assert sml_binary.select(rows) is rows[1]  # best validation, first on ties; test plays no part


@pytest.mark.parametrize("entry, message", [
    ("sml.step1_lr", "expected GROUP.FIELD=V1|V2"), ("pretrain_epochs=1|2", "expected GROUP.FIELD"),
    ("sml.nope=1|2", "sml has no field 'nope'"), ("sml.reps=1|two", "Python literals"),
    ("sml.reps=1|2.5", "2.5 is a float, sml.reps is a int"), ("sml.step1_lr=1e-2|0.0", "step1_lr"),
])
def test_grid_entries_are_checked_with_one_line_errors(entry, message):
  from experiments import sml as sml_binary
  cfg = dataclasses.replace(sml_binary.SMLExperimentConfig(), grid=(entry,))
  with pytest.raises(ValueError, match=message) as info:
    sml_binary.parse_grid(cfg)
  assert "\n" not in str(info.value)
