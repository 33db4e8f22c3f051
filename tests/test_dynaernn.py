"""dynAERNN (dyngraph2vec) as a 2TS baseline: snapshots, the literal loss, the link predictor, no leaks."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from jaxrec.data.log import InteractionLog
from jaxrec.eval.queries import Queries
from jaxrec.models import dynaernn
from jaxrec.train import fit as fit_lib

U, I, T, L = 5, 7, 4, 2


def _log(n=23, seed=0, num_users=U + 1, num_items=I):
  """Repeated (user, item) pairs and runs of equal timestamps, rows not in time order; the last user id
  (num_users - 1) never appears (a new user)."""
  rng = np.random.default_rng(seed)
  user = rng.integers(0, num_users - 1, n)
  item = rng.integers(0, num_items, n)
  user[1], item[1] = user[0], item[0]  # a repeated edge
  ts = rng.integers(0, 6, n) * 10  # many ties
  return InteractionLog.from_arrays(user, item, ts, num_users=num_users, num_items=num_items)


def _time_sorted_rows(log):
  return sorted(range(len(log)), key=lambda r: (int(log.timestamp[r]), r))


@pytest.mark.parametrize("n,t", [(23, 4), (20, 10), (3, 5), (1000, 10)])
def test_snapshots_equal_increments_cumulative_time_ordered(n, t):
  log = _log(n, seed=n, num_items=40)
  rows = _time_sorted_rows(log)
  snap = dynaernn.interaction_snapshots(log.timestamp, t)
  ends = dynaernn.snapshot_ends(n, t)
  inc = np.diff(np.concatenate([[0], ends]))
  assert ends[-1] == n and inc.max() - inc.min() <= 1
  for s in range(t):
    brute = set(rows[:(s + 1) * n // t])  # the first (s+1)/T of the interactions in time order
    assert set(np.flatnonzero(snap <= s)) == brute
    new = np.flatnonzero(snap == s + 1)
    if s + 1 < t and new.size and brute:
      assert log.timestamp[list(brute)].max() <= log.timestamp[new].min()


def _dense_adjacency(log, t):
  """Brute force ``A[s] [U + I, U + I]``: an edge once any of its rows is in snapshot ``s``'s prefix."""
  rows = _time_sorted_rows(log)
  n, nv = len(log), log.num_users + log.num_items
  a = np.zeros((t, nv, nv), np.float32)
  for s in range(t):
    for r in rows[:(s + 1) * n // t]:
      u, i = int(log.user[r]), log.num_users + int(log.item[r])
      a[s, u, i] = a[s, i, u] = 1.0
  return a


def test_side_graphs_and_dense_rows_match_brute_force_adjacency():
  log = _log()
  a = _dense_adjacency(log, T)
  users, items = dynaernn.snapshot_graphs(log, T)
  for g, off, other in ((users, 0, log.num_users), (items, log.num_users, 0)):
    nodes = np.arange(g.num_nodes)
    nbr, first = g.padded(nodes, max(g.max_degree, 1))
    x = np.asarray(dynaernn.dense_rows(jnp.asarray(nbr), jnp.asarray(first),
                                       jnp.zeros(g.num_nodes, jnp.int32), T, g.width))
    want = a[:, off + nodes][:, :, other:other + g.width].transpose(1, 0, 2)
    np.testing.assert_array_equal(x, want)


# -- the literal model on U + I nodes, in numpy ---------------------------------------------------------

ARCH = dynaernn.Arch(U + 1, I, embed_dim=3, ae_units=(6, 5), lstm_units=(4, 3), lookback=L, num_snapshots=T,
                     beta=5.0, nu1=1e-3, nu2=2e-3)


def _np_lrelu(x):
  return np.where(x > 0, x, 0.3 * x)


def _np_model(p, xs):
  """dynAERNN on full rows ``xs [l, U + I]``: per-step encoders, 2 LSTMs, decoder -> ``[U + I]``."""
  sig = lambda v: 1 / (1 + np.exp(-v))
  enc = p["enc"]
  zs = []
  for tau in range(xs.shape[0]):
    w1 = np.concatenate([enc["w_in_user"][tau], enc["w_in_item"][tau]])  # literal [U + I, H]
    z = _np_lrelu(xs[tau] @ w1 + enc["b_in"][tau])
    for layer in enc["hidden"]:
      z = _np_lrelu(z @ layer["w"][tau] + layer["b"][tau])
    zs.append(z)
  for layer in p["lstm"]:
    h = np.zeros(layer["wh"].shape[0])
    c = np.zeros_like(h)
    out = []
    for z in zs:
      g = z @ layer["wx"] + h @ layer["wh"] + layer["b"]
      i, f, cc, o = np.split(g, 4)
      c = sig(f) * c + sig(i) * np.tanh(cc)
      h = sig(o) * np.tanh(c)
      out.append(h)
    zs = out
  h = zs[-1]
  for layer in p["dec"]["hidden"]:
    h = _np_lrelu(h @ layer["w"] + layer["b"])
  w_out = np.concatenate([p["dec"]["w_out_user"], p["dec"]["w_out_item"]], axis=1)
  b_out = np.concatenate([p["dec"]["b_out_user"], p["dec"]["b_out_item"]])
  return zs[-1], _np_lrelu(h @ w_out + b_out)


@functools.lru_cache(maxsize=None)
def _setup():
  log = _log()
  # Parameters in init_params' shapes drawn on the host (compiling the initialisers eagerly costs more
  # than the rest of a test), large enough that every layer matters; forget-gate-like biases vary too.
  rng = np.random.default_rng(1)
  shapes = jax.eval_shape(lambda k: dynaernn.init_params(k, ARCH), jax.random.PRNGKey(1))
  params = jax.tree.map(lambda x: jnp.asarray(0.6 * rng.normal(size=x.shape), jnp.float32), shapes)
  data = dynaernn.training_data(log, ARCH)
  return log, params, data


def _full_batch(data):
  mu, mi = len(data.user_samples), len(data.item_samples)
  return next(dynaernn.epoch_batches(data, mu + mi, seed=0, epoch=0))


def _np_loss(log, p):
  """The literal loss: mean over (node with a training edge, target t in [l, T)) + L1/L2 on the kernels."""
  a = _dense_adjacency(log, T)
  total, count = 0.0, 0
  for v in range(U + 1 + I):
    if not a[-1, v].any():
      continue
    for t in range(L, T):
      _, pred = _np_model(p, a[t - L:t, v])
      b = np.where(a[t, v] != 0, ARCH.beta, 1.0)
      total += np.sum(np.square((pred - a[t, v]) * b))
      count += 1
  kernels = [p["enc"]["w_in_user"], p["enc"]["w_in_item"], p["dec"]["w_out_user"], p["dec"]["w_out_item"]]
  kernels += [l["w"] for l in p["enc"]["hidden"] + p["dec"]["hidden"]]
  reg = sum(ARCH.nu1 * np.abs(w).sum() + ARCH.nu2 * np.square(w).sum() for w in kernels)
  return total / count, reg, count


def test_loss_equals_literal_numpy_model():
  log, params, data = _setup()
  batch = _full_batch(data)
  assert batch["u_mask"].all() and batch["i_mask"].all()
  loss, aux = jax.jit(functools.partial(dynaernn.loss_fn, ARCH))(params, batch)
  recon, reg, count = _np_loss(log, jax.tree.map(lambda x: np.asarray(x, np.float64), params))
  assert count == len(data.user_samples) + len(data.item_samples)
  np.testing.assert_allclose(float(aux["reconstruction"]), recon, rtol=2e-5)
  np.testing.assert_allclose(float(loss), recon + reg, rtol=2e-5)


def test_weighted_reconstruction_weights_nonzeros_by_beta():
  pred = np.array([[0.5, 2.0, -1.0, 0.0]], np.float32)
  target = np.array([[1.0, 0.0, 1.0, 0.0]], np.float32)
  want = (0.5 * 5) ** 2 + 2.0 ** 2 + (2.0 * 5) ** 2
  np.testing.assert_allclose(np.asarray(dynaernn.weighted_reconstruction(pred, target, 5.0)), [want])


def test_embeddings_match_literal_model_and_new_nodes_get_the_empty_row():
  log, params, data = _setup()
  ue, ie = dynaernn.node_embeddings(params, ARCH, data, batch_size=4)
  a = _dense_adjacency(log, T)
  p = jax.tree.map(np.asarray, params)
  emb = np.concatenate([np.asarray(ue), np.asarray(ie)])
  for v in range(U + 1 + I):
    np.testing.assert_allclose(emb[v], _np_model(p, a[T - L:T, v])[0], rtol=1e-5, atol=1e-6)
  empty = _np_model(p, np.zeros((L, U + 1 + I)))[0]
  assert not log.user_counts()[U] and np.all(np.isfinite(emb))
  np.testing.assert_allclose(emb[U], empty, rtol=1e-5, atol=1e-6)  # the new user


class StepTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_step_jit_and_no_jit_match_the_literal_loss_and_its_derivative(self):
    """Both variants' loss equals the numpy model's and their gradient its central difference along a
    random direction (float64), on a padded batch (masked rows must not count)."""
    log, params, data = _setup()
    batch = _full_batch(data)
    pad = {k: np.concatenate([v, np.zeros(2, bool) if k.endswith("mask") else v[:2]])
           for k, v in batch.items()}
    loss, grad = self.variant(jax.value_and_grad(lambda p, b: dynaernn.loss_fn(ARCH, p, b)[0]))(params, pad)
    p64 = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    direction = jax.tree.map(lambda x: np.random.default_rng(x.size).normal(size=x.shape), p64)
    f = lambda e: sum(_np_loss(log, jax.tree.map(lambda x, d: x + e * d, p64, direction))[:2])
    eps = 1e-4
    want = (f(eps) - f(-eps)) / (2 * eps)
    got = sum(float(np.sum(np.asarray(g, np.float64) * d))
              for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(direction)))
    np.testing.assert_allclose(float(loss), f(0.0), rtol=2e-5)
    np.testing.assert_allclose(got, want, rtol=1e-3)


