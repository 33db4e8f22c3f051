"""BERT4Rec (Sun et al. 2019): a bidirectional transformer over the history, trained by Cloze.

The model (Sec. 3.2-3.5 of the paper; layer order and sizes from the authors' TensorFlow code,
``modeling.py`` and ``bert_train/bert_config_ml-20m_64.json``):

* input: item embeddings plus learned positional embeddings, layer norm, dropout (Eq. 5; BERT's
  embedding post-processing); the item table has one extra row, the ``[MASK]`` token (id
  ``num_items``). Positions are right-aligned as in :class:`jaxrec.models.sequential.SASRec`: the last
  token sits at position ``max_len - 1`` whatever the window length, so a left-padded window equals its
  unpadded version;
* ``num_blocks`` post-layer-norm transformer blocks (Eq. 1-4): bidirectional multi-head attention over
  the real positions, dropout, residual, layer norm; a GELU feed-forward of width ``4 * dim``, dropout,
  residual, layer norm;
* output (Eq. 7): a GELU dense layer and a layer norm on the hidden state, then the dot product with the
  (shared) input item embeddings plus a per-item output bias.

Training (Sec. 3.6, Cloze): each training sequence is the chunk's inputs followed by its last target
(``history`` then ``targets[:, -1]`` in the all-position batch of :mod:`jaxrec.train.fit`, ``history``
then ``positive`` in the one-target-per-window batch); ``k = min(max_predictions, max(1,
round(n * mask_prob)))`` of its ``n`` real positions, uniformly at random, are replaced by ``[MASK]``
(the authors' ``create_masked_lm_predictions`` with their ``mask_prob=1.0``: always the mask token), and
the loss is the cross-entropy of the original items at the masked positions (``full_softmax`` over every
item, the authors' choice; or sampled ``softmax`` / ``bpr`` / ``log`` against the batch's negatives).

Prediction (Sec. 3.6): the ``[MASK]`` token is appended to the history and its output scores the items,
so the target is never an input; the window keeps the most recent ``max_len - 1`` items.

Departures: the authors generate ``dupe_factor = 10`` masked copies of every sequence once, before
training; here the masks are drawn afresh from the loss's ``rng`` at every step (the same distribution,
more variety). Sequences are :mod:`jaxrec.train.fit`'s chunks of ``history_len + 1`` items, not the
authors' sliding windows of 200 with ``prop_sliding_window = 0.5``. Without an ``rng`` (dropout off) the
mask is drawn from a fixed key, so the loss stays a deterministic function of the parameters.
"""

from __future__ import annotations

from typing import Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.models import losses
from jaxrec.models.sequential import SEQUENCE_LOSSES, LossFn, SequenceModel

Array = jax.Array

_init = nn.initializers.truncated_normal(0.02)  # the authors' initializer_range


class _BertBlock(nn.Module):
  """One post-layer-norm transformer block (BERT's ``transformer_model``; paper Eq. 1-4)."""

  dim: int
  num_heads: int
  dropout: float

  @nn.compact
  def __call__(self, x, attn_mask, deterministic):
    a = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, qkv_features=self.dim,
                                        dropout_rate=self.dropout, kernel_init=_init, name="attn")(
                                            x, x, mask=attn_mask, deterministic=deterministic)
    a = nn.Dropout(self.dropout)(a, deterministic=deterministic)
    x = nn.LayerNorm(epsilon=1e-12, name="attn_norm")(x + a)
    f = nn.gelu(nn.Dense(4 * self.dim, kernel_init=_init, name="ffn_1")(x), approximate=False)
    f = nn.Dropout(self.dropout)(nn.Dense(self.dim, kernel_init=_init, name="ffn_2")(f),
                                 deterministic=deterministic)
    return nn.LayerNorm(epsilon=1e-12, name="ffn_norm")(x + f)


