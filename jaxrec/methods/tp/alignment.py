r"""Gradient alignment (paper 001, Sec. 3.2, Eq. 5-8, Algorithm 1): inner SGD chains and the outer step.

Generic over any objective ``objective(params, batch, rng) -> (value, aux)`` (TP's is the prediction
loss plus the adversarial terms, :mod:`.adversary`; the tests use a quadratic).

**Inner updates (Eq. 6).** Starting from ``theta``, ``k`` SGD steps, each on one mini-batch ``D_i`` of
one user's task::

    theta_i = theta_{i-1} - alpha * grad objective(theta_{i-1}; D_i)

The extracted Eq. 6 prints ``+ alpha``; a descent step is meant (the text calls them "gradient
updates" of a loss). ``alpha`` may be a pytree prefix of ``params`` (TP: one rate for the encoder,
one for the discriminator). One chain is a ``lax.scan`` over the ``k`` mini-batches.

**Outer update (Eq. 7).** ``theta <- theta - beta * (theta - theta_k)``, i.e. ``theta + beta (theta_k -
theta)``: the optimizer (:func:`outer_step`) is handed the *direction* ``theta - theta_k`` as if it were
a gradient, so plain SGD with rate ``beta`` is Eq. 7 exactly, and Adam (the paper's choice, Sec. 4.1)
normalises it per parameter. **Algorithm 1 prints the opposite sign,** ``theta <- Theta + beta (Theta -
theta)`` (moving away from the inner result); we implement Eq. 7, which the text and Figure 2 describe
("update ... in the direction of difference between the initial parameters and updated parameters"
toward the updated ones) and which reduces to joint training at ``k = 1``.

**Many chains at once.** The paper runs one chain per outer step. We run ``C`` chains from the same
``theta`` (``vmap`` over chains), each on its own users, and average their directions::

    direction = sum_c w_c (theta - theta_k^c) / sum_c w_c        (w_c = 1 if chain c has a real task)

With ``C = 1`` this is Algorithm 1's update. With ``C > 1`` it is the mean of ``C`` independent
one-chain directions, an unbiased, lower-variance estimate of the same expected direction: each
chain's direction is, to first order (Eq. 8), ``alpha`` times the gradient of the Eq. 8 objective of
its own ``k`` tasks, so the average follows the gradient of Eq. 8 averaged over the ``C`` draws. It is
*not* one chain of ``C k`` steps (that would align ``C k`` tasks with one another instead of ``k``).

**Taylor form (Eq. 8).** For one chain, ``theta - theta_k = alpha sum_i g_i - alpha^2 sum_{j<i} H_i g_j
+ O(alpha^3)``; averaged over the order of the tasks it is ``alpha`` times the gradient of
``sum_i L_i - (alpha / 2) sum_{j<i} g_i . g_j`` (exactly so for quadratic losses and ``k = 2``, which
the tests check).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Tuple

import jax
import jax.numpy as jnp
import optax

Params = Any
Objective = Callable[[Params, Mapping[str, jax.Array], jax.Array], Tuple[jax.Array, Mapping[str, jax.Array]]]


def _scale(alpha, grads):
  """``alpha * grads`` with ``alpha`` a scalar or a pytree prefix of ``grads``."""
  return jax.tree.map(lambda a, sub: jax.tree.map(lambda g: a * g, sub), alpha, grads)


def sgd_chain(objective: Objective, params: Params, batches: Mapping[str, jax.Array], rng: jax.Array,
              alpha) -> Tuple[Params, Mapping[str, jax.Array]]:
  """``k`` inner SGD steps (Eq. 6), one per leading entry of ``batches`` (``lax.scan``).

  Args:
    objective: ``objective(params, batch, rng) -> (value, aux)``; its gradient is the step direction.
    params: ``theta`` (any pytree).
    batches: pytree of arrays with a leading axis ``k`` (step ``i`` sees ``batches[i]``).
    rng: key; step ``i`` uses ``fold_in(rng, i)``.
    alpha: inner rate, a scalar or a pytree prefix of ``params``.

  Returns:
    ``(theta_k, aux)``, ``aux`` stacked over the ``k`` steps (``value`` included as ``"objective"``).
  """
  theta_k, moved, aux = _chain(objective, params, batches, rng, alpha)
  del moved
  return theta_k, aux


def _chain(objective, params, batches, rng, alpha):
  """``(theta_k, sum_i alpha g_i, aux)``: the sum of the steps is ``theta - theta_k`` without the
  cancellation of subtracting two nearly equal parameter vectors (which Adam would amplify where a
  gradient is tiny)."""
  grad_fn = jax.value_and_grad(objective, has_aux=True)

  def step(carry, xs):
    theta, moved = carry
    i, batch = xs
    (value, aux), grads = grad_fn(theta, batch, jax.random.fold_in(rng, i))
    update = _scale(alpha, grads)
    theta = jax.tree.map(lambda p, u: p - u, theta, update)
    moved = jax.tree.map(lambda m, u: m + u, moved, update)
    return (theta, moved), dict(aux, objective=value)

  k = jax.tree.leaves(batches)[0].shape[0]
  zeros = jax.tree.map(jnp.zeros_like, params)
  (theta_k, moved), aux = jax.lax.scan(step, (params, zeros), (jnp.arange(k), batches))
  return theta_k, moved, aux


def outer_direction(objective: Objective, params: Params, batches: Mapping[str, jax.Array], rng: jax.Array,
                    alpha, chain_mask: jax.Array | None = None) -> Tuple[Params, Mapping[str, jax.Array]]:
  """The averaged outer direction ``theta - theta_k`` of ``C`` chains (``vmap``; module docstring).

  Args:
    objective, params, alpha: as in :func:`sgd_chain`.
    batches: pytree of arrays ``[C, k, ...]``.
    rng: key; chain ``c`` uses ``fold_in(rng, c)``.
    chain_mask: bool ``[C]``, False for chains of padding tasks only (left out of the average);
      None: every chain counts.

  Returns:
    ``(direction, aux)``: ``direction`` has ``params``'s structure; ``aux`` is ``[C, k]``-stacked. Each
    chain's ``theta - theta_k`` is accumulated as the sum of its ``k`` steps (equal in exact arithmetic,
    without the cancellation error of the difference).
  """
  num_chains = jax.tree.leaves(batches)[0].shape[0]
  keys = jax.vmap(lambda c: jax.random.fold_in(rng, c))(jnp.arange(num_chains))
  _, moved, aux = jax.vmap(_chain, in_axes=(None, None, 0, 0, None))(objective, params, batches, keys, alpha)
  w = jnp.ones((num_chains,), jnp.float32) if chain_mask is None else chain_mask.astype(jnp.float32)
  w = w / jnp.maximum(w.sum(), 1.0)

  def direction(m):
    return jnp.tensordot(w.astype(m.dtype), m, axes=1)

  return jax.tree.map(direction, moved), aux


def outer_step(tx: optax.GradientTransformation, params: Params, direction: Params,
               opt_state: optax.OptState) -> Tuple[Params, optax.OptState]:
  """Eq. 7 through ``tx``: the direction ``theta - theta_k`` is ``tx``'s "gradient".

  ``optax.sgd(beta)`` gives ``theta + beta (theta_k - theta)`` exactly; ``optax.adam(beta)`` the paper's
  Adam outer update.
  """
  updates, opt_state = tx.update(direction, opt_state, params)
  return optax.apply_updates(params, updates), opt_state
