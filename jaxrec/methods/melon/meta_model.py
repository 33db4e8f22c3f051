"""MeLON's meta-model phi^2D: interaction representation, parameter role, fused learning rate (paper 002,
"Methodology: MeLON", Definitions 1-4, Eq. 8-13) and the forgetting rate.

* Step I, Definition 2 / Eq. 8-9 (graph attention over the interaction history): for user ``u`` with
  sampled past items ``i'``, ``alpha_{ui'} = softmax_{i'}(LeakyReLU([e_u, e_i'] . a_U))`` over the real
  neighbours and ``e~_u = ReLU(W_user [e_u, sum alpha e_i'] + b_user)``; the item side is the same in the
  opposite direction (``a_I``, ``W_item``). A node with no past has a zero neighbour sum.
* Definition 3 / Eq. 10: ``h_x = ReLU(W_x [e~_u, e~_i] + b_x)``.
* Step II, Definition 4 / Eq. 11: ``h_theta = MLP([theta_m, L(x), grad_m L(x)])``, ``L = role_layers``
  linear layers each followed by ReLU, the loss and the gradient preprocessed as in Andrychowicz et al.
  2016 (Sec. 3.2, ``p = 10``): ``x -> (log|x| / p, sign x)`` if ``|x| >= e^-p`` else ``(-1, e^p x)``.
* Step III, Eq. 12: ``w = sigmoid(W_lr [h_x, h_theta] + b_lr)``, computed as ``W_lr^x h_x + W_lr^theta
  h_theta + b_lr`` (the same linear map; the ``h_x`` half is computed once per interaction).
* Forgetting rate (Appendix: "we additionally learn a forgetting rate for the current parameter",
  Ravi & Larochelle 2017): ``f = sigmoid(W_f [h_x, h_theta] + b_f)`` and ``theta'_x = f theta - w grad``
  (``forget=False``: ``f = 1``, Eq. 13 as printed).

The paper gives no widths or initialisation: the widths are the authors' meta width (20), ``b_lr`` starts
at ``rate_bias`` (-5: ``w ~ 0.007``) and ``b_f`` at ``forget_bias`` (5: ``f ~ 0.993``), the centres of the
authors' ``U(-5, -4)`` / ``U(4, 6)``.

Variants (one code path, :class:`MetaConfig` fields):

* ``interaction=False``: MeLON_P (Table 3, "without interaction-wise inputs"): no ``h_x``, and the role
  inputs are parameter-level (the batch-mean loss and the parameter's gradient averaged over the batch's
  interactions that involve it), so every interaction gets the same rate for a parameter.
* ``parameter=False``: MeLON_I ("without parameter-wise inputs"): ``w = sigmoid(W h_x + b)``, one rate per
  interaction for all its parameters.
* The authors' coded variant (``melon.strategy.AUTHORS``): no parameter value input, the batch-mean loss,
  one 20-wide layer on the four preprocessed features (no hidden layer), two more 20-wide layers on
  ``[u; i]`` (their batch norm is left out), gated update with the forget gate.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

PREPROCESS_P = 10.0


def preprocess(x: jax.Array, p: float = PREPROCESS_P) -> jax.Array:
  """Andrychowicz et al. 2016's gradient preprocessing: ``x [...] -> [..., 2]``."""
  big = jnp.abs(x) >= jnp.exp(-p)
  a = jnp.where(big, jnp.log(jnp.maximum(jnp.abs(x), 1e-38)) / p, -1.0)
  b = jnp.where(big, jnp.sign(x), jnp.exp(p) * x)
  return jnp.stack([a, b], axis=-1)


@dataclasses.dataclass(frozen=True)
class MetaConfig:
  """The meta-model's architecture (see module docstring).

  Attributes:
    hidden: width of ``h_x``, ``h_theta`` and the GAT layers.
    role_layers: ``L`` of Eq. 11 (2 in the paper).
    interaction_layers: extra ReLU layers on ``h_x`` (0 in the paper, 2 in the authors' code).
    interaction: use ``h_x`` (False: MeLON_P).
    parameter: use ``h_theta`` (False: MeLON_I).
    param_value: feed ``theta_m`` to the role MLP (the authors' code does not).
    batch_mean_loss: feed the batch-mean loss instead of ``L(x)`` (the authors' code).
    forget: learn the forgetting rate.
    rate_bias, forget_bias: initial ``b_lr`` / ``b_f``.
  """

  hidden: int = 20
  role_layers: int = 2
  interaction_layers: int = 0
  interaction: bool = True
  parameter: bool = True
  param_value: bool = True
  batch_mean_loss: bool = False
  forget: bool = True
  rate_bias: float = -5.0
  forget_bias: float = 5.0

  def __post_init__(self):
    if not (self.interaction or self.parameter):
      raise ValueError("MetaConfig: interaction and parameter cannot both be False")
    if self.hidden < 1 or self.role_layers < 1 or self.interaction_layers < 0:
      raise ValueError("MetaConfig: hidden and role_layers must be >= 1, interaction_layers >= 0")


