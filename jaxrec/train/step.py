"""The pure train step factory.

A train step has the signature shared by every method in jaxrec (see ARCHITECTURE.md):

    step(state: TrainState, batch: dict, rng: PRNGKey) -> (state, metrics)

`rng` is the per-step key; the loop derives it as `jax.random.fold_in(rng, step)`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Tuple

import jax
import jax.numpy as jnp
import optax

from jaxrec.train.state import TrainState

Batch = Mapping[str, Any]
LossFn = Callable[[Any, Batch, jax.Array], Tuple[jax.Array, Mapping[str, jax.Array]]]
StepFn = Callable[[TrainState, Batch, jax.Array], Tuple[TrainState, dict]]

RESERVED_METRICS = ("loss", "grad_norm", "is_finite")


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation) -> StepFn:
  """Returns a pure `step(state, batch, rng) -> (state, metrics)`.

  Args:
    loss_fn: `loss_fn(params, batch, rng) -> (loss, aux)`, `loss` a scalar, `aux` a dict of scalars.
    tx: the optimizer.

  Returns:
    The step function. Its metrics are `aux` plus `loss`, `grad_norm` (global L2 norm of the
    gradient, before any clipping in `tx`) and `is_finite` (bool: loss and gradient finite; a
    gradient whose squared norm overflows float32 also counts as non-finite). Keys of `aux` named
    like these are overwritten. The update is applied even when `is_finite` is False: the loop
    stops the run instead.
  """

  def step(state: TrainState, batch: Batch, rng: jax.Array) -> Tuple[TrainState, dict]:
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, aux), grads = grad_fn(state.params, batch, rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.global_norm(grads)
    metrics = dict(aux)
    metrics["loss"] = loss
    metrics["grad_norm"] = grad_norm
    metrics["is_finite"] = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  return step


def jit_train_step(loss_fn: LossFn, tx: optax.GradientTransformation) -> StepFn:
  """`make_train_step` jitted with the state donated (`donate_argnums=0`).

  The input state's buffers are reused for the output: do not read a state after passing it in.
  """
  return jax.jit(make_train_step(loss_fn, tx), donate_argnums=0)
