"""Training state pytree and the optimizer factory.

`TrainState` holds everything a train step reads and writes: the step counter, the parameters and the
optimizer state. It is a pure pytree (a `flax.struct.dataclass`), so it can be jitted, donated, saved
with Orbax and restored into an abstract target. The optimizer (`optax.GradientTransformation`) is
not part of the state: the update function closes over it (see `jaxrec.train.learner`).
"""

from __future__ import annotations

from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import optax

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """State of a training run.

  Attributes:
    step: int32 scalar array, the number of updates applied so far.
    params: model parameters (any pytree of arrays).
    opt_state: optimizer state returned by `tx.init(params)`.
  """

  step: jax.Array
  params: PyTree
  opt_state: PyTree


def create(params: PyTree, tx: optax.GradientTransformation) -> TrainState:
  """Returns the initial `TrainState` (step 0) for `params` and optimizer `tx`.

  `params` is copied, so donating the state to a jitted step never deletes the caller's arrays.
  """
  params = jax.tree.map(lambda x: jnp.array(x, copy=True), params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def make_optimizer(
    name: str = "adam",
    learning_rate: float = 1e-3,
    weight_decay: float = 0.0,
    clip_norm: Optional[float] = None,
    schedule: Optional[optax.Schedule] = None,
) -> optax.GradientTransformation:
  """Builds an optimizer as an `optax.chain`.

  The chain is `[clip_by_global_norm(clip_norm)] -> [add_decayed_weights] -> base`, where `base` is

  * `"adam"`: Adam (Kingma & Ba, 2015); `weight_decay` is a coupled L2 penalty added to the gradient
    (`g + wd * w`), as in `torch.optim.Adam(weight_decay=...)` used by most recsys reference code.
  * `"sgd"`: plain SGD; `weight_decay` is coupled as for Adam (`torch.optim.SGD` semantics).
  * `"adamw"`: AdamW (Loshchilov & Hutter, 2019); `weight_decay` is decoupled
    (`w <- w - lr * (adam_update + wd * w)`).

  Args:
    name: "adam", "sgd" or "adamw".
    learning_rate: constant learning rate, used when `schedule` is None.
    weight_decay: L2 (adam/sgd) or decoupled (adamw) weight decay; 0 disables it.
    clip_norm: if set, gradients are clipped to this global norm first.
    schedule: optional `optax.Schedule` (step -> learning rate) replacing `learning_rate`.

  Returns:
    The `optax.GradientTransformation`.
  """
  lr = schedule if schedule is not None else learning_rate
  parts = []
  if clip_norm is not None:
    parts.append(optax.clip_by_global_norm(clip_norm))
  if name == "adamw":
    parts.append(optax.adamw(lr, weight_decay=weight_decay))
  elif name in ("adam", "sgd"):
    if weight_decay:
      parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(optax.adam(lr) if name == "adam" else optax.sgd(lr))
  else:
    raise ValueError(f"Unknown optimizer {name!r}; expected 'adam', 'sgd' or 'adamw'.")
  return parts[0] if len(parts) == 1 else optax.chain(*parts)
