"""Neural matrix factorisation (NeuMF): GMF and MLP towers fused (He et al. 2017 NCF, Sec. 3.4).

With separate embeddings for the two towers (Eq. 11 / Fig. 3)::

    phi_GMF = p_u^G * q_i^G                                   (element-wise product, Eq. 9)
    phi_MLP = a_L(W_L^T(... a_1(W_1^T [p_u^M; q_i^M] + b_1) ...) + b_L)   (ReLU tower, Eq. 10)
    s(u, i) = h^T [phi_GMF; phi_MLP]                          (logit; y_hat = sigmoid(s), Eq. 11)

``mlp_layers`` are the widths of the tower, e.g. ``(64, 32, 16)``: the first entry is the width of the
concatenated MLP embedding ``[p_u^M; q_i^M]`` (each half of it), the others are the hidden layers,
as in the authors' code. The first hidden layer acting on ``[p; q]`` is computed as
``W_p p + W_q q + b`` (the same map), so candidates shared by the batch (``items`` ``[C]``) are
embedded once and broadcast instead of gathered ``B x C`` times. The score is not a dot product, so
shared scoring costs ``O(B C h)``.

Training batch format (user models)::

    {"user": int32 [B], "positive": int32 [B], "negatives": int32 [B, N], "mask": bool [B]}

trained with the pointwise log loss (Eq. 7) by default. The paper's optional pre-training of the
towers (GMF and MLP trained separately, then fused with weight alpha) is not implemented.

``dropout`` (not in the paper; RecBole's ``dropout_prob``, 0.1 there) drops MLP-tower inputs before
each of its layers, as RecBole's ``MLPLayers`` does (``Dropout`` then ``Linear`` then ReLU), with one
mask per (user, candidate) pair, only in training (``deterministic=False``, the loss's ``rng``).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.models import mf

Array = jax.Array


class NeuMF(nn.Module):
  """NeuMF = GMF + MLP with separate embeddings and a final linear layer over their concatenation.

  Attributes:
    num_users: size of the user index space.
    num_items: size of the item index space.
    mf_dim: GMF embedding dimension (predictive factors of the GMF tower).
    mlp_layers: MLP widths; ``mlp_layers[0]`` is the concatenated embedding width (``// 2`` per side).
    init_scale: standard deviation of the normal embedding initialisation (0.01 in the paper).
    dropout: dropout rate before each MLP layer in training (0: none, the paper).
  """

  num_users: int
  num_items: int
  mf_dim: int = 8
  mlp_layers: Sequence[int] = (64, 32, 16)
  init_scale: float = 0.01
  dropout: float = 0.0

  def setup(self):
    if len(self.mlp_layers) < 2:
      raise ValueError(f"mlp_layers needs an embedding width and at least one layer, got {self.mlp_layers}")
    init = nn.initializers.normal(self.init_scale)
    half = self.mlp_layers[0] // 2
    self.gmf_user = nn.Embed(self.num_users, self.mf_dim, embedding_init=init, name="gmf_user")
    self.gmf_item = nn.Embed(self.num_items, self.mf_dim, embedding_init=init, name="gmf_item")
    self.mlp_user = nn.Embed(self.num_users, half, embedding_init=init, name="mlp_user")
    self.mlp_item = nn.Embed(self.num_items, half, embedding_init=init, name="mlp_item")
    # First hidden layer W_1^T [p; q] + b_1, split as W_p p + (W_q q + b_1).
    self.first_user = nn.Dense(self.mlp_layers[1], use_bias=False, name="mlp_0_user")
    self.first_item = nn.Dense(self.mlp_layers[1], name="mlp_0_item")
    self.hidden = [nn.Dense(w, name=f"mlp_{k}") for k, w in enumerate(self.mlp_layers[2:], start=1)]
    self.predict = nn.Dense(1, name="predict")
    self.drop = nn.Dropout(self.dropout)

  def score(self, queries: Mapping[str, Array], items: Array, deterministic: bool = True) -> Array:
    """ScoreFn: ``queries["user"]`` ``[B]``, ``items`` ``[C]`` or ``[B, C]`` -> logits ``[B, C]``."""
    users = queries["user"]
    b = users.shape[0]
    c = items.shape[-1]
    gu = self.gmf_user(users)[:, None, :]  # [B, 1, k]
    gi = self.gmf_item(items)  # [C, k] or [B, C, k]
    pu = self.mlp_user(users)[:, None, :]  # [B, 1, half]
    qi = self.mlp_item(items)
    if items.ndim == 1:
      gi, qi = gi[None], qi[None]  # broadcast over the batch
    if self.dropout and not deterministic:  # one mask per (user, candidate) pair: [B, C, half] inputs
      pu = self.drop(jnp.broadcast_to(pu, (b, c, pu.shape[-1])), deterministic=False)
      qi = self.drop(jnp.broadcast_to(qi, (b, c, qi.shape[-1])), deterministic=False)
    gmf = gu * gi  # [B, C, k]
    h = nn.relu(self.first_user(pu) + self.first_item(qi))  # [B, C, h]
    for layer in self.hidden:
      h = nn.relu(layer(self.drop(h, deterministic=deterministic or not self.dropout)))
    gmf = jnp.broadcast_to(gmf, (b, c, gmf.shape[-1]))
    return self.predict(jnp.concatenate([gmf, h], axis=-1))[..., 0]

  def __call__(self, queries: Mapping[str, Array], items: Array, deterministic: bool = True) -> Array:
    return self.score(queries, items, deterministic=deterministic)


def make_loss_fn(module: NeuMF, loss: str = "log") -> mf.LossFn:
  """``loss_fn(params, batch, rng) -> (loss, aux)``; log loss (He et al. 2017, Eq. 7) by default (with
  ``module.dropout > 0`` and an ``rng``, the MLP tower's dropout is on)."""
  return mf.make_loss_fn(module, loss)
