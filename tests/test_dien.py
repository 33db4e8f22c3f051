"""DIEN (Zhou et al. 2019): score vs a numpy reference, AUGRU, the next-click auxiliary loss, padding,
no target leak, jit vs no jit, and one fit through jaxrec.train.fit."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.data.log import InteractionLog
from jaxrec.eval import protocols as protocols_lib
from jaxrec.eval.queries import Queries
from jaxrec.models import dien, losses, registry
from jaxrec.train import fit as fit_lib

U, I, L, N = 4, 23, 6, 7
HP = dict(dim=6, hidden=5, max_len=L, attention_layers=(7, 4), mlp_layers=(9, 5), aux_layers=(6, 3))


@functools.lru_cache(maxsize=None)
def _model(chunk=3):
  spec = registry.get("dien")
  module = spec.make(U, I, candidate_chunk=chunk, **HP)
  p = spec.init(jax.random.key(0), module, registry.sample_batch("sequence", history_len=L))
  rng = np.random.default_rng(0)
  # Away from the initial values (zero biases, unit scales), so that every term matters.
  p = jax.tree_util.tree_map(lambda x: x + 0.5 * rng.normal(size=x.shape).astype(np.float32), p)
  return spec, module, p


def _batch(seed=0, b=5):
  """Right-aligned windows of varied lengths (one empty, one full), repeated items, garbage ids at the
  padded positions, a padded last row."""
  rng = np.random.default_rng(seed)
  n = rng.integers(1, L + 1, b)
  n[0], n[1], n[2] = L, 0, 1
  mask = np.arange(L)[None] >= (L - n)[:, None]
  hist = rng.integers(0, I // 2, (b, L))  # half the catalogue: repeats
  return {"user": jnp.arange(b, dtype=jnp.int32) % U, "history": jnp.asarray(hist, jnp.int32),
          "history_mask": jnp.asarray(mask), "positive": jnp.asarray(rng.integers(0, I, b), jnp.int32),
          "negatives": jnp.asarray(rng.integers(0, I, (b, N)), jnp.int32),
          "mask": jnp.asarray(np.arange(b) != b - 1)}


# -- numpy reference (the equations of the module docstring, written out one step at a time) --------------


def _sig(x):
  return 1.0 / (1.0 + np.exp(-x))


def _np_gru(p, name, xs, real, att=None, h0=None):
  """Eq. 2-5 (att None) or Eq. 9 (AUGRU): states [L, H], one step at a time."""
  wx, bx = p[f"{name}_wx"], p[f"{name}_bx"]
  ug, uc = p[f"{name}_uh_gates"], p[f"{name}_uh_cand"]
  hid = uc.shape[0]
  h = np.zeros(hid) if h0 is None else h0
  out = []
  for t in range(len(xs)):
    if real[t]:
      x = xs[t]
      r = _sig(x @ wx[:, :hid] + bx[:hid] + h @ ug[:, :hid])
      u = _sig(x @ wx[:, hid:2 * hid] + bx[hid:2 * hid] + h @ ug[:, hid:])
      c = np.tanh(x @ wx[:, 2 * hid:] + bx[2 * hid:] + (r * h) @ uc)
      if att is not None:
        u = att[t] * u
      h = (1 - u) * h + u * c
    out.append(h)
  return np.array(out)


def _np_mlp(p, name, x, layers, act):
  for k in range(layers + 1):
    x = x @ p[f"{name}_{k}_kernel"] + p[f"{name}_{k}_bias"]
    if k < layers:
      x = act(x, k)
  return x[..., 0]


def _np_score(p, hist, real, item):
  """The logit of one (window, candidate) pair, written from the equations (concatenations as in the
  authors' din_fcn_attention and build_fcn_net)."""
  emb = p["item_emb"]["embedding"]
  e = emb[hist] * real[:, None]
  h = _np_gru(p, "extractor", e, real)
  ea = emb[item]
  q = ea @ p["att_query_kernel"] + p["att_query_bias"]
  q = np.maximum(0, q) + p["att_query_alpha"] * np.minimum(0, q)
  s = np.array([_np_mlp(p, "att", np.concatenate([q, h[t], q - h[t], q * h[t]]), 2,
                        lambda x, k: _sig(x)) for t in range(len(hist))])
  s = np.where(real, s, -2.0 ** 32 + 1)
  a = np.exp(s - s.max())
  a /= a.sum()
  final = _np_gru(p, "evolution", h, real, att=a)[-1]
  tot = e.sum(0)
  x = np.concatenate([ea, tot, ea * tot, final]) * p["out_affine_scale"] + p["out_affine_bias"]
  return _np_mlp(p, "out", x, 2,
                 lambda x, k: np.maximum(0, x) + p[f"out_alpha_{k}"] * np.minimum(0, x))


def _np_aux_terms(p, hist, real, noclick):
  """Eq. 1 term by term: h_t against the next click e_{t+1} and a non-clicked item."""
  emb = p["item_emb"]["embedding"]
  e = emb[hist] * real[:, None]
  h = _np_gru(p, "extractor", e, real)

  def logit(hh, ee):
    x = np.concatenate([hh, ee]) * p["aux_affine_scale"] + p["aux_affine_bias"]
    return _np_mlp(p, "aux", x, 2, lambda x, k: _sig(x))

  terms, pairs = [], []
  for t in range(len(hist) - 1):
    terms.append(-np.log(_sig(logit(h[t], e[t + 1]))) - np.log(1 - _sig(logit(h[t], emb[noclick[t]]))))
    pairs.append(bool(real[t] and real[t + 1]))
  return np.array(terms), np.array(pairs)


def _np_params(p):
  return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), p)["params"]


