"""The TP learner (paper 001, Algorithm 1): one pure ``update`` per outer iteration.

``update(state, batch, rng)``, for a batch ``[C, k, S, ...]`` of :mod:`.tasks`:

1. from ``(theta, theta_d)`` run ``C`` chains of ``k`` inner SGD steps on the inner objective of
   :mod:`.adversary` (prediction loss, adversary, discriminator; Eq. 6 and 10), ``vmap`` over chains and
   ``lax.scan`` over steps (:func:`.alignment.outer_direction`);
2. move ``theta`` and ``theta_d`` toward the chains' results (Eq. 7), each with its own optimizer (Adam
   by default, Sec. 4.1), Algorithm 1's two outer lines.

The state (:class:`TPState`) holds the encoder's and the discriminator's parameters and both optimizer
states; ``params(state)`` serves the encoder (``score_fn(params, queries, items)`` of the registry). The
learner is cached on ``(module, TPConfig.static())``, so another seed or budget reuses the compiled
update.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxrec.methods.tp import adversary, alignment
from jaxrec.methods.tp.config import TPConfig
from jaxrec.train import learner as learner_lib


class TPState(NamedTuple):
  """``step``, encoder ``params``, ``disc_params``, and the two outer optimizer states."""

  step: jax.Array
  params: Any
  disc_params: Any
  opt_state: Any
  disc_opt_state: Any


def outer_optimizer(name: str, rate: float, eps: float = 1e-8) -> optax.GradientTransformation:
  """The outer transform fed with the direction ``theta - theta_k``: ``adam`` or ``sgd`` (Eq. 7)."""
  if name == "adam":
    return optax.adam(rate, eps=eps)
  if name == "sgd":
    return optax.sgd(rate)
  raise ValueError(f"unknown outer optimizer {name!r}")


def _step_batch(batch):
  """Per inner step, the objective's inputs (``head`` and ``user`` are per subsequence already)."""
  keys = ("history", "history_mask", "user", "positive", "negatives", "mask", "head")
  return {k: batch[k] for k in keys}


def tp_learner(module: nn.Module, config: TPConfig) -> learner_lib.Learner:
  """The TP learner of ``module`` (a registry sequence encoder) under ``config``.

  Cached on ``config.static()``: another seed or budget returns the same learner (one compile).
  """
  return _tp_learner(module, config.static())


@functools.lru_cache(maxsize=None)
def _tp_learner(module: nn.Module, static: tuple) -> learner_lib.Learner:
  (k, num_chains, support, history_len, num_negatives, alpha, disc_alpha, beta, disc_beta, outer_name,
   eps, lam, disc_hidden, dropout) = static
  del k, num_chains, support, history_len, num_negatives  # shapes come from the batch
  disc = adversary.Discriminator(hidden=disc_hidden)
  objective = adversary.inner_objective(module, disc, lam, dropout)
  rates = {"encoder": alpha, "disc": disc_alpha if disc_alpha is not None else alpha}
  tx = outer_optimizer(outer_name, beta, eps)
  disc_tx = outer_optimizer(outer_name, disc_beta if disc_beta is not None else beta, eps)

  def init(params, rng):
    dim = int(module.dim)
    disc_params = disc.init(rng, jnp.zeros((1, dim), jnp.float32))
    return TPState(step=jnp.zeros((), jnp.int32), params=params, disc_params=disc_params,
                   opt_state=tx.init(params), disc_opt_state=disc_tx.init(disc_params))

  def update(state: TPState, batch, rng):
    pair = {"encoder": state.params, "disc": state.disc_params}
    direction, aux = alignment.outer_direction(objective, pair, _step_batch(batch), rng, rates,
                                               batch["chain_mask"])
    params, opt_state = alignment.outer_step(tx, state.params, direction["encoder"], state.opt_state)
    disc_params, disc_opt_state = alignment.outer_step(disc_tx, state.disc_params, direction["disc"],
                                                       state.disc_opt_state)
    tm = batch["task_mask"].astype(jnp.float32)
    n = jnp.maximum(tm.sum(), 1.0)
    metrics = {name: jnp.sum(aux[name] * tm) / n for name in ("loss", "disc_loss", "disc_acc")}
    # The first inner step's loss is the loss at theta (before any inner update of that chain).
    metrics["loss_at_theta"] = jnp.sum(aux["loss"][:, 0] * tm[:, 0]) / jnp.maximum(tm[:, 0].sum(), 1.0)
    metrics["direction_norm"] = optax.global_norm(direction["encoder"])
    metrics["is_finite"] = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["direction_norm"])
    return TPState(step=state.step + 1, params=params, disc_params=disc_params, opt_state=opt_state,
                   disc_opt_state=disc_opt_state), metrics

  return learner_lib.Learner(init=init, update=update, params=lambda s: s.params)
