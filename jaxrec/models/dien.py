"""DIEN (Zhou et al. AAAI 2019, "Deep Interest Evolution Network for Click-Through Rate Prediction").

A candidate-dependent sequence model: the user state depends on the item being scored, so it is not a
dot product and ``score`` costs ``B x C x L`` recurrent steps. Layers and sizes follow the authors'
TensorFlow code (github.com/mouna99/dien, ``script/model.py``: ``Model_DIN_V2_Gru_Vec_attGru_Neg``,
``script/utils.py``: ``VecAttGRUCell``, ``din_fcn_attention``, ``prelu``; ``script/train.py``: hidden 36,
attention 36):

* **Embedding**: ``e_t = E[history_t]`` ``[B, L, dim]``, zero at padded positions; the candidate's
  ``e_a = E[item]`` from the same table.
* **Interest extractor** (Sec. 4.2, Eq. 2-5): a GRU over the history,
  ``u_t = s(W^u e_t + U^u h_{t-1} + b^u)``, ``r_t = s(W^r e_t + U^r h_{t-1} + b^r)``,
  ``c_t = tanh(W^h e_t + U^h (r_t * h_{t-1}) + b^h)``, ``h_t = (1 - u_t) * h_{t-1} + u_t * c_t``
  (the reset gate applied before ``U^h`` as in TensorFlow's ``GRUCell``, the authors' cell; gate biases
  initialised as that cell's: reset +1, and the update gate -1, which is its "keep" gate's +1). Masked
  (padded) steps keep the previous state; ``h_0 = 0``.
* **Auxiliary loss** (Eq. 1 and the authors' ``auxiliary_loss`` / ``auxiliary_net``): each extractor state
  ``h_t`` is paired with the *next* clicked item ``e_{t+1}`` (label 1) and a non-clicked item
  ``e~_{t+1}`` (label 0) through a small network ``p(h, e) = s(MLP([h, e]))`` (affine, 100 sigmoid,
  50 sigmoid, 1), ``L_aux = -mean_t [log p(h_t, e_{t+1}) + log(1 - p(h_t, e~_{t+1}))]`` over the pairs
  whose positions ``t`` and ``t + 1`` are both real. Pairs stay inside the history (``t + 1 <= L``),
  as in the authors' code (``rnn_outputs[:, :-1]`` with ``item_his_eb[:, 1:]``): the window's target is
  never an aux label, and the aux loss is a training loss only (``score`` never computes it).
* **Attention** (the authors' ``din_fcn_attention``, which replaces the paper's bilinear Eq. 8):
  ``q = PReLU(W_q e_a + b_q)`` ``[H]``, ``s_t = MLP([q, h_t, q - h_t, q * h_t])`` (80 sigmoid, 40 sigmoid,
  1), ``a_t = softmax_t(s_t)`` over the real positions (padded ``s_t = -2^32 + 1`` as the authors').
* **Interest evolution, AUGRU** (Sec. 4.3, Eq. 9): a second GRU over ``h_t`` whose update gate is
  scaled by the attention, ``u'_t = a_t * u_t``, ``h'_t = (1 - u'_t) * h'_{t-1} + u'_t * c'_t``; masked
  steps keep the state. ``a_t = 1`` everywhere is a plain GRU, ``a_t = 0`` keeps the state.
* **Output** (the authors' ``build_fcn_net``): ``x = [e_a, sum_t e_t, e_a * sum_t e_t, h'_L]``, an affine
  per-feature layer, Dense 200 + PReLU, Dense 80 + PReLU, Dense 1: the logit ``s(u, a)``.

Training: one target per window (``ModelSpec.all_positions=False``; the 2TS paper's Appendix B
per-example batching), ``loss = ranking_loss([s(u, pos), s(u, neg_1..N)]) + aux_weight * L_aux`` with
the registry's sequence losses (sampled softmax by default, as the other sequence models; the authors
train a pointwise CTR log loss, available as ``loss="log"``) and ``aux_weight = 1`` (authors).

Departures from the authors' code and why:

* Items only: the authors concatenate an 18-d item and an 18-d category embedding (input 36). Models
  are built from ``(num_users, num_items, hparams)`` and score item ids, so the log's optional
  ``item_features`` (e.g. ML-100K genres) are not available to a registered model; the item embedding
  gets the whole width (``dim=36``), so the GRUs see inputs of the authors' width.
* No user-id embedding in the output MLP (authors: ``uid_batch_embedded``): as every other jaxrec
  sequence model, the state comes from the history only, so users without training rows (the 2TS
  protocol's new users) are scored like the others.
* PReLU instead of Dice in the output MLP: Dice normalises by the statistics of the current batch (the
  authors' ``dice`` does so at test time too), which makes an item's score depend on the other items
  and queries in the batch; PReLU (the authors' own alternative, ``use_dice=False``, ``alpha`` init
  0.1) keeps scores a function of (history, item).
* The authors' ``tf.layers.batch_normalization`` is called without ``training=True``, so it always
  normalises with its initial moving statistics (mean 0, variance 1): a learned per-feature scale and
  shift. It is implemented as exactly that (``scale`` init ``1/sqrt(1 + 1e-3)``, ``bias`` 0).
* AUGRU follows the paper's Eq. 9 (``u' = a * u`` on the gate that takes the candidate state). The
  authors' ``VecAttGRUCell`` computes ``u = (1 - a) * u`` on TensorFlow's *keep* gate, i.e.
  ``u'_take = 1 - (1 - a)(1 - u_take)``: attention 0 gives a plain GRU and attention 1 replaces the state
  by the candidate. We implement the paper.
* Non-clicked items of the aux loss: the authors draw, per history position, one item from the
  occurrence list (popularity-proportional) other than the clicked one. Here pair ``t`` uses the
  example's sampled negative ``negatives[:, t mod N]`` (the shared sampler's uniform draw over the
  items outside the user's training positives, fresh every epoch), so no extra sampling is needed
  inside the jitted loss.
* The 2-way softmax outputs of the authors' output and aux networks are one logit here (the same
  family: ``softmax([z_0, z_1])_1 = sigmoid(z_1 - z_0)``); ``log`` of the authors' ``+ 1e-8``-shifted
  probabilities is ``log_sigmoid``. The aux loss averages over real pairs (the authors' ``reduce_mean``
  also counts padded pairs as zeros).

Cost: the attention and the AUGRU run once per (query, candidate) pair; the parts that do not depend on
the candidate (extractor, the history terms of the attention's first layer, the AUGRU's input
projections, the history sum) are computed once per query, and candidates are scored in chunks of at
most ``candidate_chunk`` with ``lax.map`` (memory ``O(B x candidate_chunk x L x 80)``).
"""