def _score(module, p, batch, items):
  return np.asarray(module.apply(p, batch, jnp.asarray(items, jnp.int32), method=module.score))


# -- tests -------------------------------------------------------------------------------------------------


def test_score_matches_the_numpy_reference_for_shared_and_per_query_candidates():
  _, module, p = _model(chunk=3)  # 7 candidates: 3 chunks of 3, the last one padded
  batch = _batch()
  pn = _np_params(p)
  hist, real = np.asarray(batch["history"]), np.asarray(batch["history_mask"])
  shared = np.array([0, 5, 5, 11, 22, 3, 1])
  per_query = np.random.default_rng(1).integers(0, I, (5, 7))
  got_shared, got_per = _score(module, p, batch, shared), _score(module, p, batch, per_query)
  want_shared = np.array([[_np_score(pn, hist[b], real[b], c) for c in shared] for b in range(5)])
  want_per = np.array([[_np_score(pn, hist[b], real[b], c) for c in per_query[b]] for b in range(5)])
  np.testing.assert_allclose(got_shared, want_shared, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got_per, want_per, rtol=1e-4, atol=1e-5)
  # One chunk or many: the same numbers.
  _, whole, _ = _model(chunk=64)
  np.testing.assert_allclose(_score(whole, p, batch, shared), got_shared, rtol=1e-5, atol=1e-6)
  # The candidate matters (the AUGRU state depends on it): different items, different logits.
  assert np.ptp(got_shared[0]) > 1e-3