def _dense_init(n_in: int, n_out: int, bias):
  """Initialiser of a Dense-shaped ``{"kernel" [n_in, n_out], "bias" [n_out]}`` param (LeCun normal
  kernel, as ``nn.Dense``); ``bias``: a constant, a list of per-unit constants, or None (no bias)."""
  def init(rng):
    out = {"kernel": nn.initializers.lecun_normal()(rng, (n_in, n_out))}
    if bias is not None:
      out["bias"] = jnp.broadcast_to(jnp.asarray(bias, jnp.float32), (n_out,))
    return out
  return init


def _masked_softmax(logits, mask):
  logits = jnp.where(mask, logits, -1e30)
  w = jax.nn.softmax(logits, axis=-1)
  return jnp.where(mask, w, 0.0)


class MetaModel(nn.Module):
  """phi^2D. Methods: :meth:`interaction` (``h_x``), :meth:`rates` (``w``, ``f`` per pair)."""

  config: MetaConfig

  def setup(self):
    c = self.config
    h = c.hidden
    if c.interaction:
      self.att_user = nn.Dense(1, use_bias=False, name="a_user")
      self.att_item = nn.Dense(1, use_bias=False, name="a_item")
      self.w_user = nn.Dense(h, name="w_user")
      self.w_item = nn.Dense(h, name="w_item")
      self.w_x = nn.Dense(h, name="w_x")
      self.extra = [nn.Dense(h, name=f"x_{k}") for k in range(c.interaction_layers)]
      self.lr_x = nn.Dense(1, bias_init=nn.initializers.constant(c.rate_bias), name="lr_x")
      if c.forget:
        self.f_x = nn.Dense(1, bias_init=nn.initializers.constant(c.forget_bias), name="f_x")
    if c.parameter:
      # Layer 1 of Eq. 11 on [theta, pre(L), pre(grad)] (kernel rows in that order, theta's row only with
      # param_value), written as a sum of its row blocks so the per-interaction loss part is computed once
      # per interaction and no [pairs, 5] concatenation is built: the same linear map.
      f_in = 4 + int(c.param_value)
      self.role_kernel = self.param("role_0_kernel", nn.initializers.lecun_normal(), (f_in, h))
      self.role_bias = self.param("role_0_bias", nn.initializers.zeros, (h,))
      # Layers 2..L and the h_theta half of Eq. 12 as Dense-shaped {"kernel", "bias"} params, applied in
      # a pairs-minor layout by :meth:`rates`. The bias of Eq. 12 lives on the h_x half unless there is
      # no h_x (MeLON_P).
      self.role = [self.param(f"role_{k}", _dense_init(h, h, 0.0)) for k in range(1, c.role_layers)]
      out = 2 if c.forget else 1
      bias = [c.rate_bias, c.forget_bias][:out] if not c.interaction else None
      self.head_t = self.param("head_theta", _dense_init(h, out, bias))

  def _side(self, att, w, e_self, e_nbr, mask):
    """Eq. 8-9: ``e_self [B, D1]``, ``e_nbr [B, K, D2]``, ``mask [B, K]`` -> ``[B, H]``."""
    tiled = jnp.broadcast_to(e_self[:, None], e_nbr.shape[:2] + e_self.shape[-1:])
    pair = jnp.concatenate([tiled, e_nbr], -1)
    alpha = _masked_softmax(nn.leaky_relu(att(pair)[..., 0], 0.2), mask)
    agg = jnp.einsum("bk,bkd->bd", alpha, e_nbr)
    return nn.relu(w(jnp.concatenate([e_self, agg], -1)))

  def interaction(self, e_u, e_i, nbr_items, nbr_items_mask, nbr_users, nbr_users_mask):
    """Definitions 2-3: ``h_x [B, H]`` from the user's and item's embeddings ``[B, Du]``, ``[B, Di]`` and
    their sampled neighbours' embeddings (``[B, K, Di]`` past items of the user, ``[B, K, Du]`` past users
    of the item) with masks ``[B, K]``."""
    eu = self._side(self.att_user, self.w_user, e_u, nbr_items, nbr_items_mask)
    ei = self._side(self.att_item, self.w_item, e_i, nbr_users, nbr_users_mask)
    h = nn.relu(self.w_x(jnp.concatenate([eu, ei], -1)))
    for layer in self.extra:
      h = nn.relu(layer(h))
    return h

  def rates(self, h_x, theta, loss, grad):
    """Eq. 11-12 (+ forgetting): ``(w, f)`` with the shape of ``grad`` ``[B, ...]``.

    Args:
      h_x: ``[B, H]`` (ignored with ``interaction=False``).
      theta: parameter values, broadcastable to ``grad``.
      loss: ``[B]`` the loss fed to the role MLP (per interaction or already averaged).
      grad: ``[B, ...]`` the gradients fed to the role MLP.
    """
    c = self.config
    b = grad.shape[0]
    tail = (1,) * (grad.ndim - 1)
    logit_w = jnp.zeros(grad.shape)
    logit_f = jnp.zeros(grad.shape)
    if c.interaction:
      logit_w = logit_w + self.lr_x(h_x)[:, 0].reshape((b,) + tail)
      if c.forget:
        logit_f = logit_f + self.f_x(h_x)[:, 0].reshape((b,) + tail)
    if c.parameter:
      # Pairs-minor layout: the hidden units lead ([H, B, P] with P the pairs of one interaction), so
      # every layer is one [H', H] @ [H, pairs] product and the per-interaction part broadcasts along
      # the minor axis. The same linear maps as Dense layers on [pairs, H]; in that layout XLA:CPU
      # transposes every [pairs, H] activation for the weight gradients, and a broadcast-multiply first
      # layer materialises [pairs, H] copies of each feature (with the preprocessing's log recomputed
      # in each): together ~3x the forward's cost in the meta-gradient.
      k = self.role_kernel
      grad2 = grad.reshape(b, -1)
      p = grad2.shape[1]
      pl = preprocess(loss)  # [B, 2]
      pg = preprocess(grad2)  # [B, P, 2]
      per_x = (pl @ k[-4:-2] + self.role_bias).T[:, :, None]  # [H, B, 1]
      if c.param_value:
        x = jnp.concatenate([jnp.broadcast_to(theta, grad.shape).reshape(b, p, 1).astype(pg.dtype), pg], -1)
        k_pair = jnp.concatenate([k[:1], k[-2:]], 0)
      else:
        x, k_pair = pg, k[-2:]
      x = jnp.moveaxis(x, -1, 0).reshape(x.shape[-1], b * p)  # [F, pairs]
      h = nn.relu((k_pair.T @ x).reshape(-1, b, p) + per_x).reshape(-1, b * p)
      for layer in self.role:
        h = nn.relu(layer["kernel"].T @ h + layer["bias"][:, None])
      out = self.head_t["kernel"].T @ h  # [2 or 1, pairs]
      if "bias" in self.head_t:
        out = out + self.head_t["bias"][:, None]
      out = out.reshape((-1,) + grad.shape)
      logit_w = logit_w + out[0]
      if c.forget:
        logit_f = logit_f + out[1]
    w = jax.nn.sigmoid(logit_w)
    f = jax.nn.sigmoid(logit_f) if c.forget else jnp.ones_like(w)
    return w, f

  def __call__(self, e_u, e_i, nbr_items, nbr_items_mask, nbr_users, nbr_users_mask, theta, loss, grad):
    """Both parts (for ``init``)."""
    h = None
    if self.config.interaction:
      h = self.interaction(e_u, e_i, nbr_items, nbr_items_mask, nbr_users, nbr_users_mask)
    return self.rates(h, theta, loss, grad)


@functools.lru_cache(maxsize=None)
def _jitted_init(config: MetaConfig, user_dim: int, item_dim: int, k: int):
  b = 2
  z = jnp.zeros

  def f(rng):
    return MetaModel(config).init(rng, z((b, user_dim)), z((b, item_dim)), z((b, k, item_dim)),
                                  jnp.ones((b, k), bool), z((b, k, user_dim)), jnp.ones((b, k), bool),
                                  z((b, 3)), z((b,)), z((b, 3)))
  return jax.jit(f)


def init(config: MetaConfig, rng: jax.Array, user_dim: int, item_dim: int, k: int) -> dict:
  """``{"params": ...}`` of :class:`MetaModel` for node embeddings of widths ``user_dim``/``item_dim``
  (jitted, compiled once per configuration)."""
  return dict(_jitted_init(config, user_dim, item_dim, k)(rng))
