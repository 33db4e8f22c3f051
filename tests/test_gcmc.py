"""GCMC / GCMC-SAGE / GCMC-GAT (Berg et al. 2017; Hamilton et al. 2017; Velickovic et al. 2018).

Each aggregator against a dense-adjacency / brute-force numpy reference on a small graph with repeated
pairs, equal timestamps and isolated nodes; GraphSAGE's sampling; no NaN on empty neighbourhoods; fit
reads only the training log; the jitted step equals the plain one.
"""

import dataclasses
import functools

from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.data.log import InteractionLog
from jaxrec.eval.queries import Queries
from jaxrec.models import gcmc
from jaxrec.train import fit as fit_lib

U, I = 6, 7  # user 5 and item 6 have no interaction
DIMS = dict(embed_dim=5, hidden_dim=8, out_dim=3, num_heads=2)


def _log(seed=0, n=30):
  """Users 0..4 x items 0..5 with repeated (user, item) rows and equal timestamps."""
  rng = np.random.default_rng(seed)
  user = rng.integers(0, U - 1, n)
  item = rng.integers(0, I - 1, n)
  user[:4], item[:4] = 0, 1  # one pair four times
  return InteractionLog.from_arrays(user, item, np.sort(rng.integers(0, 5, n)), num_users=U, num_items=I)


def _dense_adjacency(log):
  """``A [N, N]`` of the bipartite graph from the rows directly (one entry per distinct pair)."""
  a = np.zeros((U + I, U + I))
  a[log.user, U + log.item] = 1.0
  a[U + log.item, log.user] = 1.0
  return a


@functools.lru_cache(maxsize=None)
def _model(aggregator, dropout=0.0):
  module = gcmc.GCMC(U, I, aggregator=aggregator, dropout=dropout, fan_out=4, **DIMS)
  graph = gcmc.Graph(*map(jnp.asarray, gcmc.build_graph(_log(), 100)))
  params = module.init({"params": jax.random.PRNGKey(1)}, graph, jnp.zeros((1,), jnp.int32),
                       jnp.zeros((1, 1), jnp.int32))
  # away from the init scale, so every term matters
  params = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(jax.random.PRNGKey(2), x.shape), params)
  return module, graph, params


def _np(params):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), params["params"])


def _relu(x):
  return np.maximum(x, 0.0)


def _encode_all(module, params, graph):
  nodes = jnp.arange(U + I)
  h = module.apply(params, graph, nodes, True, method=module.hidden)
  z = module.apply(params, graph, nodes, True, method=module.encode)
  return np.asarray(h, np.float64), np.asarray(z, np.float64)


def test_graph_is_the_distinct_pairs_and_caps_by_sampling():
  log = _log()
  a = _dense_adjacency(log)
  g = gcmc.build_graph(log, 100)
  dense = np.zeros_like(a)
  rows = np.repeat(np.arange(U + I), g.neighbors.shape[1])
  np.add.at(dense, (rows[g.mask.ravel()], g.neighbors.ravel()[g.mask.ravel()]), 1.0)
  np.testing.assert_array_equal(dense, a)  # every pair once: repeats add no edge, no weight
  np.testing.assert_array_equal(g.degree, a.sum(1))
  assert g.degree[U - 1] == 0 and g.degree[U + I - 1] == 0
  cap = 2
  small = gcmc.build_graph(log, cap, seed=3)
  assert small.neighbors.shape[1] == cap
  np.testing.assert_array_equal(small.degree, np.minimum(a.sum(1), cap))
  for node in range(U + I):
    kept = small.neighbors[node][small.mask[node]]
    assert len(set(kept)) == kept.size and a[node, kept].all()  # distinct true neighbours
  other = gcmc.build_graph(log, cap, seed=4)
  assert not np.array_equal(small.neighbors, other.neighbors)  # a sample, drawn from the seed
  np.testing.assert_array_equal(small.neighbors, gcmc.build_graph(log, cap, seed=3).neighbors)