from __future__ import annotations

from typing import Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.models import losses
from jaxrec.models.sequential import SEQUENCE_LOSSES, LossFn, SequenceModel, _item_embed

Array = jax.Array

PAD_SCORE = -2.0 ** 32 + 1  # the authors' attention score at padded positions
_glorot = nn.initializers.glorot_uniform()  # TensorFlow's default kernel initialiser


def gru_step(p: Mapping[str, Array], x_proj: Array, h: Array, att: Array | float = 1.0) -> Array:
  """One (attentional) GRU step; ``x_proj = x @ p["wx"] + p["bx"]`` ``[..., 3H]`` (reset, update,
  candidate input terms), ``h`` ``[..., H]``, ``att`` broadcastable to ``h`` (1: a plain GRU, Eq. 2-5;
  else AUGRU, Eq. 9: the update gate scaled by ``att``)."""
  hid = h.shape[-1]
  gates = jax.nn.sigmoid(x_proj[..., :2 * hid] + h @ p["uh_gates"])
  r, u = gates[..., :hid], gates[..., hid:]
  c = jnp.tanh(x_proj[..., 2 * hid:] + (r * h) @ p["uh_cand"])
  u = att * u
  return (1.0 - u) * h + u * c


def gru_scan(p: Mapping[str, Array], x_proj: Array, mask: Array, h0: Array,
             att: Optional[Array] = None) -> Array:
  """States ``[..., L, H]`` of a (attentional) GRU over time axis ``-2`` of ``x_proj`` ``[..., L, 3H]``.

  ``mask`` ``[..., L]`` (broadcastable): masked steps keep the previous state. ``att`` ``[..., L]``: the
  AUGRU's attention (None: a plain GRU). ``h0`` ``[..., H]``.
  """
  length = x_proj.shape[-2]
  lead = jnp.broadcast_shapes(x_proj.shape[:-2], mask.shape[:-1], h0.shape[:-1],
                              () if att is None else att.shape[:-1])
  h0 = jnp.broadcast_to(h0, lead + h0.shape[-1:])
  a = jnp.ones((length,), h0.dtype) if att is None else att
  xs = (jnp.moveaxis(x_proj, -2, 0), jnp.moveaxis(jnp.asarray(mask, bool), -1, 0),
        jnp.moveaxis(jnp.asarray(a, h0.dtype), -1, 0))

  def step(h, inputs):
    x, m, at = inputs
    new = gru_step(p, x, h, at[..., None])
    h = jnp.where(m[..., None], new, h)
    return h, h

  _, hs = jax.lax.scan(step, h0, xs)
  return jnp.moveaxis(hs, 0, -2)