def test_epoch_batches_cover_every_sample_once_with_static_shapes():
  _, _, data = _setup()
  seen_u, seen_i, shapes = [], [], set()
  for b in dynaernn.epoch_batches(data, 5, seed=0, epoch=2):
    shapes.add(tuple((k, v.shape) for k, v in sorted(b.items())))
    seen_u += [tuple(r) for r in zip(b["u_neighbors"][b["u_mask"]].tolist(), b["u_target"][b["u_mask"]])]
    seen_i.append(int(b["i_mask"].sum()))
  assert len(shapes) == 1
  assert len(seen_u) == len(data.user_samples) and sum(seen_i) == len(data.item_samples)


# -- the link predictor ------------------------------------------------------------------------------


def test_hadamard_features_logistic_head_and_score_match_brute_force():
  rng = np.random.default_rng(0)
  ue, ie = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(9, 4)).astype(np.float32)
  users, items = rng.integers(0, 6, 300), rng.integers(0, 9, 300)
  x = np.asarray(dynaernn.hadamard_features(jnp.asarray(ue), jnp.asarray(ie), users, items))
  brute = np.array([[ue[u, k] * ie[i, k] for k in range(4)] for u, i in zip(users, items)])
  np.testing.assert_allclose(x, brute, rtol=1e-6)
  true_w = np.array([1.5, -2.0, 0.5, 0.0])
  y = (rng.random(300) < 1 / (1 + np.exp(-(brute @ true_w + 0.3)))).astype(np.float32)
  l2 = 0.7
  w, b = dynaernn.fit_logistic(jnp.asarray(x), jnp.asarray(y), jnp.ones(300), l2, 25)

  def obj(th):  # scikit-learn's objective with C = 1 / l2, intercept unpenalised, float64
    z = brute @ th[:-1] + th[-1]
    return np.sum(np.logaddexp(0, z) - y * z) + 0.5 * l2 * th[:-1] @ th[:-1]

  ref = optimize.minimize(obj, np.zeros(5), method="BFGS", options={"gtol": 1e-10}).x
  np.testing.assert_allclose(np.append(np.asarray(w), float(b)), ref, atol=2e-4)
  params = {"user": jnp.asarray(ue), "item": jnp.asarray(ie), "w": w, "b": b}
  q = {"user": jnp.asarray([0, 5, 2])}
  want = np.array([[np.dot(np.asarray(w), ue[u] * ie[i]) + float(b) for i in range(9)] for u in (0, 5, 2)])
  score = dynaernn.HadamardLogitScore()
  np.testing.assert_allclose(np.asarray(score(params, q, jnp.arange(9))), want, rtol=1e-5, atol=1e-5)
  cand = jnp.asarray([[1, 8], [0, 3], [4, 4]])
  np.testing.assert_allclose(np.asarray(score(params, q, cand)), np.take_along_axis(want, np.asarray(cand), 1),
                             rtol=1e-5, atol=1e-5)
  assert hash(score) == hash(dynaernn.HadamardLogitScore())