class BERT4Rec(SequenceModel):
  """BERT4Rec: bidirectional self-attention; predicts through an appended ``[MASK]`` token.

  Attributes:
    max_len: learned positions (``history_len + 1`` must not exceed it for training chunks).
    num_blocks: transformer blocks (authors: 2).
    num_heads: attention heads (authors: 2).
    dropout: hidden and attention dropout (authors: 0.1).
    mask_prob: Cloze proportion ``rho`` of masked positions (authors, ML-20M: 0.2).
    max_predictions: at most this many masked positions per sequence (authors: 20).
  """

  max_len: int = 200
  num_blocks: int = 2
  num_heads: int = 2
  dropout: float = 0.1
  mask_prob: float = 0.2
  max_predictions: int = 20

  @property
  def mask_id(self) -> int:
    return self.num_items

  def setup(self):
    self.item_emb = nn.Embed(self.num_items + 1, self.dim, embedding_init=_init, name="item_emb")
    self.pos_emb = nn.Embed(self.max_len, self.dim, embedding_init=_init, name="pos_emb")
    self.emb_norm = nn.LayerNorm(epsilon=1e-12, name="emb_norm")
    self.drop = nn.Dropout(self.dropout)
    self.blocks = [_BertBlock(self.dim, self.num_heads, self.dropout, name=f"block_{k}")
                   for k in range(self.num_blocks)]
    self.out_dense = nn.Dense(self.dim, kernel_init=_init, name="out_dense")
    self.out_norm = nn.LayerNorm(epsilon=1e-12, name="out_norm")
    self.out_bias = self.param("out_bias", nn.initializers.zeros, (self.num_items,))

  def encode_tokens(self, tokens: Array, token_mask: Array, deterministic: bool = True) -> Array:
    """``[B, T, dim]`` output-layer states of token sequences (ids may include ``mask_id``).

    Every real position attends to every real position (bidirectional); padded positions attend to
    themselves only and never influence a real one.
    """
    length = tokens.shape[1]
    if length > self.max_len:
      raise ValueError(f"BERT4Rec: {length} tokens exceed max_len={self.max_len}")
    mask = token_mask.astype(bool)
    positions = jnp.arange(self.max_len - length, self.max_len)
    x = self.emb_norm(self.item_emb(tokens) + self.pos_emb(positions)[None])
    x = self.drop(x, deterministic=deterministic)
    attn_mask = (mask[:, None, :] & mask[:, :, None]) | jnp.eye(length, dtype=bool)[None]
    for block in self.blocks:
      x = block(x, attn_mask[:, None], deterministic)
    return self.out_norm(nn.gelu(self.out_dense(x), approximate=False))

  def item_scores(self, states: Array, items: Array) -> Array:
    """Eq. 7: ``states . E_items + b_items``; ``states`` ``[..., dim]``, ``items`` ``[C]`` or
    ``states.shape[:-1] + [C]``."""
    table = self.item_emb.embedding[: self.num_items]
    if items.ndim == 1:
      return states @ jnp.take(table, items, axis=0).T + self.out_bias[items]
    return jnp.einsum("...d,...cd->...c", states, jnp.take(table, items, axis=0)) + self.out_bias[items]

  def encode(self, history: Array, history_mask: Array, user: Optional[Array] = None,
             deterministic: bool = True) -> Array:
    """``[B, dim]``: the output at a ``[MASK]`` appended after the (most recent ``max_len - 1``) items."""
    del user
    history, history_mask = history[:, -(self.max_len - 1):], history_mask[:, -(self.max_len - 1):]
    b = history.shape[0]
    tokens = jnp.concatenate([history, jnp.full((b, 1), self.mask_id, history.dtype)], axis=1)
    token_mask = jnp.concatenate([history_mask.astype(bool), jnp.ones((b, 1), bool)], axis=1)
    return self.encode_tokens(tokens, token_mask, deterministic)[:, -1]

  def score(self, queries: Mapping[str, Array], items: Array, deterministic: bool = True) -> Array:
    """ScoreFn: the appended ``[MASK]``'s output against ``items`` (``[C]`` or ``[B, C]``)."""
    state = self.encode(queries["history"], queries["history_mask"], deterministic=deterministic)
    return self.item_scores(state, items)

  def encode_sequence(self, history, history_mask, user=None, deterministic=True):
    """Not causal: BERT4Rec trains by Cloze (:func:`make_loss_fn`), not on all positions left to right.

    Defined (to raise) so that the registry's all-position chunks feed :func:`make_loss_fn`."""
    raise ValueError(_NOT_CAUSAL)

  def score_sequence(self, queries, items, deterministic=True):
    raise ValueError(_NOT_CAUSAL)


_NOT_CAUSAL = ("BERT4Rec is bidirectional: a causal all-position loss would see its targets; train it "
               "with bert4rec.make_loss_fn (Cloze)")


