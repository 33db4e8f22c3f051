"""Learners: the one training shape every method plugs into.

A :class:`Learner` is a triple of pure functions over a pytree state, in the spirit of optax's
``GradientTransformation`` (``init``/``update``) and learned_optimization's ``Optimizer``
(``init``/``update``/``get_params``)::

    state = learner.init(params, rng)                     # any pytree (params, optimizer states, ...)
    state, metrics = learner.update(state, batch, rng)    # pure: jit it, donate the state
    served = learner.params(state)                        # what is scored, evaluated and served

``metrics`` is a dict of device scalars (or small arrays) whose float entries the loop checks for
NaN/Inf; no name is required (a learner may report ``loss``, ``grad_norm``, a discriminator loss, a
meta-loss, ...). A learner that knows more precisely when its step went wrong may report a boolean
``is_finite``.

Constructors:

* :func:`gradient_learner`: the gradient of one loss, then one optax transform (2TS stages, every base
  model). Freezing parameters is a property of the transform (``optax.multi_transform`` with
  ``optax.set_to_zero``), applied once.
* Methods build their own (TP: inner chains + outer step + discriminator; MeLON: a gradient through an
  update; SML: transfer-network steps), and streams' strategies are learners whose batch is a block.

:func:`jit_update` jits ``learner.update`` with the state donated, once per update function (cached), so
two runs with the same learner do not compile twice.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import optax

from jaxrec.train import state as state_lib

PyTree = Any
Params = Any
State = Any
Batch = Mapping[str, Any]
Metrics = dict
LossFn = Callable[[Params, Batch, jax.Array], Tuple[jax.Array, Mapping[str, jax.Array]]]


class Learner(NamedTuple):
  """``(init, update, params)``: see the module docstring.

  Attributes:
    init: ``init(params, rng) -> state``; ``params`` are the initial served parameters.
    update: ``update(state, batch, rng) -> (state, metrics)``, pure and jittable.
    params: ``params(state) -> served parameters`` (what ``score_fn(params, queries, items)`` takes).
  """

  init: Callable[[Params, jax.Array], State]
  update: Callable[[State, Batch, jax.Array], Tuple[State, Metrics]]
  params: Callable[[State], Params]


def _train_state_params(state: state_lib.TrainState) -> Params:
  return state.params


def gradient_learner(loss_fn: LossFn, tx: optax.GradientTransformation) -> Learner:
  """The gradient of ``loss_fn`` followed by ``tx``: today's train step as a :class:`Learner`.

  The state is a :class:`jaxrec.train.state.TrainState` (step, params, opt_state). Metrics are the
  loss's ``aux`` plus ``loss`` and ``grad_norm`` (global L2 norm of the gradient before any clipping in
  ``tx``) and ``is_finite`` (loss and gradient norm finite; a squared norm overflowing float32 counts as
  non-finite). The update is applied even when non-finite: the loop stops the run instead.

  Args:
    loss_fn: ``loss_fn(params, batch, rng) -> (loss, aux)``, ``loss`` a scalar, ``aux`` a dict.
    tx: the optimizer.
  """

  def init(params: Params, rng: jax.Array) -> state_lib.TrainState:
    del rng
    return state_lib.create(params, tx)

  def update(state: state_lib.TrainState, batch: Batch, rng: jax.Array):
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.global_norm(grads)
    metrics = dict(aux)
    metrics.update(loss=loss, grad_norm=grad_norm,
                   is_finite=jnp.isfinite(loss) & jnp.isfinite(grad_norm))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return Learner(init=init, update=update, params=_train_state_params)


@functools.lru_cache(maxsize=None)
def _jitted(update: Callable) -> Callable:
  return jax.jit(update, donate_argnums=0)


def jit_update(learner: Learner) -> Callable[[State, Batch, jax.Array], Tuple[State, Metrics]]:
  """``learner.update`` jitted with the state donated; one jit object per update function.

  The input state's buffers are reused for the output: do not read a state after passing it in.
  Learner constructors that should not recompile across runs (another seed, another number of epochs)
  return the same ``update`` object for the same static configuration (e.g. through
  ``functools.lru_cache`` on a hashable config that leaves out the seed and the budget).
  """
  return _jitted(learner.update)