def test_link_data_edges_and_non_edges():
  log = _log(60, seed=4, num_items=20)
  ld = dynaernn.link_data(log, 1000, seed=0)
  known = set(zip(log.user.tolist(), log.item.tolist()))
  pos, neg = ld.y == 1, ld.y == 0
  assert set(zip(ld.users[pos].tolist(), ld.items[pos].tolist())) == known and pos.sum() == len(known)
  assert not set(zip(ld.users[neg].tolist(), ld.items[neg].tolist())) & known
  small = dynaernn.link_data(log, 5, seed=0)
  assert small.y.sum() == 5 and len(small.y) == 10
  full = InteractionLog.from_arrays([0, 0, 1], [0, 1, 0], [1, 2, 3], num_users=2, num_items=2)
  ld = dynaernn.link_data(full, 10, seed=0)  # user 0 knows every item: no non-edge for it
  assert ld.y.tolist() == [1, 1, 1, 0] and ld.users[3] == 1 and ld.items[3] == 1


# -- the contract ------------------------------------------------------------------------------------

HP = dict(embed_dim=3, ae_units=(6, 5), lstm_units=(4, 3), lookback=L, num_snapshots=T, lr_iters=5,
          eval_batch_size=8)


def _fit(test_log):
  log = _log(60, seed=5)
  order = np.argsort(log.timestamp, kind="stable")
  train, valid = log.take(order[:40]), log.take(order[40:50])
  vq = Queries.from_log(valid, [train])
  cfg = fit_lib.FitConfig(epochs=2, batch_size=16, metric="valid/MRR", valid_negatives=3, patience=None)
  return dynaernn.fit([train, valid, test_log], vq, cfg, seed=0, **HP), train, valid


def test_fit_never_reads_test_rows_and_scores_every_query():
  log = _log(60, seed=5)
  test_a = log.take(np.arange(50, 60))
  test_b = InteractionLog.from_arrays(np.full(4, U), np.arange(4), np.full(4, 10 ** 9),
                                      num_users=U + 1, num_items=I)
  fa, train, valid = _fit(test_a)
  fb, _, _ = _fit(test_b)
  chex.assert_trees_all_equal(fa.params, fb.params)
  assert [r for r in fa.history if r["kind"] == "eval"] and fa.best_step > 0
  assert dynaernn.query_features(fa, [train, valid, test_a], 2) == {}
  scores = fa.score_fn(fa.params, {"user": jnp.arange(U + 1)}, jnp.arange(I))
  assert scores.shape == (U + 1, I) and bool(jnp.all(jnp.isfinite(scores)))