def cloze_mask(rng: Array, token_mask: Array, mask_prob: float, max_predictions: int) -> Array:
  """bool ``[B, T]``: per row, ``min(max_predictions, max(1, round(n * mask_prob)))`` of its ``n`` real
  positions, uniformly without replacement (none in an empty row); the authors'
  ``create_masked_lm_predictions``. Python's ``round`` (half to even) as in the authors' code."""
  real = token_mask.astype(bool)
  n = jnp.sum(real, axis=1)
  k = jnp.minimum(max_predictions, jnp.maximum(1, jnp.round(n * mask_prob).astype(jnp.int32)))
  k = jnp.where(n > 0, k, 0)
  keys = jnp.where(real, jax.random.uniform(rng, real.shape), 2.0)  # padding sorts last
  rank = jnp.argsort(jnp.argsort(keys, axis=1), axis=1)
  return rank < k[:, None]


def cloze_inputs(module: BERT4Rec, batch: Mapping[str, Array], rng: Array):
  """``(tokens, token_mask, negatives, masked, inputs)`` ``[B, T]`` (negatives ``[B, T, N]``) of a
  training batch: the sequences, their real positions, the Cloze positions and the encoder's input
  (``[MASK]`` at every Cloze position, the item elsewhere)."""
  if "targets" in batch:  # all-position chunk: inputs s_1..s_L, then its last target s_{L+1}
    tokens = jnp.concatenate([batch["history"], batch["targets"][:, -1:]], axis=1)
    token_mask = jnp.concatenate([batch["history_mask"], batch["target_mask"][:, -1:]], axis=1)
    negs = batch["negatives"]
    negs = jnp.concatenate([negs[:, :1], negs], axis=1)  # position 0 borrows position 1's negatives
  else:  # one target per window: the window, then its positive
    tokens = jnp.concatenate([batch["history"], batch["positive"][:, None]], axis=1)
    token_mask = jnp.concatenate([batch["history_mask"], jnp.ones_like(batch["positive"][:, None], bool)],
                                 axis=1)
    negs = jnp.broadcast_to(batch["negatives"][:, None], tokens.shape + batch["negatives"].shape[-1:])
  # A chunk of max_len targets is max_len + 1 items: its oldest item then drops out (not its target).
  keep = slice(-module.max_len, None)
  tokens, token_mask, negs = tokens[:, keep], token_mask[:, keep], negs[:, keep]
  tokens, token_mask = tokens.astype(jnp.int32), token_mask.astype(bool)
  if "mask" in batch:
    token_mask = token_mask & batch["mask"].astype(bool)[:, None]
  masked = cloze_mask(rng, token_mask, module.mask_prob, module.max_predictions)
  return tokens, token_mask, negs.astype(jnp.int32), masked, jnp.where(masked, module.mask_id, tokens)


def make_loss_fn(module: BERT4Rec, loss: str = "full_softmax") -> LossFn:
  """``loss_fn(params, batch, rng) -> (loss, aux)``: the Cloze loss (module docstring) on either batch
  format of :mod:`jaxrec.models.sequential`; ``rng`` draws the masks and, when given, the dropout."""
  if loss not in SEQUENCE_LOSSES:
    raise ValueError(f"unknown loss {loss!r}; expected one of {SEQUENCE_LOSSES}")

  def loss_fn(params, batch, rng):
    mask_rng, drop_rng = jax.random.split(jax.random.PRNGKey(0) if rng is None else rng)
    tokens, token_mask, negs, masked, inputs = cloze_inputs(module, batch, mask_rng)
    kwargs = {"deterministic": rng is None, "rngs": {} if rng is None else {"dropout": drop_rng}}
    states = module.apply(params, inputs, token_mask, method=module.encode_tokens, **kwargs)
    b, t = tokens.shape
    flat_mask = masked.reshape(b * t)
    if loss == "full_softmax":
      logits = module.apply(params, states, jnp.arange(module.num_items, dtype=jnp.int32),
                            method=module.item_scores)
      value = losses.full_softmax(logits.reshape(b * t, -1), tokens.reshape(-1), flat_mask)
      return value, {"loss": value, "masked": jnp.sum(flat_mask)}
    cands = jnp.concatenate([tokens[..., None], negs], axis=-1)
    scores = module.apply(params, states, cands, method=module.item_scores).reshape(b * t, -1)
    value = losses.candidate_loss(loss, scores, flat_mask)
    return value, {"loss": value, "masked": jnp.sum(flat_mask), **losses.ranking_aux(scores, flat_mask)}

  return loss_fn
