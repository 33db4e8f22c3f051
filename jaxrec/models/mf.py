"""Matrix factorisation with optional biases, trained with BPR (``mf-bpr``) or log loss (``mf-log``).

The score of user ``u`` for item ``i`` is (Rendle et al. 2009, Sec. 5.1; Koren et al. 2009)::

    s(u, i) = p_u . q_i  [+ b_u + b_i + b]

with ``p_u, q_i`` in ``R^dim``. ``MF.score`` is a :data:`ScoreFn`: full ranking over candidates shared
by the batch (``items`` ``[C]``) is one ``[B, d] x [d, C]`` matrix product.

Training batch format (user models)::

    {"user": int32 [B], "positive": int32 [B], "negatives": int32 [B, N], "mask": bool [B]}

``make_loss_fn(module, "bpr")`` gives BPR-MF (Rendle et al. 2009, Eq. 4); ``"log"`` gives the
pointwise log loss used for MF by MeLON and SML. The L2 regulariser of BPR-Opt is left to the
optimizer (e.g. ``optax.adamw`` or ``optax.add_decayed_weights``).
"""

from __future__ import annotations

from typing import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.models import losses
from jaxrec.models.common import dot_scores

Array = jax.Array
LossFn = Callable[[dict, Mapping[str, Array], Array], tuple[Array, dict]]


class MF(nn.Module):
  """Matrix factorisation ``s(u, i) = p_u . q_i (+ b_u + b_i + b)``.

  Attributes:
    num_users: size of the user index space.
    num_items: size of the item index space.
    dim: embedding dimension.
    use_bias: add user, item and global biases.
    init_scale: standard deviation of the normal embedding initialisation.
  """

  num_users: int
  num_items: int
  dim: int = 64
  use_bias: bool = False
  init_scale: float = 0.1

  def setup(self):
    init = nn.initializers.normal(self.init_scale)
    self.user_emb = nn.Embed(self.num_users, self.dim, embedding_init=init, name="user_emb")
    self.item_emb = nn.Embed(self.num_items, self.dim, embedding_init=init, name="item_emb")
    if self.use_bias:
      self.user_bias = self.param("user_bias", nn.initializers.zeros, (self.num_users,))
      self.item_bias = self.param("item_bias", nn.initializers.zeros, (self.num_items,))
      self.global_bias = self.param("global_bias", nn.initializers.zeros, ())

  def user_vectors(self, users: Array) -> Array:
    """int ``[B]`` -> ``[B, dim]`` user embeddings ``p_u``."""
    return self.user_emb(users)

  def score(self, queries: Mapping[str, Array], items: Array) -> Array:
    """ScoreFn: ``queries["user"]`` ``[B]``, ``items`` ``[C]`` or ``[B, C]`` -> ``[B, C]``."""
    users = queries["user"]
    scores = dot_scores(self.user_emb(users), self.item_emb.embedding, items,
                         self.item_bias if self.use_bias else None)
    if self.use_bias:
      scores = scores + self.user_bias[users][:, None] + self.global_bias
    return scores

  def __call__(self, queries: Mapping[str, Array], items: Array) -> Array:
    return self.score(queries, items)


def candidates(batch: Mapping[str, Array]) -> Array:
  """``[B, 1 + N]`` candidates: the positive in column 0, then the negatives."""
  return jnp.concatenate([batch["positive"][:, None], batch["negatives"]], axis=1).astype(jnp.int32)


def make_loss_fn(module: nn.Module, loss: str = "bpr") -> LossFn:
  """``loss_fn(params, batch, rng) -> (loss, aux)`` scoring the batch's candidates with ``module.score``.

  Args:
    module: a user model (:class:`MF` or ``NeuMF``) with ``score(queries, items)``; a module with a
      non-zero ``dropout`` field is called with ``deterministic=False`` and the ``rng`` in training.
    loss: ``"bpr"``, ``"log"`` or ``"softmax"`` (see :func:`jaxrec.models.losses.candidate_loss`).
  """
  if loss not in losses.LOSS_NAMES:
    raise ValueError(f"unknown loss {loss!r}; expected one of {losses.LOSS_NAMES}")

  dropout = bool(getattr(module, "dropout", 0.0))  # NeuMF's MLP tower; MF has none

  def loss_fn(params, batch, rng):
    kwargs = {"deterministic": False, "rngs": {"dropout": rng}} if dropout and rng is not None else {}
    scores = module.apply(params, batch, candidates(batch), method=module.score, **kwargs)
    mask = batch.get("mask")
    value = losses.candidate_loss(loss, scores, mask)
    return value, {"loss": value, **losses.ranking_aux(scores, mask)}

  return loss_fn


def row_lookups(module: MF) -> dict:
  """Where the batch's ids index ``module``'s tables, for :class:`jaxrec.train.sparse.RowLookups`
  (``RowLookups(**mf.row_lookups(module))``): users index ``user_emb`` (and ``user_bias``), positives and
  negatives index ``item_emb`` (and ``item_bias``); the global bias stays dense."""
  tables = [("params/user_emb/embedding", "user"), ("params/item_emb/embedding", "item")]
  if module.use_bias:
    tables += [("params/user_bias", "user"), ("params/item_bias", "item")]
  return {"groups": (("user", ("user",)), ("item", ("positive", "negatives"))), "tables": tuple(tables),
          "mask": "mask"}


def compact_loss_fn(module: MF, loss: str = "bpr") -> Callable[[Mapping[str, int]], LossFn]:
  """``make_loss(sizes)`` for :func:`jaxrec.train.sparse.row_sparse_learner`: :func:`make_loss_fn` of
  ``module`` with ``sizes["user"]`` users and ``sizes["item"]`` items (the compact tables)."""
  return lambda sizes: make_loss_fn(module.clone(num_users=sizes["user"], num_items=sizes["item"]), loss)
