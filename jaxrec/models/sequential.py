"""Sequence encoders for next-item recommendation: GRU4Rec, Caser, SASRec and SumPooling.

Every encoder shares one interface:

* ``encode(history [B, L], history_mask [B, L], user=None, deterministic=True) -> state [B, dim]``:
  the user state after the history. Histories are right-aligned (most recent item last, padding on
  the left); padded positions never influence the state (their ids may be anything).
* ``score(queries, items, deterministic=True) -> [B, C]``: a :data:`ScoreFn`;
  ``s(u, i) = state_u . e_i`` with the item embedding table ``e`` shared by the input and the output,
  so shared candidates (``items`` ``[C]``) are one matrix product.

Models:

* :class:`GRU4Rec` (Hidasi et al. 2016, Eq. 1-4): a GRU over the item embeddings, run with
  ``nn.scan``; masked steps keep the previous hidden state; the last hidden state is projected to
  ``dim``. Trained on every position of a user's sequence cut into chunks of ``L`` targets (the
  hidden state is not carried across chunks, unlike session-parallel mini-batches).
* :class:`Caser` (Tang & Wang 2018, Sec. 3.2-3.3): horizontal convolutions of heights
  ``1 .. L_h`` with ReLU and max-pooling over time (Eq. 2-4), a vertical convolution (Eq. 5), their
  concatenation with dropout through a fully connected ReLU layer (Eq. 6); optionally the user
  embedding ``P_u`` is concatenated as in Eq. 7 (``user_dim > 0``: the FC then outputs
  ``dim - user_dim`` so that ``[z; P_u]`` matches the shared item table).
* :class:`SASRec` (Kang & McAuley 2018, Sec. III): item embeddings scaled by ``sqrt(dim)`` plus
  learned positional embeddings (Eq. 2; right-aligned, so the last item sits at position
  ``max_len - 1`` whatever the window length), causal self-attention blocks with pre-attention layer norm,
  residual connections, dropout and a point-wise feed-forward network (Eq. 3-5, as in the authors'
  code), a final layer norm; the state is the output at the last position. Dropout is off when
  ``deterministic=True``. Trained on all positions as in the authors' code: in a length-``L`` training
  sequence the output at position ``t`` (positional embedding ``max_len - L + t``) predicts item ``t + 1``.
* :class:`SumPooling`: the mean (or sum) of the history's item embeddings.

Training batch formats (sequence models). One next-item target per window (every encoder)::

    {"user": int32 [B], "history": int32 [B, L], "history_mask": bool [B, L],
     "positive": int32 [B], "negatives": int32 [B, N], "mask": bool [B]}

All positions at once (causal encoders with ``encode_sequence``: GRU4Rec, SASRec), as their authors
train them: input ``s_1 .. s_L``, targets ``s_2 .. s_{L+1}``, a loss at every unmasked position::

    {"user": int32 [B], "history": int32 [B, L], "history_mask": bool [B, L],
     "targets": int32 [B, L], "target_mask": bool [B, L], "negatives": int32 [B, L, N], "mask": bool [B]}

``targets[b, t]`` is the item following ``history[b, t]``. The state at position ``t`` is that of the
window ending at ``t`` (causality), so one sequence gives up to ``L`` targets for one encoder pass instead
of ``L`` passes over ``L`` windows.

:func:`make_loss_fn` trains with sampled softmax over ``1 + N`` candidates by default, or ``"bpr"``,
``"log"``, or ``"full_softmax"`` (cross-entropy over all items, ignoring ``negatives``). It reads the
format from the batch's keys (``"targets"``: all positions), and averages the per-target losses over the
real targets (``target_mask & mask``) in both formats, so the all-position loss equals the mean of the
window losses of its targets.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.models import losses
from jaxrec.models.common import dot_scores

Array = jax.Array
LossFn = Callable[[dict, Mapping[str, Array], Optional[Array]], tuple[Array, dict]]

SEQUENCE_LOSSES = losses.LOSS_NAMES + ("full_softmax",)


class SequenceModel(nn.Module):
  """Base of the sequence encoders: an item table ``item_emb`` and the shared ``score``.

  Subclasses define ``setup`` (creating ``self.item_emb``) and ``encode``.

  Attributes:
    num_users: size of the user index space (only Caser with ``user_dim > 0`` uses it).
    num_items: size of the item index space.
    dim: item embedding and state dimension.
  """

  num_users: int
  num_items: int
  dim: int = 64

  def embed_history(self, history: Array, history_mask: Array) -> Array:
    """``[B, L]`` ids -> ``[B, L, dim]`` embeddings, zero at padded positions."""
    return self.item_emb(history) * history_mask[..., None].astype(jnp.float32)

  def encode(self, history: Array, history_mask: Array, user: Optional[Array] = None,
             deterministic: bool = True) -> Array:
    raise NotImplementedError

  def score(self, queries: Mapping[str, Array], items: Array, deterministic: bool = True) -> Array:
    """ScoreFn: queries with "history" ``[B, L]``, "history_mask" ``[B, L]`` (and "user" ``[B]``)."""
    state = self.encode(queries["history"], queries["history_mask"], queries.get("user"),
                        deterministic=deterministic)
    return dot_scores(state, self.item_emb.embedding, items)

  def score_sequence(self, queries: Mapping[str, Array], items: Array, deterministic: bool = True) -> Array:
    """Scores at every position: ``[B, L, C]`` from the states ``encode_sequence`` gives ``[B, L, dim]``.

    Args:
      queries: "history" ``[B, L]``, "history_mask" ``[B, L]`` (and "user" ``[B]``).
      items: int ``[C]`` candidates shared by every position, or ``[B, L, C]`` per position.
      deterministic: dropout off.
    """
    encode_sequence = getattr(self, "encode_sequence", None)
    if encode_sequence is None:
      raise ValueError(f"{type(self).__name__} has no encode_sequence: train it one target per window")
    states = encode_sequence(queries["history"], queries["history_mask"], queries.get("user"),
                             deterministic=deterministic)
    table = self.item_emb.embedding
    if items.ndim == 1:
      return jnp.einsum("bld,cd->blc", states, jnp.take(table, items, axis=0))
    if items.ndim != 3 or items.shape[:2] != states.shape[:2]:
      raise ValueError(f"score_sequence: items must be [C] or {states.shape[:2] + ('C',)}, got {items.shape}")
    return jnp.einsum("bld,blcd->blc", states, jnp.take(table, items, axis=0))

  def __call__(self, queries: Mapping[str, Array], items: Array, deterministic: bool = True) -> Array:
    return self.score(queries, items, deterministic=deterministic)


def _item_embed(num_items: int, dim: int) -> nn.Embed:
  return nn.Embed(num_items, dim, embedding_init=nn.initializers.normal(dim ** -0.5), name="item_emb")


# -- GRU4Rec -------------------------------------------------------------------------------------------


class _MaskedGRUCell(nn.Module):
  """One GRU step (Hidasi et al. 2016, Eq. 1-4) that keeps the previous state where ``mask`` is false."""

  features: int

  @nn.compact
  def __call__(self, h: Array, inputs: tuple[Array, Array]) -> tuple[Array, Array]:
    x, m = inputs
    new_h, _ = nn.GRUCell(self.features, name="cell")(h, x)
    h = jnp.where(m[:, None], new_h, h)
    return h, h


class GRU4Rec(SequenceModel):
  """GRU4Rec: a GRU over the masked history; the state is a linear map of the last hidden state.

  Attributes:
    hidden: GRU hidden size.
    dropout: dropout rate on the input embeddings (training only).
  """

  hidden: int = 64
  dropout: float = 0.0

  def setup(self):
    self.item_emb = _item_embed(self.num_items, self.dim)
    self.gru = nn.scan(_MaskedGRUCell, variable_broadcast="params", split_rngs={"params": False},
                       in_axes=1, out_axes=1)(self.hidden, name="gru")
    self.drop = nn.Dropout(self.dropout)
    self.out = nn.Dense(self.dim, name="out")

  def encode_sequence(self, history: Array, history_mask: Array, user: Optional[Array] = None,
                      deterministic: bool = True) -> Array:
    """``[B, L, dim]`` states after each position (causal: position ``t`` sees ``<= t`` only)."""
    del user
    x = self.drop(self.embed_history(history, history_mask), deterministic=deterministic)
    h0 = jnp.zeros((history.shape[0], self.hidden), x.dtype)
    _, hs = self.gru(h0, (x, history_mask.astype(bool)))
    return self.out(hs)

  def encode(self, history, history_mask, user=None, deterministic=True):
    """``[B, dim]`` state after the last (most recent) position."""
    return self.encode_sequence(history, history_mask, user, deterministic)[:, -1]


# -- Caser ---------------------------------------------------------------------------------------------


class Caser(SequenceModel):
  """Caser: horizontal + vertical convolutions over the ``L x dim`` embedding image.

  Histories shorter than ``max_len`` are left-padded with zero embeddings to ``max_len`` (the same as
  padding the window), so the parameters do not depend on the batch's window length.

  Attributes:
    max_len: the window length ``L`` of the paper (histories may not be longer).
    num_h: filters per horizontal height ``n_h``.
    num_v: vertical filters ``n_v``.
    max_height: largest horizontal height ``L_h`` (``None``: ``max_len``).
    dropout: dropout before the fully connected layer (0.5 in the paper).
    user_dim: dimension of the user embedding ``P_u`` concatenated to ``z`` (0: no user embedding,
      which suits evaluation on users unseen in training).
  """

  max_len: int = 5
  num_h: int = 16
  num_v: int = 4
  max_height: Optional[int] = None
  dropout: float = 0.5
  user_dim: int = 0

  def setup(self):
    if not 0 <= self.user_dim < self.dim:
      raise ValueError(f"user_dim must be in [0, dim={self.dim}), got {self.user_dim}")
    self.item_emb = _item_embed(self.num_items, self.dim)
    if self.user_dim:
      self.user_emb = nn.Embed(self.num_users, self.user_dim,
                               embedding_init=nn.initializers.normal(self.user_dim ** -0.5), name="user_emb")
    heights = range(1, min(self.max_height or self.max_len, self.max_len) + 1)
    # Horizontal filters of height h: kernel [h, dim, n_h] (nn.Conv's layout), bias [n_h].
    self.conv_h = [(self.param(f"conv_h{h}_kernel", nn.initializers.lecun_normal(),
                               (h, self.dim, self.num_h)),
                    self.param(f"conv_h{h}_bias", nn.initializers.zeros, (self.num_h,))) for h in heights]
    self.conv_v_kernel = self.param("conv_v_kernel", nn.initializers.lecun_normal(),
                                    (self.max_len, self.num_v))
    self.conv_v_bias = self.param("conv_v_bias", nn.initializers.zeros, (self.num_v,))
    self.drop = nn.Dropout(self.dropout)
    self.fc = nn.Dense(self.dim - self.user_dim, name="fc")

  def encode(self, history, history_mask, user=None, deterministic=True):
    """``[B, dim]`` state ``[z; P_u]`` (or ``z``) of the window."""
    length = history.shape[1]
    if length > self.max_len:
      raise ValueError(f"history length {length} exceeds Caser max_len={self.max_len}")
    e = self.embed_history(history, history_mask)  # [B, L, d], zero at padding
    e = jnp.pad(e, ((0, 0), (self.max_len - length, 0), (0, 0)))
    # Eq. 2-4: per height, ReLU convolution then max-pooling over time -> [B, n_h] each.
    pooled = []
    for kernel, bias in self.conv_h:  # static loop over heights, not over examples
      h = kernel.shape[0]
      windows = jnp.stack([e[:, k:self.max_len - h + 1 + k] for k in range(h)], axis=2)  # [B, L-h+1, h, d]
      conv = jnp.einsum("bthd,hdn->btn", windows, kernel) + bias  # VALID convolution over time
      pooled.append(jnp.max(nn.relu(conv), axis=1))
    o_v = jnp.einsum("bld,lv->bvd", e, self.conv_v_kernel) + self.conv_v_bias[None, :, None]  # Eq. 5
    feats = jnp.concatenate(pooled + [o_v.reshape(o_v.shape[0], -1)], axis=-1)
    z = nn.relu(self.fc(self.drop(feats, deterministic=deterministic)))  # Eq. 6
    if self.user_dim:
      if user is None:
        raise ValueError("Caser with user_dim > 0 needs queries['user']")
      z = jnp.concatenate([z, self.user_emb(user)], axis=-1)  # Eq. 7
    return z


# -- SASRec --------------------------------------------------------------------------------------------


class _SASBlock(nn.Module):
  """Self-attention block of SASRec (Eq. 3-5, layer order of the authors' code)."""

  dim: int
  num_heads: int
  dropout: float

  @nn.compact
  def __call__(self, x, attn_mask, seq_mask, deterministic):
    q = nn.LayerNorm(epsilon=1e-8, name="attn_norm")(x)
    a = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, qkv_features=self.dim,
                                        dropout_rate=self.dropout, name="attn")(
                                            q, x, mask=attn_mask, deterministic=deterministic)
    x = q + a
    x = nn.LayerNorm(epsilon=1e-8, name="ffn_norm")(x)
    f = nn.Dropout(self.dropout)(nn.relu(nn.Dense(self.dim, name="ffn_1")(x)), deterministic=deterministic)
    f = nn.Dropout(self.dropout)(nn.Dense(self.dim, name="ffn_2")(f), deterministic=deterministic)
    return (x + f) * seq_mask


