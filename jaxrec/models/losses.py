"""Training losses over score arrays: BPR, log loss, sampled softmax, full softmax.

Pure functions of score (logit) arrays. Every loss takes an optional ``mask`` ``[B]`` (bool or float)
marking the real rows of a padded batch; the loss is the mean of the per-row losses over the real rows
(``sum(mask * loss_row) / max(sum(mask), 1)``), so padded rows contribute neither value nor gradient.

* :func:`bpr` -- Bayesian personalised ranking (Rendle et al. 2009, BPR-Opt, Eq. 4 without the
  regulariser): ``-log sigmoid(s_pos - s_neg)``, averaged over the ``N`` negatives of a row.
* :func:`log_loss` -- pointwise binary cross-entropy (He et al. 2017 NCF, Eq. 7): positives label 1,
  negatives label 0, averaged over the ``1 + N`` examples of a row.
* :func:`sampled_softmax` -- softmax cross-entropy over one positive (column 0) and ``N`` sampled
  negatives, with the optional logQ correction (Jean et al. 2015; Yi et al. 2019):
  ``logits = scores - log Q(item)``.
* :func:`full_softmax` -- softmax cross-entropy over the whole catalogue (next-item prediction, as in
  Hidasi et al. 2016 GRU4Rec's cross-entropy variant and Kang & McAuley 2018 SASRec's full-softmax
  re-implementations).

:func:`candidate_loss` dispatches by name on a ``[B, 1 + N]`` score matrix whose column 0 is the
positive; the models' loss functions use it.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

Array = jax.Array

LOSS_NAMES = ("bpr", "log", "softmax")


def masked_mean(per_row: Array, mask: Optional[Array] = None) -> Array:
  """Mean of ``per_row`` ``[B]`` over the rows where ``mask`` is true (all rows if ``None``)."""
  if mask is None:
    return jnp.mean(per_row)
  m = mask.astype(per_row.dtype)
  return jnp.sum(per_row * m) / jnp.maximum(jnp.sum(m), 1.0)


def bpr(pos: Array, neg: Array, mask: Optional[Array] = None) -> Array:
  """BPR loss (Rendle et al. 2009, Eq. 4): ``mean_n -log sigmoid(pos - neg_n)``.

  Args:
    pos: ``[B]`` scores of the positives.
    neg: ``[B, N]`` scores of the negatives (``[B]`` is read as ``N = 1``).
    mask: optional ``[B]`` real-row mask.

  Returns:
    Scalar loss.
  """
  if neg.ndim == 1:
    neg = neg[:, None]
  per_row = jnp.mean(jax.nn.softplus(neg - pos[:, None]), axis=-1)  # -log sigmoid(x) = softplus(-x)
  return masked_mean(per_row, mask)


def log_loss(pos: Array, neg: Array, mask: Optional[Array] = None) -> Array:
  """Pointwise binary cross-entropy on logits (He et al. 2017, Eq. 7).

  ``loss_row = (softplus(-pos) + sum_n softplus(neg_n)) / (1 + N)``, i.e. the mean of
  ``-y log sigmoid(s) - (1 - y) log(1 - sigmoid(s))`` over the row's ``1 + N`` examples.

  Args:
    pos: ``[B]`` logits of the positives (label 1).
    neg: ``[B, N]`` logits of the negatives (label 0); ``[B]`` is read as ``N = 1``.
    mask: optional ``[B]`` real-row mask.

  Returns:
    Scalar loss.
  """
  if neg.ndim == 1:
    neg = neg[:, None]
  total = jax.nn.softplus(-pos) + jnp.sum(jax.nn.softplus(neg), axis=-1)
  return masked_mean(total / (1 + neg.shape[-1]), mask)


def sampled_softmax(scores: Array, mask: Optional[Array] = None, log_q: Optional[Array] = None) -> Array:
  """Sampled softmax cross-entropy with the positive in column 0.

  ``loss_row = logsumexp_j(l_j) - l_0`` with ``l_j = s_j - log Q_j`` when ``log_q`` is given (logQ
  correction: ``Q_j`` is the probability that candidate ``j`` was sampled; pass 0 in column 0 to
  correct only the negatives), else ``l_j = s_j``.

  Args:
    scores: ``[B, 1 + N]`` scores, positive first.
    mask: optional ``[B]`` real-row mask.
    log_q: optional ``[B, 1 + N]`` (or broadcastable) log sampling probabilities.

  Returns:
    Scalar loss.
  """
  logits = scores if log_q is None else scores - log_q
  per_row = jax.nn.logsumexp(logits, axis=-1) - logits[:, 0]
  return masked_mean(per_row, mask)


def full_softmax(logits: Array, targets: Array, mask: Optional[Array] = None) -> Array:
  """Softmax cross-entropy over all items: ``logsumexp(logits) - logits[target]``.

  Args:
    logits: ``[B, num_items]``.
    targets: int ``[B]`` target item per row.
    mask: optional ``[B]`` real-row mask.

  Returns:
    Scalar loss.
  """
  target_logit = jnp.take_along_axis(logits, targets[:, None].astype(jnp.int32), axis=-1)[:, 0]
  per_row = jax.nn.logsumexp(logits, axis=-1) - target_logit
  return masked_mean(per_row, mask)


def candidate_loss(name: str, scores: Array, mask: Optional[Array] = None,
                   log_q: Optional[Array] = None) -> Array:
  """Loss ``name`` in :data:`LOSS_NAMES` on ``[B, 1 + N]`` scores with the positive in column 0."""
  if name == "bpr":
    return bpr(scores[:, 0], scores[:, 1:], mask)
  if name == "log":
    return log_loss(scores[:, 0], scores[:, 1:], mask)
  if name == "softmax":
    return sampled_softmax(scores, mask, log_q)
  raise ValueError(f"unknown loss {name!r}; expected one of {LOSS_NAMES}")


def ranking_aux(scores: Array, mask: Optional[Array] = None) -> dict[str, Array]:
  """Cheap diagnostics of ``[B, 1 + N]`` candidate scores (positive first), masked like the losses.

  Returns ``pos_score`` (mean positive score), ``neg_score`` (mean negative score) and
  ``pairwise_acc`` (fraction of negatives scored strictly below the positive).
  """
  pos, neg = scores[:, 0], scores[:, 1:]
  return {
      "pos_score": masked_mean(pos, mask),
      "neg_score": masked_mean(jnp.mean(neg, axis=-1), mask),
      "pairwise_acc": masked_mean(jnp.mean((pos[:, None] > neg).astype(scores.dtype), axis=-1), mask),
  }