@pytest.mark.parametrize("norm", gcmc.NORMS)
def test_gcmc_equals_normalised_dense_adjacency(norm):
  module, _, params = _model("gcmc")
  graph = gcmc.Graph(*map(jnp.asarray, gcmc.build_graph(_log(), 100, norm=norm)))
  a = _dense_adjacency(_log())
  d = a.sum(1)
  inv = np.where(d > 0, 1.0 / np.maximum(d, 1), 0.0)
  norm_a = np.sqrt(inv)[:, None] * a * np.sqrt(inv)[None, :] if norm == "symmetric" else inv[:, None] * a
  p = _np(params)
  x = p["embed"]["embedding"]
  h_ref = _relu(x @ p["w_self"]["kernel"] + norm_a @ x @ p["w_nbr"]["kernel"])  # Berg et al. Eq. 2-3
  h, z = _encode_all(module, params, graph)
  np.testing.assert_allclose(h, h_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(z, h_ref @ p["w_out"]["kernel"], rtol=1e-5, atol=1e-5)  # Eq. 4 (linear)


def test_sage_evaluation_is_the_neighbour_mean_concat_self():
  module, graph, params = _model("sage")
  a = _dense_adjacency(_log())
  p = _np(params)
  x = p["embed"]["embedding"]
  mean = a @ x / np.maximum(a.sum(1), 1)[:, None]
  h_ref = _relu(np.concatenate([x @ p["w_self"]["kernel"], mean @ p["w_nbr"]["kernel"]], axis=1))
  h_ref /= np.linalg.norm(h_ref, axis=1, keepdims=True)
  h, _ = _encode_all(module, params, graph)
  np.testing.assert_allclose(h, h_ref, rtol=1e-5, atol=1e-5)


def test_sage_samples_are_uniform_draws_of_neighbours_resampled_per_key():
  _, graph, _ = _model("sage")
  a = _dense_adjacency(_log())
  nodes = jnp.arange(U + I)
  ids, mask = gcmc.sample_neighbors(jax.random.PRNGKey(0), graph, nodes, 4000)
  ids, mask = np.asarray(ids), np.asarray(mask)
  for node in range(U + I):
    if a[node].sum() == 0:
      assert not mask[node].any()
      continue
    assert mask[node].all() and a[node, ids[node]].all()
    freq = np.bincount(ids[node], minlength=U + I)[a[node] > 0] / 4000
    np.testing.assert_allclose(freq, 1.0 / a[node].sum(), atol=0.04)
  again, _ = gcmc.sample_neighbors(jax.random.PRNGKey(1), graph, nodes, 4000)
  assert not np.array_equal(ids, np.asarray(again))


def test_gat_equals_brute_force_attention():
  module, graph, params = _model("gat")
  a = _dense_adjacency(_log())
  p = _np(params)
  x = p["embed"]["embedding"]
  w, a_s, a_n = p["w_heads"], p["a_self"], p["a_nbr"]
  h_ref = np.zeros((U + I, DIMS["hidden_dim"]))
  for i in range(U + I):
    heads = []
    for k in range(DIMS["num_heads"]):
      z = x @ w[k]
      hood = [i] + list(np.flatnonzero(a[i]))  # Velickovic et al.: the neighbourhood includes i
      e = np.array([z[i] @ a_s[k] + z[j] @ a_n[k] for j in hood])
      e = np.where(e > 0, e, 0.2 * e)
      alpha = np.exp(e - e.max())
      alpha /= alpha.sum()
      out = sum(al * z[j] for al, j in zip(alpha, hood))
      heads.append(np.where(out > 0, out, np.expm1(out)))
    h_ref[i] = np.concatenate(heads)
  h, _ = _encode_all(module, params, graph)
  np.testing.assert_allclose(h, h_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("aggregator", gcmc.AGGREGATORS)
def test_isolated_nodes_get_the_self_path_and_finite_gradients(aggregator):
  module, graph, params = _model(aggregator, dropout=0.5)
  p = _np(params)
  x = p["embed"]["embedding"][[U - 1, U + I - 1]]
  if aggregator == "gcmc":
    h_ref = _relu(x @ p["w_self"]["kernel"])
  elif aggregator == "sage":
    h_ref = _relu(np.concatenate([x @ p["w_self"]["kernel"], np.zeros((2, DIMS["hidden_dim"] // 2))], 1))
    h_ref /= np.linalg.norm(h_ref, axis=1, keepdims=True)
  else:
    out = np.concatenate([x @ p["w_heads"][k] for k in range(DIMS["num_heads"])], axis=1)
    h_ref = np.where(out > 0, out, np.expm1(out))
  h, _ = _encode_all(module, params, graph)
  np.testing.assert_allclose(h[[U - 1, U + I - 1]], h_ref, rtol=1e-5, atol=1e-5)
  # training mode (dropout, sampling) on a batch of the isolated user and item: finite loss and grads
  batch = {"user": jnp.array([U - 1, 0]), "positive": jnp.array([I - 1, 1]),
           "negatives": jnp.array([[0, I - 1], [I - 1, 2]]), "mask": jnp.array([True, True]), "graph": graph}
  loss, grads = jax.value_and_grad(lambda q: gcmc.make_loss_fn(module)(q, batch, jax.random.PRNGKey(0))[0])(params)
  assert np.isfinite(loss) and all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_tables_score_the_bilinear_decoder():
  module, graph, params = _model("gcmc")
  tables = gcmc.encode_tables(module, params, graph, chunk=4)  # chunks that do not divide N
  users, items = jnp.array([0, 3, U - 1]), jnp.array([[1, 2, I - 1], [0, 0, 4], [5, 6, 1]])
  direct = module.apply(params, graph, users, items, True)
  np.testing.assert_allclose(gcmc.table_score(tables, {"user": users}, items), direct, rtol=1e-5, atol=1e-5)


def _fit_setup():
  log = _log(seed=5, n=120)
  order = np.argsort(log.timestamp, kind="stable")
  tr, va, te = (log.take(order[s]) for s in (slice(0, 80), slice(80, 100), slice(100, 120)))
  cfg = fit_lib.FitConfig(epochs=2, batch_size=16, valid_negatives=3, metric="valid/MRR", patience=None)
  return [tr, va, te], Queries.from_log(va, [tr]), cfg


def test_fit_reads_only_the_training_log():
  logs, valid_q, cfg = _fit_setup()
  kw = dict(seed=0, aggregator="sage", **DIMS)
  a = gcmc.fit(logs, valid_q, cfg, **kw)
  te = logs[2]
  changed = dataclasses.replace(te, user=te.user[::-1].copy(), item=(te.item + 1) % I)
  b = gcmc.fit([logs[0], logs[1], changed], valid_q, cfg, **kw)
  chex.assert_trees_all_equal(a.params, b.params)
  evals = lambda r: [{k: v for k, v in h.items() if k.startswith("valid/")} for h in r.history
                     if h.get("kind") == "eval"]
  assert evals(a) == evals(b) and len(evals(a)) == 2
  assert gcmc.query_features(a, logs, 2) == {}
  assert a.params["user"].shape == (U, DIMS["out_dim"]) and np.isfinite(a.params["user"]).all()


class StepTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*gcmc.AGGREGATORS)
  def test_step_jit_equals_no_jit(self, aggregator):
    module, graph, params = _model(aggregator, dropout=0.3)
    learner = gcmc.make_learner(module, gcmc.Graph(*map(np.asarray, graph)), ("adam", 1e-2, 0.0, 5.0))
    log = _log()
    batch = {"user": jnp.asarray(log.user[:8]), "positive": jnp.asarray(log.item[:8]),
             "negatives": jnp.asarray(np.arange(8 * 3).reshape(8, 3) % I, jnp.int32),
             "mask": jnp.arange(8) < 7}
    rng = jax.random.PRNGKey(3)
    ref_state, ref_metrics = learner.update(learner.init(params, rng), batch, rng)
    state, metrics = self.variant(learner.update)(learner.init(params, rng), batch, rng)
    chex.assert_trees_all_close(state.train.params, ref_state.train.params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(metrics, ref_metrics, rtol=1e-5, atol=1e-6)
    assert not np.allclose(state.train.params["params"]["Q"], params["params"]["Q"])  # it stepped
