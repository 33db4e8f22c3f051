"""MIMN (Pi et al. 2019): NTM write/addressing against brute force, masked steps, the scan, the read-out."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.models import losses, mimn, registry

U, I, L, N, B = 7, 23, 6, 4, 5
M_SLOTS, D = 4, 8


@functools.lru_cache(maxsize=None)
def _model(**hp):
  spec = registry.get("mimn")
  module = spec.make(U, I, dim=D, hidden=6, memory_slots=M_SLOTS, att_hidden=(5, 3), mlp_hidden=(7, 5), **hp)
  # Parameters in spec.init's shapes drawn on the host (an eager init costs more than the tests): scales
  # and GRU gate biases 1 + noise, the rest noise, so that every block matters.
  shapes = jax.eval_shape(lambda k: spec.init(k, module, registry.sample_batch("sequence", 2, N, L)),
                          jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)

  def draw(path, x):
    z = 0.4 * rng.normal(size=x.shape)
    one = path[-1].key in ("in_scale", "controller_gates_bias", "channel_gates_bias")
    return jnp.asarray(1 + z if one else z, jnp.float32)

  return spec, module, jax.tree_util.tree_map_with_path(draw, shapes)


def _windows(seed=0, b=B):
  """Left-padded windows as the samplers cut them: repeated items, padded ids arbitrary (not 0)."""
  rng = np.random.default_rng(seed)
  n = rng.integers(1, L + 1, b)
  n[0], n[1] = L, 1
  mask = np.arange(L)[None] >= (L - n)[:, None]
  hist = rng.integers(0, I // 3, (b, L))  # a third of the catalogue: repeats within a window
  return {"history": jnp.asarray(hist, jnp.int32), "history_mask": jnp.asarray(mask),
          "user": jnp.arange(b, dtype=jnp.int32) % U}, n


def test_ntm_write_erase_one_add_a_over_one_slot_and_general_brute_force():
  rng = np.random.default_rng(1)
  mem = rng.normal(size=(3, M_SLOTS, D)).astype(np.float32)
  a = np.tanh(rng.normal(size=(3, D))).astype(np.float32)
  slot = np.array([0, 2, 3])
  w = np.eye(M_SLOTS, dtype=np.float32)[slot]
  out = np.asarray(mimn.ntm_write(jnp.asarray(mem), jnp.asarray(w), jnp.ones((3, D)), jnp.asarray(a)))
  want = mem.copy()
  want[np.arange(3), slot] = a  # erase everything in the slot, then add a
  np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
  # Soft weights, partial erase: element by element.
  w = rng.dirichlet(np.ones(M_SLOTS), 3).astype(np.float32)
  e = rng.uniform(size=(3, D)).astype(np.float32)
  out = np.asarray(mimn.ntm_write(jnp.asarray(mem), jnp.asarray(w), jnp.asarray(e), jnp.asarray(a)))
  want = np.empty_like(mem)
  for b in range(3):
    for i in range(M_SLOTS):
      for k in range(D):
        want[b, i, k] = mem[b, i, k] * (1 - w[b, i] * e[b, k]) + w[b, i] * a[b, k]
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
  r = np.asarray(mimn.ntm_read(jnp.asarray(mem), jnp.asarray(w)))
  np.testing.assert_allclose(r, np.einsum("bi,bik->bk", w, mem), rtol=1e-5, atol=1e-6)


def test_addressing_weights_sum_to_one_and_match_numpy():
  rng = np.random.default_rng(2)
  key = np.tanh(rng.normal(size=(3, D))).astype(np.float32)
  beta = (2 * (np.log1p(np.exp(rng.normal(size=3))) + 1)).astype(np.float32)
  key_mem = np.tanh(rng.normal(size=(M_SLOTS, D))).astype(np.float32)
  mem = rng.normal(size=(3, M_SLOTS, D)).astype(np.float32)
  mem[:, 1] = mem[:, 2]
  key_mem[1] = key_mem[2]  # equal slots (content and key) get equal weights
  w = np.asarray(mimn.content_address(*map(jnp.asarray, (key, beta, key_mem, mem))))
  np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
  want = np.zeros((3, M_SLOTS))
  for b in range(3):
    for i in range(M_SLOTS):
      c1 = key[b] @ key_mem[i] / (np.linalg.norm(key[b]) * np.linalg.norm(key_mem[i]) + 1e-8)
      c2 = key[b] @ mem[b, i] / (np.linalg.norm(key[b]) * np.linalg.norm(mem[b, i]) + 1e-8)
      want[b, i] = np.exp(beta[b] * 0.5 * (c1 + c2))
  np.testing.assert_allclose(w, want / want.sum(-1, keepdims=True), rtol=1e-5)
  assert w[0, 1] == w[0, 2]


def test_shift_sharpen_is_the_circular_convolution_then_power():
  rng = np.random.default_rng(3)
  w = rng.dirichlet(np.ones(M_SLOTS), 3).astype(np.float32)
  s = rng.dirichlet(np.ones(3), 3).astype(np.float32)  # shifts 0, +1, -1
  gamma = np.array([1.0, 4.0, 9.5], np.float32)
  out = np.asarray(mimn.shift_sharpen(jnp.asarray(w), jnp.asarray(s), jnp.asarray(gamma)))
  want = np.zeros_like(w)
  for b in range(3):
    for i in range(M_SLOTS):
      want[b, i] = w[b, i] * s[b, 0] + w[b, (i - 1) % M_SLOTS] * s[b, 1] + w[b, (i + 1) % M_SLOTS] * s[b, 2]
  want = want ** gamma[:, None]
  np.testing.assert_allclose(out, want / want.sum(-1, keepdims=True), rtol=1e-5)
  # gamma at the clip bound (84): w^gamma underflows in float32, the log form does not.
  big = np.asarray(mimn.shift_sharpen(jnp.asarray(w), jnp.asarray(s), jnp.full((3,), 84.0)))
  assert np.all(np.isfinite(big)) and np.allclose(big.sum(-1), 1.0)


def test_utilization_loss_is_the_authors_capacity_loss():
  rng = np.random.default_rng(4)
  g = rng.uniform(0, 5, (6, M_SLOTS)).astype(np.float32)
  got = float(mimn.utilization_loss(jnp.asarray(g), None, 0.001))
  want = 0.001 * np.mean((g - g.mean(-1, keepdims=True)) ** 2 / M_SLOTS / 6)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  mask = np.array([1, 1, 1, 0, 0, 0], bool)  # padded rows do not count
  got = float(mimn.utilization_loss(jnp.asarray(g), jnp.asarray(mask), 0.001))
  want = 0.001 * np.mean((g[:3] - g[:3].mean(-1, keepdims=True)) ** 2) / M_SLOTS / 6
  np.testing.assert_allclose(got, want, rtol=1e-5)


@functools.lru_cache(maxsize=None)
def _jitted(module, method):
  """``module.apply(params, *args, method=method)`` jitted (one compile per shape, not op by op)."""
  return jax.jit(lambda params, *args: module.apply(params, *args, method=getattr(module, method)))


def _state(module, params, q):
  return _jitted(module, "memory_state")(params, q["history"], q["history_mask"])


def test_padded_steps_leave_the_state_unchanged():
  _, module, params = _model()
  q, n = _windows(5)
  full = _state(module, params, q)  # the score is a read-out of this state (next test)
  # More left padding (with arbitrary ids under it) changes nothing.
  pad = 3
  longer = {"history": jnp.concatenate([jnp.full((B, pad), 4, jnp.int32), q["history"]], 1),
            "history_mask": jnp.concatenate([jnp.zeros((B, pad), bool), q["history_mask"]], 1)}
  for got, want in zip(_state(module, params, longer), full):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  # The unpadded window of a short row equals its padded row.
  b = int(np.flatnonzero(n == 1)[0])
  qb = {"history": q["history"][b:b + 1, L - 1:], "history_mask": q["history_mask"][b:b + 1, L - 1:]}
  assert bool(qb["history_mask"].all())
  for got, want in zip(_state(module, params, qb), full):
    np.testing.assert_allclose(got[0], want[b], rtol=1e-5, atol=1e-6)
  # Changing the ids under the padding changes nothing.
  other = dict(q, history=jnp.where(q["history_mask"], q["history"], (q["history"] + 5) % I))
  for got, want in zip(_state(module, params, other), full):
    np.testing.assert_array_equal(got, want)


def test_scan_equals_a_python_loop_over_steps_and_the_miu_updates_top1_channel_only():
  _, module, params = _model()
  q, _ = _windows(6)
  emb = params["params"]["item_emb"]["embedding"]
  x = emb[q["history"]] * q["history_mask"][..., None]
  state = module.apply(params, B, method=module.initial_state)
  for t in range(L):
    prev = state
    state = _jitted(module, "step")(params, state, x[:, t], q["history_mask"][:, t])
    changed = np.any(np.asarray(state.channels != prev.channels), axis=-1)  # [B, m]
    assert np.all(changed.sum(-1) <= 1)  # top-1: at most one channel per step
    np.testing.assert_array_equal(changed.any(-1) & ~np.asarray(q["history_mask"][:, t]), False)
  for got, want in zip(_state(module, params, q), state):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # The memory moved away from its (near-zero) start and the accumulated write weights count the steps.
  assert float(jnp.abs(state.memory).max()) > 1e-2
  np.testing.assert_allclose(state.w_aggre.sum(-1), q["history_mask"].sum(-1), rtol=1e-5)


def test_candidates_only_reach_the_readout():
  _, module, params = _model()
  q, _ = _windows(7)
  q = dict(q, mask=jnp.ones((B,), bool))
  cands = jnp.asarray(np.random.default_rng(7).integers(0, I, (B, 9)), jnp.int32)
  score_and_reg = _jitted(module, "score_and_reg")
  s_all, reg_all = score_and_reg(params, q, cands)
  # Each candidate scored alone, or among others, or as a shared candidate: the same score.
  for c in range(9):
    s_one, reg_one = score_and_reg(params, q, cands[:, c:c + 1])
    np.testing.assert_allclose(s_one[:, 0], s_all[:, c], rtol=1e-5, atol=1e-6)
    assert float(reg_one) == float(reg_all)  # the regulariser reads the memory only
  shared = _jitted(module, "score")(params, q, cands[0])
  np.testing.assert_allclose(shared[0], s_all[0], rtol=1e-5, atol=1e-6)
  # The state after the history does not depend on the candidates (it is computed without them), and
  # the score is the read-out of that state.
  state = _state(module, params, q)
  his = jnp.sum(params["params"]["item_emb"]["embedding"][q["history"]] * q["history_mask"][..., None], 1)
  emb = params["params"]["item_emb"]["embedding"][cands]
  np.testing.assert_allclose(_jitted(module, "readout")(params, state, his, emb), s_all,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(reg_all), float(mimn.utilization_loss(state.w_aggre, q["mask"])),
                             rtol=1e-6)


def test_loss_is_the_sequence_loss_plus_the_regulariser_with_finite_gradients():
  spec, module, params = _model()
  q, _ = _windows(8)
  rng = np.random.default_rng(8)
  batch = dict(q, positive=jnp.asarray(rng.integers(0, I, B), jnp.int32),
               negatives=jnp.asarray(rng.integers(0, I, (B, N)), jnp.int32),
               mask=jnp.asarray(np.arange(B) < B - 1))
  loss_fn = spec.loss_fn(module)
  (value, aux), grads = jax.jit(jax.value_and_grad(lambda p: loss_fn(p, batch, None), has_aux=True))(params)
  cands = jnp.concatenate([batch["positive"][:, None], batch["negatives"]], 1)
  scores, reg = _jitted(module, "score_and_reg")(params, batch, cands)
  assert float(reg) > 0
  np.testing.assert_allclose(float(value), float(losses.sampled_softmax(scores, batch["mask"]) + reg), rtol=1e-6)
  np.testing.assert_allclose(float(aux["util_reg"]), float(reg), rtol=1e-6)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
  assert float(jnp.abs(grads["params"]["key_memory"]).max()) > 0  # the memory path is trained
  assert float(jnp.abs(grads["params"]["channel_gates_kernel"]).max()) > 0  # and the MIU


class JitTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_score_jit_agrees(self):
    _, module, params = _model()
    q, _ = _windows(9)
    fn = self.variant(lambda p, qq, items: module.apply(p, qq, items, method=module.score))
    shared = fn(params, q, jnp.arange(I, dtype=jnp.int32))
    chex.assert_shape(shared, (B, I))
    ref = module.apply(params, q, jnp.arange(I, dtype=jnp.int32), method=module.score)
    np.testing.assert_allclose(shared, ref, rtol=1e-5, atol=1e-5)
