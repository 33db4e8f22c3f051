"""SML's transfer network ``w_t = f_Theta(w_{t-1}, w_hat_t)`` (paper 003, Sec. 3.2, Eq. 4-7).

For one parameter row (a user's or an item's embedding, ``d`` values)::

    H0 = [w_prev ; w_hat ; w_prev * w_hat / (||w_prev|| + eps)]          3 x d        (Eq. 4)
    H1 = GELU(F1 H0 + c1)                                                 n1 x d       (Eq. 5)
    H2 = GELU(F2 H1 + c2)                                                 n2 x d       (Eq. 5, "similarly")
    z  = GELU(W_f^T flatten(H2) + b1)                                     d_f          (Eq. 6)
    w  = W_o^T z + b2                                                     d            (Eq. 7)

``F1`` (``n1 x 3``) and ``F2`` (``n2 x n1``) are the vertical (``3 x 1`` / ``n1 x 1``) filters, so the
convolutions are per-column matrix products; ``flatten`` is channel-major (index ``c * d + m``), as a
PyTorch ``view`` of the ``[n2, 1, d]`` feature map. :func:`apply_rows` ``vmap`` s the row function over
``[R, d]`` rows; one network per parameter group (MF: users, items, Sec. 3.4), shared across its rows.

Variants (:class:`TransferConfig`):

* ``gelu``: ``"erf"`` (the exact GELU of Hendrycks & Gimpel, the paper's), ``"tanh"``, or ``"sigmoid"``
  ``x * sigmoid(1.702 x)`` (the authors' code).
* ``detach_hat``: ``w_hat`` is a constant inside the product row (the authors' code detaches it there;
  the paper does not), and ``eps`` (paper ``1e-15``; the code uses none, ``eps=0``).
* ``cnn=False`` (SML-CNN, Sec. 4.3): no convolutions, ``z = GELU(W_f^T flatten(H0) + b1)``.
* ``fc=False`` (SML-FC): no hidden FC layer, ``w = W_o^T flatten(H2) + b2``.

:func:`fit_pass_through` warm-starts a network to pass ``w_hat`` through (``f(w, w + n) ~ w + n`` on a
table's rows, ``n`` Gaussian noise): not in the paper (Algorithm 1 line 1 initialises ``Theta`` at
random); an option of the strategy (``SMLConfig.theta_init``), because from a random ``Theta`` the
transfer learned here collapses to a near-constant function of its inputs (a popularity model).

Departure from the paper: the convolutions carry biases ``c1, c2`` (PyTorch's ``Conv2d`` default, as the
authors' code has them; Eq. 5 writes none). Initialisation is PyTorch's default for ``Conv2d``/``Linear``
(weights and biases uniform in ``+-1/sqrt(fan_in)``), as the authors' code gets it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from jaxrec.train.fit import ConfigError, check_fields

GELUS = ("erf", "tanh", "sigmoid")


@dataclasses.dataclass(frozen=True)
class TransferConfig:
  """Shape and variant of one transfer network.

  Attributes:
    dim: ``d``, the parameter row size (MF embedding dimension).
    filters: ``(n1, n2)``, filters of the two convolutions (paper ``[10, 5]``).
    hidden: ``d_f``, the FC layer size (paper 512).
    gelu: ``"erf"`` (paper), ``"tanh"`` or ``"sigmoid"`` (authors' code).
    detach_hat: treat ``w_hat`` as a constant inside the product row (authors' code).
    eps: added to ``||w_prev||`` in the product row (paper 1e-15; authors' code 0).
    cnn: keep the convolutions (False: SML-CNN).
    fc: keep the hidden FC layer (False: SML-FC).
  """

  dim: int = 64
  filters: tuple = (10, 5)
  hidden: int = 512
  gelu: str = "erf"
  detach_hat: bool = False
  eps: float = 1e-15
  cnn: bool = True
  fc: bool = True

  def __post_init__(self):
    check_fields(self, {"dim": ("int", 1, False), "hidden": ("int", 1, False),
                        "gelu": (GELUS, None, False), "eps": ("float", 0, False)})
    if len(self.filters) != 2 or min(self.filters) < 1:
      raise ConfigError(type(self).__name__, "filters", f"must be two positive counts (n1, n2), got "
                        f"{self.filters}")
    if not (self.cnn or self.fc):
      raise ConfigError(type(self).__name__, "cnn", "and fc cannot both be false (nothing left to transfer)")


def gelu(x: jax.Array, kind: str) -> jax.Array:
  if kind == "sigmoid":
    return x * jax.nn.sigmoid(1.702 * x)
  return jax.nn.gelu(x, approximate=(kind == "tanh"))


def _uniform(key, shape, fan_in):
  bound = 1.0 / jnp.sqrt(float(fan_in))
  return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def init(rng: jax.Array, config: TransferConfig) -> dict:
  """The parameters ``Theta`` of one network (a dict of arrays; keys depend on ``cnn`` / ``fc``)."""
  d, (n1, n2), h = config.dim, config.filters, config.hidden
  keys = iter(jax.random.split(rng, 8))
  p = {}
  if config.cnn:
    p["F1"] = _uniform(next(keys), (n1, 3), 3)
    p["c1"] = _uniform(next(keys), (n1,), 3)
    p["F2"] = _uniform(next(keys), (n2, n1), n1)
    p["c2"] = _uniform(next(keys), (n2,), n1)
  flat = (n2 if config.cnn else 3) * d
  if config.fc:
    p["Wf"] = _uniform(next(keys), (flat, h), flat)
    p["b1"] = _uniform(next(keys), (h,), flat)
    out_in = h
  else:
    out_in = flat
  p["Wo"] = _uniform(next(keys), (out_in, d), out_in)
  p["b2"] = _uniform(next(keys), (d,), out_in)
  return p


def stack(w_prev: jax.Array, w_hat: jax.Array, config: TransferConfig) -> jax.Array:
  """Eq. 4: the ``3 x d`` stack of one row."""
  hat = jax.lax.stop_gradient(w_hat) if config.detach_hat else w_hat
  dot = w_prev * hat / (jnp.linalg.norm(w_prev) + config.eps)
  return jnp.stack([w_prev, w_hat, dot])


def apply_row(theta: dict, w_prev: jax.Array, w_hat: jax.Array, config: TransferConfig) -> jax.Array:
  """``f_Theta(w_prev, w_hat)`` for one row ``[d]`` (Eq. 4-7)."""
  h = stack(w_prev, w_hat, config)
  if config.cnn:
    h = gelu(theta["F1"] @ h + theta["c1"][:, None], config.gelu)
    h = gelu(theta["F2"] @ h + theta["c2"][:, None], config.gelu)
  h = h.reshape(-1)
  if config.fc:
    h = gelu(h @ theta["Wf"] + theta["b1"], config.gelu)
  return h @ theta["Wo"] + theta["b2"]


def apply_rows(theta: dict, w_prev: jax.Array, w_hat: jax.Array, config: TransferConfig) -> jax.Array:
  """``[R, d]`` rows -> ``[R, d]``: :func:`apply_row` vmapped over rows (the network is shared)."""
  return jax.vmap(apply_row, in_axes=(None, 0, 0, None))(theta, w_prev, w_hat, config)


def fit_pass_through(rng: jax.Array, theta: dict, table: jax.Array, config: TransferConfig, *, steps: int,
                     learning_rate: float = 1e-3, batch_size: int = 256, noise: float = 0.5):
  """``theta`` after ``steps`` Adam steps on ``mean ||f(w, h) - h||^2``, ``w`` rows of ``table`` drawn
  uniformly, ``h = w + noise * std(table) * N(0, 1)`` (so the network passes ``w_hat`` through rather than
  copy ``w_prev``). Returns ``(theta, final loss)``; one ``lax.scan``, jittable."""
  tx = optax.adam(learning_rate)
  scale = noise * jnp.std(table)

  def step(carry, key):
    th, opt = carry
    k_idx, k_noise = jax.random.split(key)
    w = table[jax.random.randint(k_idx, (batch_size,), 0, table.shape[0])]
    h = w + scale * jax.random.normal(k_noise, w.shape, w.dtype)
    loss, grads = jax.value_and_grad(lambda t: jnp.mean((apply_rows(t, w, h, config) - h) ** 2))(th)
    updates, opt = tx.update(grads, opt, th)
    return (optax.apply_updates(th, updates), opt), loss

  (theta, _), losses = jax.lax.scan(step, (theta, tx.init(theta)), jax.random.split(rng, steps))
  return theta, losses[-1] if steps else jnp.float32(0.0)
