"""BERT4Rec (Sun et al. 2019): Cloze masks, no target leak, bidirectional attention, prediction via [MASK]."""

import functools
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrec.models import bert4rec, losses, registry

U, I, L, D, N = 5, 17, 6, 8, 3


def _params(spec, module, noise, seed=0):
  """Parameters in ``spec.init``'s shapes drawn on the host (compiling a transformer's initialisers
  costs more than the rest of this file): LayerNorm scales ``1 + noise``, the rest ``noise``."""
  shapes = jax.eval_shape(lambda k: spec.init(k, module, registry.sample_batch(
      "sequence", history_len=L, all_positions=True)), jax.random.key(0))
  rng = np.random.default_rng(seed)

  def draw(path, x):
    z = noise * rng.normal(size=x.shape)
    return jnp.asarray(1 + z if path[-1].key == "scale" else z, jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


@functools.lru_cache(maxsize=None)
def _model():
  spec = registry.get("bert4rec")
  module = spec.make(U, I, dim=D, max_len=L + 1, num_blocks=2, num_heads=2, dropout=0.0)
  return spec, module, _params(spec, module, 0.3)  # away from a small init: every layer matters


def _chunks(seed=0, b=6):
  """All-position chunks as jaxrec.train.fit cuts them: left-padded, items repeat (real logs do)."""
  rng = np.random.default_rng(seed)
  n = rng.integers(1, L + 1, b)
  n[0], n[1] = L, 1
  mask = np.arange(L)[None] >= (L - n)[:, None]
  seq = rng.integers(0, I // 2, (b, L + 1))  # half the catalogue: exact duplicates within a chunk
  return {"user": jnp.arange(b, dtype=jnp.int32) % U,
          "history": jnp.asarray(np.where(mask, seq[:, :-1], 0), jnp.int32),
          "history_mask": jnp.asarray(mask),
          "targets": jnp.asarray(np.where(mask, seq[:, 1:], 0), jnp.int32),
          "target_mask": jnp.asarray(mask),
          "negatives": jnp.asarray(rng.integers(0, I, (b, L, N)), jnp.int32),
          "mask": jnp.asarray(np.arange(b) != b - 1)}  # the last row is padding


def _encode_tokens(module):
  return jax.jit(lambda p, x, m: module.apply(p, x, m, method=module.encode_tokens))


def test_cloze_mask_counts_follow_the_authors_rule_and_only_real_positions():
  rng = np.random.default_rng(1)
  t = 40
  n = np.concatenate([[0, 1, 2, 3, 7, 8, 12, 13, 40], rng.integers(0, t + 1, 30)])
  real = np.arange(t)[None] >= (t - n)[:, None]
  freq = np.zeros(real.shape)
  for k in range(200):
    m = np.asarray(bert4rec.cloze_mask(jax.random.key(k), jnp.asarray(real), 0.2, 5))
    want = np.where(n > 0, np.minimum(5, np.maximum(1, [round(v * 0.2) for v in n])), 0)
    np.testing.assert_array_equal(m.sum(1), want)  # Python's round, as the authors' code
    assert not (m & ~real).any()
    freq += m
  # Uniform over the real positions: each is masked k/n of the time (200 draws, 5 standard errors).
  row = 6  # n = 12, k = 2
  p = 2 / 12
  np.testing.assert_allclose(freq[row, real[row]] / 200, p, atol=5 * np.sqrt(p * (1 - p) / 200))


def test_cloze_inputs_hide_every_masked_item_and_the_loss_is_its_cross_entropy():
  spec, module, params = _model()
  batch = _chunks()
  key = jax.random.key(3)
  tokens, token_mask, negs, masked, inputs = bert4rec.cloze_inputs(module, batch, key)
  # The sequence is the chunk's inputs then its last target.
  np.testing.assert_array_equal(tokens[:, :L], batch["history"])
  np.testing.assert_array_equal(tokens[:, L], batch["targets"][:, -1])
  assert not np.asarray(token_mask)[-1].any()  # a padding row has no real position
  assert (np.asarray(masked).sum(1)[:-1] >= 1).all()
  m = np.asarray(masked)
  np.testing.assert_array_equal(np.asarray(inputs)[m], module.mask_id)
  np.testing.assert_array_equal(np.asarray(inputs)[~m], np.asarray(tokens)[~m])
  # The loss (rng=None: its fixed mask key) is the cross-entropy at the masked positions, from a
  # brute-force forward pass over those inputs.
  mask_key = jax.random.split(jax.random.PRNGKey(0))[0]
  tokens, token_mask, _, masked, inputs = bert4rec.cloze_inputs(module, batch, mask_key)
  states = _encode_tokens(module)(params, inputs, token_mask)
  table = params["params"]["item_emb"]["embedding"][:I]
  logits = np.asarray(states) @ np.asarray(table).T + np.asarray(params["params"]["out_bias"])
  m = np.asarray(masked)
  lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  ce = lse - np.take_along_axis(logits, np.asarray(tokens)[..., None], -1)[..., 0]
  value, aux = jax.jit(spec.loss_fn(module))(params, batch, None)
  np.testing.assert_allclose(value, ce[m].mean(), rtol=1e-5)
  assert int(aux["masked"]) == m.sum()
  # Sampled softmax: the positive then the position's negatives (position 0 borrows position 1's).
  negs = np.concatenate([np.asarray(batch["negatives"])[:, :1], np.asarray(batch["negatives"])], 1)
  cands = np.concatenate([np.asarray(tokens)[..., None], negs], -1)
  sub = np.take_along_axis(logits, cands, -1)
  sub_lse = np.log(np.exp(sub - sub.max(-1, keepdims=True)).sum(-1)) + sub.max(-1)
  value, _ = jax.jit(spec.loss_fn(module, "softmax"))(params, batch, None)
  np.testing.assert_allclose(value, (sub_lse - sub[..., 0])[m].mean(), rtol=1e-5)


def test_masking_never_reveals_the_target():
  """Changing the items at the Cloze positions changes only the labels, never the encoder's input."""
  spec, module, params = _model()
  batch = _chunks(4)
  mask_key = jax.random.split(jax.random.PRNGKey(0))[0]
  tokens, token_mask, _, masked, inputs = bert4rec.cloze_inputs(module, batch, mask_key)
  m = np.asarray(masked)
  new_tokens = np.where(m, (np.asarray(tokens) + 5) % I, np.asarray(tokens))
  # The loss reads history and the last target only (the chunk's sequence, cloze_inputs).
  other = dict(batch, history=jnp.asarray(new_tokens[:, :L]),
               targets=batch["targets"].at[:, -1].set(new_tokens[:, L]))
  # Labels from `other`, states from the original inputs (the encoder must not see what changed).
  states = _encode_tokens(module)(params, inputs, token_mask)
  logits = module.apply(params, states, jnp.arange(I), method=module.item_scores)
  want = losses.full_softmax(logits.reshape(-1, I), jnp.asarray(new_tokens).reshape(-1), masked.reshape(-1))
  loss_fn = jax.jit(spec.loss_fn(module))
  got, _ = loss_fn(params, other, None)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  base, _ = loss_fn(params, batch, None)
  assert abs(float(got) - float(base)) > 1e-3  # the labels did change


def test_attention_is_bidirectional_and_prediction_appends_the_mask():
  _, module, params = _model()
  batch = _chunks(5)
  h, m = batch["history"][:2], jnp.ones((2, L), bool)
  enc = lambda x: _encode_tokens(module)(params, x, m)  # noqa: E731
  later = h.at[:, -1].set((h[:, -1] + 3) % I)
  assert not np.allclose(enc(h)[:, 0], enc(later)[:, 0], atol=1e-4)  # position 0 sees the future
  state = module.apply(params, h, m, method=module.encode)
  tokens = jnp.concatenate([h, jnp.full((2, 1), module.mask_id, jnp.int32)], 1)
  ref = _encode_tokens(module)(params, tokens, jnp.ones((2, L + 1), bool))[:, -1]
  np.testing.assert_allclose(state, ref, rtol=1e-5, atol=1e-6)
  # A window longer than max_len - 1 keeps its most recent items.
  long = jnp.concatenate([jnp.zeros((2, 3), jnp.int32), h], 1)
  np.testing.assert_allclose(module.apply(params, long, jnp.ones((2, L + 3), bool), method=module.encode),
                             state, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="bidirectional"):
    module.apply(params, batch, jnp.arange(I), method=module.score_sequence)


def test_learns_a_planted_next_item_rule():
  """Every sequence walks i -> i + 1 (mod I); after training the appended [MASK] predicts the next item."""
  spec, module, _ = _model()
  params = _params(spec, module, 0.02, seed=1)  # the authors' initializer range
  rng = np.random.default_rng(6)
  start = rng.integers(0, I, 64)
  seq = (start[:, None] + np.arange(L + 1)[None]) % I
  batch = {"user": jnp.zeros(64, jnp.int32), "history": jnp.asarray(seq[:, :-1], jnp.int32),
           "history_mask": jnp.ones((64, L), bool), "targets": jnp.asarray(seq[:, 1:], jnp.int32),
           "target_mask": jnp.ones((64, L), bool), "negatives": jnp.asarray(rng.integers(0, I, (64, L, 8)),
                                                                            jnp.int32)}
  opt = optax.adam(1e-2)
  loss_fn = spec.loss_fn(module)

  @jax.jit
  def train(params):
    def step(carry, k):
      p, s = carry
      g = jax.grad(lambda p: loss_fn(p, batch, jax.random.key(k))[0])(p)
      u, s = opt.update(g, s, p)
      return (optax.apply_updates(p, u), s), None
    return jax.lax.scan(step, (params, opt.init(params)), jnp.arange(300))[0][0]

  params = train(params)
  scores = spec.score_fn(module)(params, batch, jnp.arange(I))  # s_0 .. s_{L-1}, [MASK] -> s_L
  hits = np.mean(np.argmax(np.asarray(scores), 1) == seq[:, -1])
  assert hits > 0.9, hits
