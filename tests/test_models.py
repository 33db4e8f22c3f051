"""Tests for the base recommenders (mf, ncf, sequential) and their registry."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

from jaxrec.models import losses, mf, ncf, registry, sequential

U, I, B, L, N, D = 6, 13, 3, 5, 4, 8

TINY = {
    "mf-bpr": {"dim": D},
    "mf-log": {"dim": D},
    "ncf": {"mf_dim": 4, "mlp_layers": (8, 8, 4)},
    "gru4rec": {"dim": D, "hidden": D, "dropout": 0.0},
    "caser": {"dim": D, "max_len": L, "num_h": 2, "num_v": 2, "dropout": 0.0, "user_dim": 2},
    "sasrec": {"dim": D, "max_len": L, "num_blocks": 1, "num_heads": 2, "dropout": 0.0},
    "sumpool": {"dim": D},
    "bert4rec": {"dim": D, "max_len": L + 1, "num_blocks": 1, "num_heads": 2, "dropout": 0.0},
    "dien": {"dim": D, "hidden": D, "max_len": L, "attention_layers": (8, 4), "mlp_layers": (8, 4),
             "aux_layers": (8, 4), "candidate_chunk": 2},
    "mimn": {"dim": D, "hidden": D, "memory_slots": 4, "att_hidden": (8, 4), "mlp_hidden": (8, 4)},
}
SEQUENCE = [n for n in TINY if registry.get(n).family == "sequence"]
# Sequence models whose state is candidate-independent (``encode``): DIEN's AUGRU reads the candidate.
ENCODERS = [n for n in SEQUENCE if n != "dien"]
# ``encode`` is the scored state (``score = state . item embedding``): not MIMN's (a memory readout).
DOT_STATE = [n for n in ENCODERS if n != "mimn"]


def _batch(seed=0, batch_size=B):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(0, L + 1, size=batch_size)
  lengths[0] = L  # one full window
  lengths[-1] = 2
  hist_mask = np.arange(L)[None, :] >= (L - lengths)[:, None]  # right-aligned, left padding
  positive = rng.integers(0, I, batch_size)
  return {
      "user": jnp.asarray(rng.integers(0, U, batch_size), jnp.int32),
      "history": jnp.asarray(np.where(hist_mask, rng.integers(0, I, (batch_size, L)), 0), jnp.int32),
      "history_mask": jnp.asarray(hist_mask),
      "positive": jnp.asarray(positive, jnp.int32),
      "negatives": jnp.asarray((positive[:, None] + rng.integers(1, I, (batch_size, N))) % I, jnp.int32),
      "mask": jnp.ones(batch_size, bool),
  }


@functools.lru_cache(maxsize=None)
def _built(name):
  spec = registry.get(name)
  module = spec.make(U, I, **TINY[name])
  # Parameters drawn on the host in the shapes spec.init gives (spec.init itself is tested once, on MF):
  # compiling every model's initialisers costs more than the rest of this file.
  shapes = jax.eval_shape(lambda k: spec.init(k, module, _batch()), jax.random.key(0))
  rng = np.random.default_rng(0)
  def draw(path, x):
    noise = rng.normal(size=x.shape).astype(np.float32)
    return jnp.asarray(1 + 0.1 * noise if path[-1].key == "scale" else 0.3 * noise)
  return spec, module, jax.tree_util.tree_map_with_path(draw, shapes)


def _score_all(module, params, batch):
  """Shared [C] scores, per-query [B, N] scores, broadcast [B, C] scores (and the state)."""
  shared_items = jnp.array([4, 0, 12, 7, 7], jnp.int32)
  out = {
      "shared": module.apply(params, batch, shared_items, method=module.score),
      "per_query": module.apply(params, batch, batch["negatives"], method=module.score),
      "broadcast": module.apply(params, batch, jnp.broadcast_to(shared_items, (B, 5)), method=module.score),
  }
  if isinstance(module, sequential.SequenceModel) and type(module).__name__ != "DIEN":
    out["state"] = module.apply(params, batch["history"], batch["history_mask"], batch["user"],
                                method=module.encode)
  return out


@functools.lru_cache(maxsize=None)
def _eager_reference(name):
  _, module, params = _built(name)
  return _score_all(module, params, _batch(1))


class ScoreTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*[(n, n) for n in TINY])
  def test_shapes_jit_agree_and_shared_equals_broadcast(self, name):
    _, module, params = _built(name)
    out = self.variant(functools.partial(_score_all, module))(params, _batch(1))
    chex.assert_shape([out["shared"], out["per_query"], out["broadcast"]], [(B, 5), (B, N), (B, 5)])
    if name in DOT_STATE:
      chex.assert_shape(out["state"], (B, D))
    chex.assert_tree_all_finite(out)
    # jit and non-jit agree with the eager reference
    chex.assert_trees_all_close(out, _eager_reference(name), rtol=1e-5, atol=1e-5)
    # shared [C] candidates == per-query candidates broadcast to [B, C]
    np.testing.assert_allclose(out["shared"], out["broadcast"], rtol=1e-5, atol=1e-6)
    assert not np.allclose(out["shared"][:, 0], out["shared"][:, 1])  # scores depend on the item


def test_mf_matches_formula_and_bias():
  _, module, params = _built("mf-log")
  assert isinstance(module, mf.MF) and module.use_bias
  rng = np.random.default_rng(2)
  params = jax.tree.map(lambda x: x + 0.3 * rng.normal(size=x.shape).astype(np.float32), params)
  p = params["params"]
  batch = _batch(4)
  items = jnp.arange(I)
  ref = (p["user_emb"]["embedding"][batch["user"]] @ p["item_emb"]["embedding"].T
         + p["user_bias"][batch["user"]][:, None] + p["item_bias"][None] + p["global_bias"])
  out = module.apply(params, batch, items, method=module.score)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_neumf_matches_paper_equation():
  _, module, params = _built("ncf")
  p = params["params"]
  batch = _batch(5)
  users, items = batch["user"], batch["negatives"]
  gmf = p["gmf_user"]["embedding"][users][:, None] * p["gmf_item"]["embedding"][items]
  x = jnp.concatenate([jnp.broadcast_to(p["mlp_user"]["embedding"][users][:, None], items.shape + (4,)),
                       p["mlp_item"]["embedding"][items]], axis=-1)
  w1 = jnp.concatenate([p["mlp_0_user"]["kernel"], p["mlp_0_item"]["kernel"]], axis=0)  # W_1 on [p; q]
  h = jax.nn.relu(x @ w1 + p["mlp_0_item"]["bias"])
  h = jax.nn.relu(h @ p["mlp_1"]["kernel"] + p["mlp_1"]["bias"])
  ref = (jnp.concatenate([gmf, h], -1) @ p["predict"]["kernel"] + p["predict"]["bias"])[..., 0]
  out = module.apply(params, batch, items, method=module.score)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
  assert isinstance(module, ncf.NeuMF)


def test_neumf_dropout_is_on_in_training_only():
  """``dropout`` (RecBole's NeuMF) leaves the parameters and every evaluation score unchanged; in
  training (a key) one user's two copies of the same candidate score differently; the loss is a function
  of the key; without dropout the key changes nothing. (Whether the user input's mask is per pair or per
  user is not told apart here: the hidden layers' masks are per pair either way.)"""
  spec, module, params = _built("ncf")
  dropped = spec.make(U, I, **TINY["ncf"], dropout=0.5)
  batch = _batch(5)
  items = batch["negatives"]
  clean = module.apply(params, batch, items, method=module.score)
  np.testing.assert_array_equal(dropped.apply(params, batch, items, method=dropped.score), clean)
  key = jax.random.key(3)
  train = dropped.apply(params, batch, items, deterministic=False, rngs={"dropout": key},
                        method=dropped.score)
  assert not np.allclose(train, clean)
  twice = dropped.apply(params, {"user": batch["user"][:1]}, jnp.array([[3, 3]]), deterministic=False,
                        rngs={"dropout": key}, method=dropped.score)
  assert twice[0, 0] != twice[0, 1]
  loss_fn = spec.loss_fn(dropped)
  assert float(loss_fn(params, batch, key)[0]) != float(loss_fn(params, batch, None)[0])
  assert float(loss_fn(params, batch, key)[0]) == float(loss_fn(params, batch, key)[0])
  np.testing.assert_array_equal(spec.loss_fn(module)(params, batch, key)[0],
                                spec.loss_fn(module)(params, batch, None)[0])


@pytest.mark.parametrize("name", ENCODERS)
def test_padding_ids_do_not_matter(name):
  _, module, params = _built(name)
  batch = _batch(6)
  mask = batch["history_mask"]
  assert not bool(mask.all())
  encode = lambda h: module.apply(params, h, mask, batch["user"], method=module.encode)
  junk = jnp.where(mask, batch["history"], (batch["history"] + 5) % I)
  np.testing.assert_allclose(encode(junk), encode(batch["history"]), rtol=1e-5, atol=1e-6)
  real_changed = batch["history"].at[:, -1].set((batch["history"][:, -1] + 1) % I)
  assert not np.allclose(encode(real_changed), encode(batch["history"]), atol=1e-4)


@pytest.mark.parametrize("name", ENCODERS)
def test_padding_equals_truncation(name):
  """Padded steps are skipped, not fed as zero inputs: a left-padded window equals the shorter one."""
  _, module, params = _built(name)
  batch = _batch(7)
  h, m = batch["history"], batch["history_mask"].at[:, :2].set(False)
  enc = lambda h, m: module.apply(params, h, m, batch["user"], method=module.encode)
  np.testing.assert_allclose(enc(h[:, 2:], m[:, 2:]), enc(h, m), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["gru4rec", "sasrec"])
def test_causality(name):
  _, module, params = _built(name)
  batch = _batch(8)
  h, m = batch["history"], jnp.ones_like(batch["history_mask"])
  seq = lambda hist: module.apply(params, hist, m, method=module.encode_sequence)
  t = 2
  later = h.at[:, t + 1:].set((h[:, t + 1:] + 3) % I)
  before, after = seq(h), seq(later)
  chex.assert_shape(before, (B, L, D))
  np.testing.assert_allclose(after[:, :t + 1], before[:, :t + 1], rtol=1e-5, atol=1e-6)
  assert not np.allclose(after[:, -1], before[:, -1], atol=1e-4)
  state = module.apply(params, h, m, method=module.encode)
  np.testing.assert_allclose(state, before[:, -1], rtol=1e-6)


def test_sasrec_dropout_only_when_not_deterministic():
  _, module, params = _built("sasrec")
  module = module.clone(dropout=0.5)
  batch = _batch(9)
  run = lambda det, k: module.apply(params, batch, jnp.arange(I), deterministic=det,
                                    rngs={"dropout": jax.random.key(k)}, method=module.score)
  np.testing.assert_allclose(run(True, 1), run(True, 2))
  assert not np.allclose(run(False, 1), run(False, 2))


def test_masked_rows_do_not_change_model_loss():
  spec, module, params = _built("sasrec")
  loss_fn = spec.loss_fn(module)
  batch = dict(_batch(10), mask=jnp.array([True, True, False]))
  other = dict(batch, positive=batch["positive"].at[2].set((batch["positive"][2] + 1) % I))
  np.testing.assert_allclose(loss_fn(params, batch, None)[0], loss_fn(params, other, None)[0], rtol=1e-6)


def _fit(spec, module, params, loss, batch, steps=150):
  loss_fn = spec.loss_fn(module, loss)
  opt = optax.adam(0.05)

  @jax.jit
  def run(params):
    def step(carry, k):
      p, s = carry
      (_, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(p, batch, jax.random.key(k))
      u, s = opt.update(g, s, p)
      return (optax.apply_updates(p, u), s), aux["loss"]
    (_, _), trace = jax.lax.scan(step, (params, opt.init(params)), jnp.arange(steps))
    return trace

  return np.asarray(run(params))


@pytest.mark.parametrize("name", [n for n in TINY if n != "bert4rec"])  # Cloze: test_bert4rec's planted rule
def test_overfits_toy_batch(name):
  spec, module, params = _built(name)
  batch = _batch(11, batch_size=8)
  trace = _fit(spec, module, params, spec.default_loss, batch)
  assert trace[-1] < 0.3 * trace[0], (trace[0], trace[-1])


def test_sequence_losses_choice():
  spec, module, params = _built("sumpool")
  batch = _batch(12, batch_size=8)
  trace = _fit(spec, module, params, "bpr", batch, steps=100)
  assert trace[-1] < 0.5 * trace[0], (trace[0], trace[-1])
  full, _ = spec.loss_fn(module, "full_softmax")(params, batch, None)
  logits = module.apply(params, batch, jnp.arange(I), method=module.score)
  np.testing.assert_allclose(full, losses.full_softmax(logits, batch["positive"]), rtol=1e-6)
  _, aux = spec.loss_fn(module)(params, batch, None)
  assert set(aux) == {"loss", "pos_score", "neg_score", "pairwise_acc"}
  with pytest.raises(ValueError, match="unknown loss"):
    spec.loss_fn(module, "hinge")
  with pytest.raises(ValueError, match="unknown loss"):
    registry.get("mf-bpr").loss_fn(module, "full_softmax")


def test_registry():
  assert registry.names() == sorted(TINY)
  spec = registry.get("mf-bpr")
  assert (spec.family, spec.default_loss) == ("user", "bpr")
  assert registry.get("mf-log").default_loss == "log" and registry.get("ncf").default_loss == "log"
  assert all(registry.get(n).default_loss == "softmax" for n in SEQUENCE if n != "bert4rec")
  assert registry.get("bert4rec").default_loss == "full_softmax"  # the authors' Cloze cross-entropy
  with pytest.raises(KeyError, match="unknown model"):
    registry.get("din")
  with pytest.raises(ValueError, match="unknown hyper-parameters"):
    spec.make(U, I, loss="log")
  with pytest.raises(ValueError, match="already registered"):
    registry.register(spec)
  module = spec.make(U, I, dim=D)
  params = spec.init(jax.random.key(0), module, registry.sample_batch("user"))
  assert isinstance(params, dict) and set(params) == {"params"}
  chex.assert_trees_all_equal_shapes(params, _built("mf-bpr")[2])
  assert float(jnp.std(params["params"]["user_emb"]["embedding"])) > 0.01
  assert registry.sample_batch("sequence")["history"].shape == (2, 5)
  module = registry.get("sasrec").make(U, I)
  assert (module.dim, module.num_blocks) == (50, 2)
  assert [n for n in registry.names() if registry.get(n).all_positions] == ["bert4rec", "gru4rec", "sasrec"]


# -- all-position training (GRU4Rec, SASRec) ---------------------------------------------------------


def _sequence_batch(seed=0, batch_size=B):
  """An all-position batch: left-padded chunks, one padded row, one extra masked target."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, L + 1, size=batch_size)
  lengths[0] = L
  hist_mask = np.arange(L)[None, :] >= (L - lengths)[:, None]
  target_mask = hist_mask.copy()
  target_mask[0, L - 2] = False  # the loss reads target_mask, not history_mask
  targets = rng.integers(0, I, (batch_size, L))
  return {
      "user": jnp.asarray(rng.integers(0, U, batch_size), jnp.int32),
      "history": jnp.asarray(np.where(hist_mask, rng.integers(0, I, (batch_size, L)), 0), jnp.int32),
      "history_mask": jnp.asarray(hist_mask),
      "targets": jnp.asarray(targets, jnp.int32),
      "target_mask": jnp.asarray(target_mask),
      "negatives": jnp.asarray((targets[..., None] + rng.integers(1, I, (batch_size, L, N))) % I, jnp.int32),
      "mask": jnp.asarray(np.arange(batch_size) < batch_size - 1),
  }


def _window_model(name, module, params, t):
  """The module + params whose one-window ``encode`` of ``history[:, :t + 1]`` is the state at ``t``.

  GRU4Rec has no positions. SASRec's positions are right-aligned: in the length-``L`` sequence item ``t``
  has position ``max_len - L + t``, which is the last position of a window when ``max_len`` is
  ``max_len - (L - 1 - t)`` (the positional table cut to its first rows).
  """
  if name != "sasrec":
    return module, params
  max_len = module.max_len - (L - 1 - t)
  p = jax.tree.map(lambda x: x, params)
  p["params"]["pos_emb"] = {"embedding": params["params"]["pos_emb"]["embedding"][:max_len]}
  return module.clone(max_len=max_len), p


@pytest.mark.parametrize("loss", ["softmax", "bpr", "full_softmax"])
@pytest.mark.parametrize("name", ["gru4rec", "sasrec"])
def test_all_positions_loss_is_mean_of_window_losses(name, loss):
  spec, module, params = _built(name)
  batch = _sequence_batch(13)
  value, aux = jax.jit(spec.loss_fn(module, loss))(params, batch, None)
  total, count = 0.0, 0.0
  for t in range(L):  # the existing one-target-per-window path, window ending at t
    win_module, win_params = _window_model(name, module, params, t)
    rows = batch["mask"] & batch["target_mask"][:, t]
    window = {"user": batch["user"], "history": batch["history"][:, :t + 1],
              "history_mask": batch["history_mask"][:, :t + 1], "positive": batch["targets"][:, t],
              "negatives": batch["negatives"][:, t], "mask": rows}
    v, _ = spec.loss_fn(win_module, loss)(win_params, window, None)
    total += float(v) * float(rows.sum())
    count += float(rows.sum())
  assert count == float(jnp.sum(batch["target_mask"] & batch["mask"][:, None])) > L  # several rows
  np.testing.assert_allclose(value, total / count, rtol=1e-5)
  assert float(aux["loss"]) == float(value)


def test_all_positions_loss_ignores_masked_targets_and_rows():
  spec, module, params = _built("sasrec")
  loss_fn = jax.jit(spec.loss_fn(module))
  batch = _sequence_batch(14)
  ref, aux = loss_fn(params, batch, None)
  assert set(aux) == {"loss", "pos_score", "neg_score", "pairwise_acc"}
  off = ~(batch["target_mask"] & batch["mask"][:, None])
  other = dict(batch, targets=jnp.where(off, (batch["targets"] + 1) % I, batch["targets"]),
               negatives=jnp.where(off[..., None], (batch["negatives"] + 2) % I, batch["negatives"]))
  np.testing.assert_allclose(loss_fn(params, other, None)[0], ref, rtol=1e-6)
  on = dict(batch, targets=batch["targets"].at[0, -1].set((batch["targets"][0, -1] + 1) % I))
  assert not np.allclose(loss_fn(params, on, None)[0], ref)


@pytest.mark.parametrize("name", ["caser", "sumpool"])
def test_all_positions_needs_encode_sequence(name):
  spec, module, params = _built(name)
  assert not spec.all_positions
  with pytest.raises(ValueError, match="encode_sequence"):
    spec.loss_fn(module)(params, _sequence_batch(15), None)


def test_all_positions_overfits_and_inits():
  spec, module, params = _built("gru4rec")
  batch = _sequence_batch(16, batch_size=8)
  trace = _fit(spec, module, params, spec.default_loss, batch)
  assert trace[-1] < 0.3 * trace[0], (trace[0], trace[-1])
  sample = registry.sample_batch("sequence", all_positions=True)
  assert sample["negatives"].shape == (2, 5, 2) and "positive" not in sample
  init = spec.init(jax.random.key(0), module, sample)
  chex.assert_trees_all_equal_shapes(init, params)