class SASRec(SequenceModel):
  """SASRec: causal self-attention over the history; the state is the output at the last position.

  Attributes:
    max_len: number of learned positions (the window length ``L`` must not exceed it).
    num_blocks: self-attention blocks.
    num_heads: attention heads.
    dropout: dropout rate (embeddings, attention weights, feed-forward).
  """

  max_len: int = 50
  num_blocks: int = 2
  num_heads: int = 1
  dropout: float = 0.2

  def setup(self):
    self.item_emb = _item_embed(self.num_items, self.dim)
    self.pos_emb = nn.Embed(self.max_len, self.dim, embedding_init=nn.initializers.normal(self.dim ** -0.5),
                            name="pos_emb")
    self.drop = nn.Dropout(self.dropout)
    self.blocks = [_SASBlock(self.dim, self.num_heads, self.dropout, name=f"block_{k}")
                   for k in range(self.num_blocks)]
    self.final_norm = nn.LayerNorm(epsilon=1e-8, name="final_norm")

  def encode_sequence(self, history: Array, history_mask: Array, user: Optional[Array] = None,
                      deterministic: bool = True) -> Array:
    """``[B, L, dim]`` outputs at each position (causal: position ``t`` sees ``<= t`` only)."""
    del user
    length = history.shape[1]
    if length > self.max_len:
      raise ValueError(f"history length {length} exceeds SASRec max_len={self.max_len}")
    mask = history_mask.astype(bool)
    seq_mask = mask[..., None].astype(jnp.float32)
    # Right-aligned positions: the most recent item is always at position max_len - 1, as when the
    # authors' code pads every sequence to max_len; a shorter window equals its left-padded version.
    positions = jnp.arange(self.max_len - length, self.max_len)
    x = self.item_emb(history) * (self.dim ** 0.5) + self.pos_emb(positions)[None]
    x = self.drop(x, deterministic=deterministic) * seq_mask
    causal = jnp.tril(jnp.ones((length, length), bool))
    # Real queries attend to real keys at or before them; padded queries attend to themselves only
    # (their outputs are zeroed), so no softmax row is empty.
    attn_mask = causal[None] & (mask[:, None, :] | jnp.eye(length, dtype=bool)[None])
    attn_mask = attn_mask[:, None]  # [B, 1, L, L]
    for block in self.blocks:
      x = block(x, attn_mask, seq_mask, deterministic)
    return self.final_norm(x)

  def encode(self, history, history_mask, user=None, deterministic=True):
    """``[B, dim]`` output at the last (most recent) position."""
    return self.encode_sequence(history, history_mask, user, deterministic)[:, -1]