def test_augru_with_attention_one_is_the_gru_and_with_attention_zero_keeps_the_state():
  _, module, p = _model()
  pn = _np_params(p)
  evo = {k[len("evolution_"):]: v for k, v in p["params"].items() if k.startswith("evolution_")}
  rng = np.random.default_rng(2)
  xs = jnp.asarray(rng.normal(size=(3, L, HP["hidden"])), jnp.float32)
  real = jnp.asarray(np.arange(L)[None] >= np.array([0, 2, 5])[:, None])
  h0 = jnp.asarray(rng.normal(size=(3, HP["hidden"])), jnp.float32)
  x_proj = xs @ evo["wx"] + evo["bx"]
  plain = dien.gru_scan(evo, x_proj, real, h0)
  ones = dien.gru_scan(evo, x_proj, real, h0, att=jnp.ones((3, L)))
  zeros = dien.gru_scan(evo, x_proj, real, h0, att=jnp.zeros((3, L)))
  np.testing.assert_allclose(ones, plain, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(zeros, np.broadcast_to(np.asarray(h0)[:, None], zeros.shape), atol=1e-7)
  for b in range(3):  # the plain GRU is Eq. 2-5 (masked steps keep the state)
    want = _np_gru(pn, "evolution", np.asarray(xs[b], np.float64), np.asarray(real[b]), h0=np.asarray(h0[b]))
    np.testing.assert_allclose(plain[b], want, rtol=1e-5, atol=1e-6)
  # A fractional attention is between: u' = a * u, so the state moves less than the GRU's.
  half = dien.gru_scan(evo, x_proj, real, h0, att=jnp.full((3, L), 0.5))
  step_half = np.abs(np.asarray(half[0, 0] - h0[0]))
  step_full = np.abs(np.asarray(plain[0, 0] - h0[0]))
  assert np.all(step_half < step_full + 1e-7) and step_half.sum() > 0


def test_padded_positions_never_influence_the_score_or_the_aux_loss():
  _, module, p = _model()
  batch = _batch(seed=3)
  items = np.arange(I)
  base = _score(module, p, batch, items)
  terms, pairs = module.apply(p, batch["history"], batch["history_mask"],
                              dien.noclick_items(batch["negatives"], L), method=module.aux_terms)
  other = dict(batch, history=jnp.where(batch["history_mask"], batch["history"], (batch["history"] * 7 + 3) % I))
  np.testing.assert_array_equal(_score(module, p, other, items), base)
  terms2, _ = module.apply(p, other["history"], other["history_mask"],
                           dien.noclick_items(other["negatives"], L), method=module.aux_terms)
  np.testing.assert_array_equal(np.where(pairs, terms2, 0), np.where(pairs, terms, 0))
  # A left-padded window scores as the unpadded one (shorter L).
  row = 3
  n = int(batch["history_mask"][row].sum())
  assert 0 < n < L
  short = {"history": batch["history"][row:row + 1, L - n:], "history_mask": batch["history_mask"][row:row + 1, L - n:]}
  np.testing.assert_allclose(_score(module, p, short, items)[0], base[row], rtol=1e-5, atol=1e-6)
  # An empty window is finite (new users) and depends on the candidate only.
  assert np.all(np.isfinite(base[1]))


def test_aux_loss_pairs_each_state_with_the_next_click():
  _, module, p = _model()
  pn = _np_params(p)
  batch = _batch(seed=4)
  noclick = dien.noclick_items(batch["negatives"], L)
  np.testing.assert_array_equal(noclick, batch["negatives"][:, :L - 1])  # N >= L - 1: pair t takes column t

  def terms(b):
    t, m = module.apply(p, b["history"], b["history_mask"], dien.noclick_items(b["negatives"], L),
                        method=module.aux_terms)
    return np.asarray(t), np.asarray(m)

  got, pairs = terms(batch)
  for b in range(5):
    want, want_pairs = _np_aux_terms(pn, np.asarray(batch["history"][b]), np.asarray(batch["history_mask"][b]),
                                     np.asarray(noclick[b]))
    np.testing.assert_array_equal(pairs[b], want_pairs)
    np.testing.assert_allclose(got[b][want_pairs], want[want_pairs], rtol=1e-4, atol=1e-5)
  # Changing the last click changes only the last pair (h_{L-2} vs e_{L-1}); h_{L-1} is never paired,
  # so the window's own target is never an aux label.
  hist = np.asarray(batch["history"]).copy()
  hist[0, -1] = (hist[0, -1] + 1) % I
  moved, _ = terms(dict(batch, history=jnp.asarray(hist)))
  np.testing.assert_array_equal(moved[0, :-1], got[0, :-1])
  assert abs(moved[0, -1] - got[0, -1]) > 1e-6
  # Changing click t changes pair t - 1 (as the label) and the pairs after it (through h_t ...), not before.
  t = 3
  hist = np.asarray(batch["history"]).copy()
  hist[0, t] = (hist[0, t] + 5) % I
  moved, _ = terms(dict(batch, history=jnp.asarray(hist)))
  np.testing.assert_array_equal(moved[0, :t - 1], got[0, :t - 1])
  assert np.all(np.abs(moved[0, t - 1:] - got[0, t - 1:]) > 1e-7)
  # Changing the non-clicked item of pair t changes that term only; the positive changes nothing.
  negs = np.asarray(batch["negatives"]).copy()
  negs[0, 2] = (negs[0, 2] + 1) % I
  moved, _ = terms(dict(batch, negatives=jnp.asarray(negs)))
  np.testing.assert_array_equal(np.delete(moved[0], 2), np.delete(got[0], 2))
  aux = dien.auxiliary_loss(module, p, batch)
  np.testing.assert_array_equal(aux, dien.auxiliary_loss(module, p, dict(batch, positive=batch["positive"] + 1)))
  # The mean over real pairs of real rows.
  w = pairs & np.asarray(batch["mask"])[:, None]
  np.testing.assert_allclose(aux, (got * w).sum() / w.sum(), rtol=1e-6)


def test_loss_is_the_ranking_loss_plus_the_weighted_aux_loss():
  spec, module, p = _model()
  batch = _batch(seed=5)
  cands = np.concatenate([np.asarray(batch["positive"])[:, None], np.asarray(batch["negatives"])], 1)
  scores = module.apply(p, batch, jnp.asarray(cands), method=module.score)
  main = losses.candidate_loss("softmax", scores, batch["mask"])
  aux = dien.auxiliary_loss(module, p, batch)
  value, metrics = spec.loss_fn(module)(p, batch, None)
  np.testing.assert_allclose(value, main + aux, rtol=1e-6)
  np.testing.assert_allclose(metrics["aux_loss"], aux, rtol=1e-6)
  half = dataclasses.replace(module, aux_weight=0.5)
  np.testing.assert_allclose(spec.loss_fn(half)(p, batch, None)[0], main + 0.5 * aux, rtol=1e-6)
  # The positive's own score uses it only as the candidate: the other columns do not move with it.
  moved = module.apply(p, dict(batch, positive=(batch["positive"] + 1) % I), jnp.asarray(cands[:, 1:]),
                       method=module.score)
  np.testing.assert_array_equal(moved, np.asarray(scores)[:, 1:])


def test_windows_exclude_the_target_and_later_rows():
  """Training windows and query features hold strictly earlier rows of the user (equal timestamps:
  input order), so a query's target is never in its own history."""
  rng = np.random.default_rng(6)
  n = 60
  user = rng.integers(0, U, n)
  ts = np.sort(rng.integers(0, 15, n))  # many ties
  item = rng.integers(0, I, n)
  log = InteractionLog.from_arrays(user, item, ts, num_users=U, num_items=I)
  spec = registry.get("dien")
  ex = fit_lib.query_features(spec, [log], 0, L)
  for row in range(n):  # brute force: the user's previous rows in (time, row) order
    prev = [r for r in range(row) if user[r] == user[row]][-L:]
    got = ex["history"][row][ex["history_mask"][row]]
    np.testing.assert_array_equal(got, item[prev])
    if row == 40:  # changing the target's own item leaves its history (hence its scores) unchanged
      item2 = item.copy()
      item2[row] = (item2[row] + 1) % I
      ex2 = fit_lib.query_features(spec, [InteractionLog.from_arrays(user, item2, ts, num_users=U,
                                                                     num_items=I)], 0, L)
      np.testing.assert_array_equal(ex2["history"][row], ex["history"][row])
  train = fit_lib.training_examples(spec, log, L)
  assert "targets" not in train  # one target per window (all_positions=False)
  assert not spec.all_positions


class JitTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_score_and_loss_jit_match_no_jit(self):
    spec, module, p = _model()
    batch = _batch(seed=7)
    # The loss scores [positive, negatives] per query and runs the aux loss: both paths are covered.
    grad = self.variant(jax.value_and_grad(lambda p, b: spec.loss_fn(module)(p, b, None)[0]))
    (l0, g0) = grad(p, batch)
    (l1, g1) = jax.value_and_grad(lambda p: spec.loss_fn(module)(p, batch, None)[0])(p)
    np.testing.assert_allclose(l0, l1, rtol=1e-5)
    chex.assert_trees_all_close(g0, g1, rtol=1e-4, atol=1e-6)
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(g0))


