r"""Adversarial training (paper 001, Sec. 3.3, Eq. 9-10) and TP's inner objective.

**Discriminator.** ``f_d(phi; theta_d)``: an MLP on the sequence embedding ``phi`` (the encoder's state,
the vector that scores items), giving the probability that the subsequence belongs to a head user
(``R = 1``: the ``head_fraction`` most active training users; ``R = 0``: the tail).

**Signs.** Eq. 9 as printed, ``L_d = R log f_d + (1 - R) log(1 - f_d)``, is the discriminator's
log-likelihood, and Eq. 10, ``min_{theta, theta_d} max_{theta_d} L - lambda L_d``, is garbled (``theta_d``
appears under both ``min`` and ``max``). We implement what the text says in words: the discriminator
*maximises its classification accuracy*, the prediction model *minimises its loss while fooling the
discriminator*. With the binary cross-entropy ``l_d = -L_d`` (a masked mean over the mini-batch's
subsequences, each labelled with its user's ``R``):

    discriminator:  min_{theta_d} l_d(theta, theta_d)
    encoder:        min_{theta}   L(theta) - lambda l_d(theta, theta_d)

(the encoder maximises the discriminator's loss with weight ``lambda``). Both are updated at every
inner step (Figure 2), simultaneously, from the same point.

**One backward pass.** :func:`inner_objective` returns one scalar whose gradient is both updates::

    J = L(theta) - lambda l_d(theta, sg(theta_d)) + l_d(sg(phi), theta_d)

``grad_theta J = grad L - lambda grad_theta l_d`` and ``grad_{theta_d} J = grad l_d`` (``sg``: stop
gradient), so the encoder's forward pass is shared; only the small discriminator runs twice.

**Prediction loss (Eq. 2).** Binary cross-entropy of the positive and ``N`` sampled negatives per
subsequence, ``-log s(y_pos) - sum_neg log(1 - s(y_neg))`` (:func:`jaxrec.models.losses.log_loss`),
averaged over the real subsequences (the registry's ``"log"`` loss, so ``k = 1, lambda = 0`` is the plain
encoder's training step).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.models import losses
from jaxrec.models.common import dot_scores

Array = jax.Array


class Discriminator(nn.Module):
  """``f_d``: ReLU MLP ``hidden`` -> one logit (``sigmoid`` of it is ``P(head)``)."""

  hidden: Sequence[int] = (32,)

  @nn.compact
  def __call__(self, phi: Array) -> Array:
    x = phi
    for i, h in enumerate(self.hidden):
      x = nn.relu(nn.Dense(h, name=f"hidden_{i}")(x))
    return nn.Dense(1, name="logit")(x)[..., 0]


def discriminator_bce(logits: Array, is_head: Array, mask: Optional[Array] = None) -> Array:
  """``l_d = -L_d`` (Eq. 9): masked mean binary cross-entropy of ``P(head) = sigmoid(logits)``."""
  r = is_head.astype(logits.dtype)
  per_row = r * jax.nn.softplus(-logits) + (1 - r) * jax.nn.softplus(logits)
  return losses.masked_mean(per_row, mask)


def encode_and_score(module: nn.Module, history: Array, history_mask: Array, user: Array,
                     candidates: Array, deterministic: bool) -> tuple[Array, Array]:
  """``(phi [B, d], scores [B, C])`` of a registry sequence encoder in one pass (a method for ``apply``)."""
  phi = module.encode(history, history_mask, user, deterministic=deterministic)
  return phi, dot_scores(phi, module.item_emb.embedding, candidates)


def inner_objective(module: nn.Module, disc: Discriminator, lam: float, dropout: bool = True):
  """``objective(pair, batch, rng) -> (J, aux)`` of one inner step (module docstring).

  Args:
    module: a registry sequence encoder (``encode`` and ``item_emb``), unchanged.
    disc: the discriminator.
    lam: ``lambda`` (static; 0 drops the adversarial term from the encoder's gradient).
    dropout: the encoder's dropout on (with ``rng`` as its key).

  ``pair`` is ``{"encoder": encoder params, "disc": discriminator params}``; ``batch`` is one user's
  mini-batch ``{"history" [S, L], "history_mask" [S, L], "user" [S], "positive" [S], "negatives" [S, N],
  "mask" [S], "head" [S]}``. ``aux``: ``loss`` (``L``), ``disc_loss`` (``l_d``), ``disc_acc``.
  """

  def objective(pair: Mapping[str, Any], batch: Mapping[str, Array], rng: Array):
    cands = jnp.concatenate([batch["positive"][:, None], batch["negatives"]], axis=1).astype(jnp.int32)
    kwargs = {"rngs": {"dropout": rng}} if dropout else {}
    phi, scores = module.apply(pair["encoder"], batch["history"], batch["history_mask"], batch["user"],
                               cands, not dropout, method=encode_and_score, **kwargs)
    mask = batch["mask"]
    rec = losses.candidate_loss("log", scores, mask)
    head = batch["head"]
    logits_d = disc.apply(pair["disc"], jax.lax.stop_gradient(phi))
    disc_loss = discriminator_bce(logits_d, head, mask)
    value = rec + disc_loss
    if lam:
      logits_e = disc.apply(jax.lax.stop_gradient(pair["disc"]), phi)
      value = value - lam * discriminator_bce(logits_e, head, mask)
    m = mask.astype(jnp.float32)
    acc = jnp.sum(((logits_d > 0) == head.astype(bool)) * m) / jnp.maximum(m.sum(), 1.0)
    return value, {"loss": rec, "disc_loss": disc_loss, "disc_acc": acc, "real": m.sum()}

  return objective