def prelu(x: Array, alpha: Array) -> Array:
  """The authors' ``prelu``: ``max(0, x) + alpha * min(0, x)``."""
  return jnp.maximum(0.0, x) + alpha * jnp.minimum(0.0, x)


def _chunking(num: int, chunk: int) -> tuple[int, int]:
  """``(n, k)``: ``n`` chunks of ``k <= chunk`` columns covering ``num`` with the least padding."""
  n = -(-num // max(1, min(chunk, num)))
  return n, -(-num // n)


class DIEN(SequenceModel):
  """DIEN: GRU interest extractor + auxiliary loss, candidate attention, AUGRU, MLP (module docstring).

  Attributes:
    dim: item embedding size (authors: 18 item + 18 category = 36; here the item alone).
    hidden: GRU hidden size of both layers (authors: 36).
    max_len: longest history read (``jaxrec.train.fit.history_len_for`` caps the window at it).
    attention_layers: hidden sizes of the attention MLP (authors: 80, 40).
    mlp_layers: hidden sizes of the output MLP (authors: 200, 80).
    aux_layers: hidden sizes of the auxiliary network (authors: 100, 50).
    aux_weight: weight ``alpha`` of the auxiliary loss (authors: 1).
    candidate_chunk: most candidates scored at once (memory bound of ``score``).
  """

  dim: int = 36
  hidden: int = 36
  max_len: int = 20
  attention_layers: tuple[int, ...] = (80, 40)
  mlp_layers: tuple[int, ...] = (200, 80)
  aux_layers: tuple[int, ...] = (100, 50)
  aux_weight: float = 1.0
  candidate_chunk: int = 64

  def _gru_params(self, name: str, in_dim: int) -> dict:
    hid = self.hidden
    # TensorFlow GRUCell: gate bias 1 (reset and keep); our update gate u = 1 - keep: bias -1.
    gate_bias = jnp.concatenate([jnp.ones(hid), -jnp.ones(hid), jnp.zeros(hid)])
    return {"wx": self.param(f"{name}_wx", _glorot, (in_dim, 3 * hid)),
            "bx": self.param(f"{name}_bx", lambda *_: gate_bias),
            "uh_gates": self.param(f"{name}_uh_gates", _glorot, (hid, 2 * hid)),
            "uh_cand": self.param(f"{name}_uh_cand", _glorot, (hid, hid))}

  def _dense(self, name: str, in_dim: int, out_dim: int) -> tuple[Array, Array]:
    return (self.param(f"{name}_kernel", _glorot, (in_dim, out_dim)),
            self.param(f"{name}_bias", nn.initializers.zeros, (out_dim,)))

  def _mlp(self, name: str, in_dim: int, sizes: tuple[int, ...]) -> list:
    dims = (in_dim,) + tuple(sizes) + (1,)
    return [self._dense(f"{name}_{k}", dims[k], dims[k + 1]) for k in range(len(dims) - 1)]

  def _affine(self, name: str, size: int) -> tuple[Array, Array]:
    return (self.param(f"{name}_scale", nn.initializers.constant((1.0 + 1e-3) ** -0.5), (size,)),
            self.param(f"{name}_bias", nn.initializers.zeros, (size,)))

  def setup(self):
    d, hid = self.dim, self.hidden
    self.item_emb = _item_embed(self.num_items, d)
    self.extractor = self._gru_params("extractor", d)
    self.evolution = self._gru_params("evolution", hid)
    self.att_query = self._dense("att_query", d, hid)
    self.att_query_alpha = self.param("att_query_alpha", nn.initializers.constant(0.1), (hid,))
    self.att_mlp = self._mlp("att", 4 * hid, self.attention_layers)
    out_in = 3 * d + hid
    self.out_affine = self._affine("out_affine", out_in)
    self.out_mlp = self._mlp("out", out_in, self.mlp_layers)
    self.out_alpha = [self.param(f"out_alpha_{k}", nn.initializers.constant(0.1), (n,))
                      for k, n in enumerate(self.mlp_layers)]
    self.aux_affine = self._affine("aux_affine", hid + d)
    self.aux_mlp = self._mlp("aux", hid + d, self.aux_layers)

  # -- per query ---------------------------------------------------------------------------------------

  def extract(self, history: Array, history_mask: Array) -> tuple[Array, Array]:
    """``(e [B, L, dim], h [B, L, H])``: embeddings (zero at padding) and the extractor's states."""
    mask = history_mask.astype(bool)
    e = self.embed_history(history, mask)
    p = self.extractor
    h0 = jnp.zeros(e.shape[:1] + (self.hidden,), e.dtype)
    return e, gru_scan(p, e @ p["wx"] + p["bx"], mask, h0)

  def encode(self, history, history_mask, user=None, deterministic=True):
    """DIEN has no candidate-free state; use :meth:`score`."""
    raise ValueError("DIEN's state depends on the candidate: call score(queries, items)")

  # -- per (query, candidate) ----------------------------------------------------------------------------

  def _score_chunk(self, ctx: Mapping[str, Array], cand: Array) -> Array:
    """Logits ``[B, k]`` of candidate embeddings ``cand`` ``[B, k, dim]`` given the query context."""
    hid = self.hidden
    (w1, b1), *rest = self.att_mlp
    w1_q, w1_f, w1_d, w1_p = jnp.split(w1, 4, axis=0)  # [q, f, q - f, q * f] blocks of the first layer
    wq, bq = self.att_query
    q = prelu(cand @ wq + bq, self.att_query_alpha)  # [B, k, H]
    z = (q @ (w1_q + w1_d))[:, :, None] + ctx["att_hist"][:, None] \
        + (q[:, :, None, :] * ctx["h"][:, None]) @ w1_p  # [B, k, L, A1]; ctx["att_hist"] holds b1
    z = jax.nn.sigmoid(z)
    for k, (w, b) in enumerate(rest):
      z = z @ w + b
      if k < len(rest) - 1:
        z = jax.nn.sigmoid(z)
    s = jnp.where(ctx["mask"][:, None], z[..., 0], PAD_SCORE)  # [B, k, L]
    att = jax.nn.softmax(s, axis=-1)
    h0 = jnp.zeros(cand.shape[:2] + (hid,), cand.dtype)
    final = gru_scan(self.evolution, ctx["evo_x"][:, None], ctx["mask"][:, None], h0, att)[..., -1, :]
    total = jnp.broadcast_to(ctx["sum"][:, None], cand.shape)
    x = jnp.concatenate([cand, total, cand * total, final], axis=-1)
    scale, shift = self.out_affine
    x = x * scale + shift
    for k, (w, b) in enumerate(self.out_mlp):
      x = x @ w + b
      if k < len(self.out_alpha):
        x = prelu(x, self.out_alpha[k])
    return x[..., 0]

  def score(self, queries: Mapping[str, Array], items: Array, deterministic: bool = True) -> Array:
    """ScoreFn: logits ``[B, C]`` of ``items`` (``[C]`` shared or ``[B, C]``) for queries with "history"
    ``[B, L]`` and "history_mask" ``[B, L]`` (``L <= max_len``; the oldest positions are dropped)."""
    del deterministic  # no dropout
    history = queries["history"][:, -self.max_len:]
    mask = queries["history_mask"][:, -self.max_len:].astype(bool)
    e, h = self.extract(history, mask)
    b = history.shape[0]
    w1, b1 = self.att_mlp[0]
    w1_f, w1_d = jnp.split(w1, 4, axis=0)[1:3]
    ctx = {"h": h, "mask": mask, "sum": jnp.sum(e, axis=1),
           "att_hist": h @ (w1_f - w1_d) + b1,
           "evo_x": h @ self.evolution["wx"] + self.evolution["bx"]}
    table = self.item_emb.embedding
    cand = jnp.take(table, items.astype(jnp.int32), axis=0)
    cand = jnp.broadcast_to(cand, (b,) + cand.shape[-2:])  # [B, C, dim]
    num = cand.shape[1]
    n, k = _chunking(num, self.candidate_chunk)
    if n == 1:
      return self._score_chunk(ctx, cand)
    cand = jnp.pad(cand, ((0, 0), (0, n * k - num), (0, 0)))
    chunks = jnp.moveaxis(cand.reshape(b, n, k, cand.shape[-1]), 1, 0)  # [n, B, k, dim]
    out = jax.lax.map(lambda c: self._score_chunk(ctx, c), chunks)  # [n, B, k]
    return jnp.moveaxis(out, 0, 1).reshape(b, n * k)[:, :num]

  # -- auxiliary loss -------------------------------------------------------------------------------------

  def aux_logit(self, h: Array, e: Array) -> Array:
    """The auxiliary network's click logit of (state ``h`` ``[..., H]``, item ``e`` ``[..., dim]``)."""
    x = jnp.concatenate([h, e], axis=-1)
    scale, shift = self.aux_affine
    x = x * scale + shift
    for k, (w, b) in enumerate(self.aux_mlp):
      x = x @ w + b
      if k < len(self.aux_mlp) - 1:
        x = jax.nn.sigmoid(x)
    return x[..., 0]

  def aux_terms(self, history: Array, history_mask: Array, noclick: Array) -> tuple[Array, Array]:
    """``(loss [B, L-1], pair_mask [B, L-1])``: term ``t`` is
    ``-log s(f(h_t, e_{t+1})) - log(1 - s(f(h_t, e~_{t+1})))`` with ``noclick`` ``[B, L-1]`` the
    non-clicked items ``~_{t+1}``; real where positions ``t`` and ``t + 1`` are real."""
    mask = history_mask.astype(bool)
    e, h = self.extract(history, mask)
    pos = self.aux_logit(h[:, :-1], e[:, 1:])
    neg = self.aux_logit(h[:, :-1], self.item_emb(noclick.astype(jnp.int32)))
    loss = -jax.nn.log_sigmoid(pos) - jax.nn.log_sigmoid(-neg)
    return loss, mask[:, :-1] & mask[:, 1:]


def noclick_items(negatives: Array, length: int) -> Array:
  """``[B, length - 1]`` non-clicked items of the aux pairs: pair ``t`` takes ``negatives[:, t mod N]``."""
  return negatives[:, jnp.arange(length - 1) % negatives.shape[1]]


def auxiliary_loss(module: DIEN, params, batch: Mapping[str, Array]) -> Array:
  """Eq. 1: mean of :meth:`DIEN.aux_terms` over real pairs of real rows (``batch["mask"]``)."""
  history = batch["history"][:, -module.max_len:]
  mask = batch["history_mask"][:, -module.max_len:].astype(bool)
  if history.shape[1] < 2:
    return jnp.zeros((), jnp.float32)
  noclick = noclick_items(batch["negatives"], history.shape[1])
  terms, pairs = module.apply(params, history, mask, noclick, method=module.aux_terms)
  if "mask" in batch:
    pairs = pairs & batch["mask"].astype(bool)[:, None]
  w = pairs.astype(terms.dtype)
  return jnp.sum(terms * w) / jnp.maximum(jnp.sum(w), 1.0)


def make_loss_fn(module: DIEN, loss: str = "softmax") -> LossFn:
  """``loss_fn(params, batch, rng) -> (loss, aux)``: ranking loss of the window's target against its
  negatives (``loss``, one of :data:`jaxrec.models.sequential.SEQUENCE_LOSSES`) plus
  ``module.aux_weight`` times :func:`auxiliary_loss`. One target per window only (no all-position
  format: the AUGRU state is per candidate). ``rng`` is unused (no dropout)."""
  if loss not in SEQUENCE_LOSSES:
    raise ValueError(f"unknown loss {loss!r}; expected one of {SEQUENCE_LOSSES}")

  def loss_fn(params, batch, rng):
    del rng
    if "targets" in batch:
      raise ValueError("DIEN trains one target per window (ModelSpec.all_positions=False)")
    mask = batch.get("mask")
    if loss == "full_softmax":
      logits = module.apply(params, batch, jnp.arange(module.num_items, dtype=jnp.int32),
                            method=module.score)
      main = losses.full_softmax(logits, batch["positive"], mask)
      extra = {}
    else:
      cands = jnp.concatenate([batch["positive"][:, None], batch["negatives"]], axis=1).astype(jnp.int32)
      scores = module.apply(params, batch, cands, method=module.score)
      main = losses.candidate_loss(loss, scores, mask)
      extra = losses.ranking_aux(scores, mask)
    aux = auxiliary_loss(module, params, batch)
    value = main + module.aux_weight * aux
    return value, {"loss": value, "main_loss": main, "aux_loss": aux, **extra}

  return loss_fn