# -- SumPooling ----------------------------------------------------------------------------------------


class SumPooling(SequenceModel):
  """Mean (or sum) of the history's item embeddings; an empty history gives the zero state.

  Attributes:
    mean: divide by the number of real positions (else sum).
  """

  mean: bool = True

  def setup(self):
    self.item_emb = _item_embed(self.num_items, self.dim)

  def encode(self, history, history_mask, user=None, deterministic=True):
    """``[B, dim]`` pooled history embedding."""
    del user, deterministic
    total = jnp.sum(self.embed_history(history, history_mask), axis=1)
    if self.mean:
      count = jnp.sum(history_mask.astype(jnp.float32), axis=1, keepdims=True)
      total = total / jnp.maximum(count, 1.0)
    return total


# -- training ------------------------------------------------------------------------------------------


def make_loss_fn(module: SequenceModel, loss: str = "softmax") -> LossFn:
  """``loss_fn(params, batch, rng) -> (loss, aux)`` for a sequence model, for either batch format.

  The format is read from the batch's keys (static under ``jit``): with ``"targets"`` the
  all-position loss (module docstring), which needs ``encode_sequence``; else one target per window.
  The loss is the mean of the per-target losses over the real targets (``mask`` ``[B]``, and
  ``target_mask`` ``[B, L]`` in the all-position format). Dropout is on (``deterministic=False``) with
  ``rng`` as the dropout key; pass ``rng=None`` to train without dropout.

  Args:
    module: a :class:`SequenceModel`.
    loss: ``"softmax"`` (sampled softmax, positive + ``N`` negatives), ``"bpr"``, ``"log"`` or
      ``"full_softmax"`` (cross-entropy over all ``num_items``; ``batch["negatives"]`` unused).
  """
  if loss not in SEQUENCE_LOSSES:
    raise ValueError(f"unknown loss {loss!r}; expected one of {SEQUENCE_LOSSES}")

  def window_loss(params, batch, kwargs):
    mask = batch.get("mask")
    if loss == "full_softmax":
      logits = module.apply(params, batch, jnp.arange(module.num_items, dtype=jnp.int32),
                            method=module.score, **kwargs)
      value = losses.full_softmax(logits, batch["positive"], mask)
      return value, {"loss": value}
    cands = jnp.concatenate([batch["positive"][:, None], batch["negatives"]], axis=1).astype(jnp.int32)
    scores = module.apply(params, batch, cands, method=module.score, **kwargs)
    value = losses.candidate_loss(loss, scores, mask)
    return value, {"loss": value, **losses.ranking_aux(scores, mask)}

  def all_positions_loss(params, batch, kwargs):
    targets = batch["targets"].astype(jnp.int32)
    b, length = targets.shape
    mask = batch["target_mask"].astype(bool)
    if "mask" in batch:
      mask = mask & batch["mask"].astype(bool)[:, None]
    mask = mask.reshape(b * length)
    if loss == "full_softmax":
      logits = module.apply(params, batch, jnp.arange(module.num_items, dtype=jnp.int32),
                            method=module.score_sequence, **kwargs)
      value = losses.full_softmax(logits.reshape(b * length, -1), targets.reshape(-1), mask)
      return value, {"loss": value}
    cands = jnp.concatenate([targets[..., None], batch["negatives"].astype(jnp.int32)], axis=-1)
    scores = module.apply(params, batch, cands, method=module.score_sequence, **kwargs)
    scores = scores.reshape(b * length, -1)  # one row per (sequence, position)
    value = losses.candidate_loss(loss, scores, mask)
    return value, {"loss": value, **losses.ranking_aux(scores, mask)}

  def loss_fn(params, batch, rng):
    kwargs = {"deterministic": rng is None, "rngs": {} if rng is None else {"dropout": rng}}
    if "targets" in batch:
      return all_positions_loss(params, batch, kwargs)
    return window_loss(params, batch, kwargs)

  return loss_fn