def test_fit_trains_and_validates_through_the_shared_loop():
  rng = np.random.default_rng(8)
  n = 300
  user = rng.integers(0, U, n)
  item = (user * 5 + np.arange(n) % 3) % I  # learnable: each user cycles through 3 items
  log = InteractionLog.from_arrays(user, item, np.arange(n), num_users=U, num_items=I)
  train = InteractionLog.from_arrays(user[:250], item[:250], np.arange(250), num_users=U, num_items=I)
  valid = InteractionLog.from_arrays(user[250:], item[250:], np.arange(250, n), num_users=U, num_items=I)
  spec = registry.get("dien")
  feats = fit_lib.query_features(spec, [train, valid], 1, L)
  queries = Queries.from_log(valid, [train], features=feats)
  config = fit_lib.FitConfig(epochs=2, batch_size=64, num_negatives=4, history_len=L, metric="valid/MRR",
                             learning_rate=1e-2, valid_negatives=8)
  res = fit_lib.fit("dien", train, queries, config, hparams=HP)
  evals = [r for r in res.history if "valid/MRR" in r]
  assert len(evals) == 2 and all(np.isfinite(r["valid/MRR"]) for r in evals)
  protocol = protocols_lib.Sampled(num_negatives=8).draw(queries, I)
  out = protocols_lib.evaluate(res.score_fn, res.params, queries, protocol, I, ks=(10,))
  assert out.summary["MRR"] > 0.5  # well above chance (~0.3 with 9 candidates)
