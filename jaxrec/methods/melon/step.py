"""MeLON's online step (paper 002, Appendix Algorithm 1, Eq. 14-16) as one pure, jittable function.

For the mini-batch ``B_t`` (``users``, ``positives``, ``mask``) and the state
``(Theta_t, phi_t, meta optimizer, history)``::

    B_last     = the batch's users' and items' previous interactions          (history.b_last)
    Theta~     = Theta_t - Delta(phi_t; B_last, Theta_t)                       (Eq. 14, line 6)
    phi_{t+1}  = Adam(phi_t, grad_phi mean_{x in B_t} L_{Theta~}(x))          (Eq. 15, line 8)
    Theta_{t+1} = Theta_t - Delta(phi_{t+1}; B_t, Theta_t)                     (Eq. 16, line 11)
    history    <- B_t                                                          (after it was used)

with ``Delta(phi; B, Theta)`` the per-(interaction, parameter) update ``theta - (f theta - w grad)`` of
:mod:`.meta_model` aggregated per row by :mod:`.rows` (selective: only the rows ``B`` involves change).
``Theta~`` is never materialised: the meta-loss reads it at the rows ``B_t`` involves
(:func:`rows.involved_after`).

Meta-gradient (``order``):

* ``2`` (default): ``jax.grad`` of ``phi -> mean L_{Theta~(phi)}(B_t)``, exactly (Eq. 15). Its chain rule
  is ``-(d Delta / d phi)^T grad L(Theta~)``, and ``grad L(Theta~) = grad L(Theta_t) + H (Theta~ - Theta_t)
  + ...``: the recommender's curvature along the preliminary update enters, which is what makes it a
  second-order meta-gradient (as in MAML; the inner gradients are inputs of the update).
* ``1``: the first-order approximation, the meta-loss linearised at ``Theta_t``:
  ``phi -> <grad L_{Theta_t}(B_t), Theta~(phi)>``, whose gradient is ``-(d Delta / d phi)^T grad
  L(Theta_t)`` (no second forward pass of the recommender at ``Theta~``).

The per-interaction losses and gradients that feed the meta-model are inputs of the update (Eq. 13), in
both orders; they depend on ``Theta_t``, not on ``phi``. (The authors' code detaches them, which does not
change the gradient with respect to ``phi``: theirs is our order 2.)

Dense parameters (``dense``): ``"pair"`` gives every (interaction, dense parameter) pair its own rate, as
Eq. 12 does; ``"batch"`` gives each dense parameter one rate from batch-level inputs (the mean ``h_x``, the
batch-mean loss, the batch-mean gradient) and applies it to the batch-mean gradient, so NCF's ~20k layer
weights are not multiplied by 256 interactions through the role MLP (``O(B M H)``, 2.6 GFLOP a step);
``"auto"`` picks ``"pair"`` up to :data:`AUTO_PAIR_MAX` dense elements (MF's global bias) and ``"batch"``
above. Departure from the paper for NCF with ``"auto"``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrec.methods.melon import history as history_lib
from jaxrec.methods.melon import meta_model as meta_lib
from jaxrec.methods.melon import rows

AUTO_PAIR_MAX = 1024
DENSE_MODES = ("auto", "pair", "batch")


@flax.struct.dataclass
class MelonState:
  """The whole strategy state (one pytree).

  Attributes:
    params: the recommender ``{"params": ...}`` (served).
    meta: the meta-model ``{"params": ...}``.
    meta_opt: the meta optimizer's state.
    history: :class:`jaxrec.methods.melon.history.History`.
    step: int32, mini-batches consumed.
  """

  params: Any
  meta: Any
  meta_opt: Any
  history: history_lib.History
  step: jax.Array


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static configuration of :func:`make_step` (hashable: the compiled step is cached on it).

  Attributes:
    module: the recommender (a registered user model's module).
    loss: its loss name (``"bpr"``, ``"log"``, ``"softmax"``).
    meta: :class:`jaxrec.methods.melon.meta_model.MetaConfig`.
    meta_learning_rate: Adam learning rate of the meta-model (Eq. 15's eta; 1e-3 in the paper).
    num_negatives: uniform negatives per interaction (1 in the authors' code).
    order: 2 (exact) or 1 (first-order) meta-gradient.
    dense: ``"auto"``, ``"pair"`` or ``"batch"``.
    meta_update: False freezes the meta-model (steps 1-2 skipped: the ablation "no meta-learning").
  """

  module: Any
  loss: str = "bpr"
  meta: meta_lib.MetaConfig = meta_lib.MetaConfig()
  meta_learning_rate: float = 1e-3
  num_negatives: int = 1
  order: int = 2
  dense: str = "auto"
  meta_update: bool = True

  def __post_init__(self):
    if self.order not in (1, 2):
      raise ValueError(f"order must be 1 or 2, got {self.order}")
    if self.dense not in DENSE_MODES:
      raise ValueError(f"dense must be one of {DENSE_MODES}, got {self.dense!r}")

  def tx(self) -> optax.GradientTransformation:
    return optax.adam(self.meta_learning_rate)


def _dense_mode(cfg: StepConfig, dense: dict) -> str:
  if cfg.dense != "auto":
    return cfg.dense
  return "pair" if sum(v.size for v in dense.values()) <= AUTO_PAIR_MAX else "batch"


def interaction_repr(cfg: StepConfig, meta, params, roles, hist: history_lib.History,
                     inv: rows.Involved) -> jax.Array:
  """``h_x [B, H]`` (Definitions 1-3) of the interactions ``(user, positive)`` of ``inv``; the neighbours
  are the reservoirs of ``hist`` (strictly earlier interactions)."""
  if not cfg.meta.interaction:
    return jnp.zeros((inv.user_idx.shape[0], cfg.meta.hidden))
  e_u, e_items = rows.node_embeddings(inv)
  nbr_i, mask_i = history_lib.neighbours(hist.user_nbrs, hist.user_seen, inv.user_idx)
  nbr_u, mask_u = history_lib.neighbours(hist.item_nbrs, hist.item_seen, inv.item_idx[:, 0])
  emb_i = rows.table_embeddings(params, roles, rows.ITEM, nbr_i)
  emb_u = rows.table_embeddings(params, roles, rows.USER, nbr_u)
  model = meta_lib.MetaModel(cfg.meta)
  return model.apply(meta, e_u, e_items[:, 0], emb_i, mask_i, emb_u, mask_u, method=model.interaction)


def deltas(cfg: StepConfig, meta, inv: rows.Involved, ps: rows.PerSample, h_x: jax.Array) -> rows.PerSample:
  """Per-(interaction, parameter) updates ``theta - theta'_x = (1 - f) theta + w grad`` (Eq. 12-13 with
  the forgetting rate), laid out like :class:`rows.PerSample` (``loss`` holds the mean rate ``w``)."""
  model = meta_lib.MetaModel(cfg.meta)
  m = inv.mask.astype(jnp.float32)
  mean_loss = jnp.sum(ps.loss * m) / jnp.maximum(m.sum(), 1.0)
  param_level = not cfg.meta.interaction  # MeLON_P: parameter-level inputs only
  loss_in = jnp.broadcast_to(mean_loss, ps.loss.shape) if (cfg.meta.batch_mean_loss or param_level) \
      else ps.loss
  rates = []

  def one(theta, grad, feat):
    w, f = model.apply(meta, h_x, theta, loss_in, feat, method=model.rates)
    rates.append((w, f))
    return (1.0 - f) * theta + w * grad

  def kind(theta_rows: dict, grad_rows: dict, idx):
    """All leaves of one kind as one ``[B, K, F]`` matrix (one role-MLP call), split back after."""
    paths = sorted(grad_rows)
    if not paths:
      return {}
    lead = idx.shape
    sizes = [int(np.prod(grad_rows[p].shape[2:])) for p in paths]
    cat = lambda d: jnp.concatenate([d[p].reshape(lead + (-1,)) for p in paths], -1)  # noqa: E731
    theta, grad = cat(theta_rows), cat(grad_rows)
    delta = one(theta, grad, rows.row_mean(idx, inv.mask, grad) if param_level else grad)
    parts = jnp.split(delta, np.cumsum(sizes)[:-1], axis=-1)
    return {p: x.reshape(grad_rows[p].shape) for p, x in zip(paths, parts)}

  user = kind(inv.user, ps.user, inv.user_idx[:, None])
  item = kind(inv.item, ps.item, inv.item_idx)
  dense = {}
  mode = _dense_mode(cfg, inv.dense)
  n = jnp.maximum(m.sum(), 1.0)
  mean_h = (jnp.tensordot(m, h_x, axes=1) / n)[None]
  for p, g in ps.dense.items():
    theta = inv.dense[p]
    if mode == "pair":
      mean_g = jnp.tensordot(m, g, axes=1) / n
      dense[p] = one(jnp.broadcast_to(theta, g.shape), g,
                     jnp.broadcast_to(mean_g, g.shape) if param_level else g)
    else:
      mean_g = (jnp.tensordot(m, g, axes=1) / n)[None]
      w, f = model.apply(meta, mean_h, theta[None], mean_loss[None], mean_g, method=model.rates)
      rates.append((w, f))
      dense[p] = jnp.broadcast_to((1.0 - f) * theta[None] + w * mean_g, g.shape)
  mean_w = jnp.mean(jnp.stack([jnp.mean(w) for w, _ in rates]))
  return rows.PerSample(mean_w, user, item, dense)


def _sg(tree):
  return jax.tree.map(jax.lax.stop_gradient, tree)


def meta_objective(cfg: StepConfig, params, roles, hist, inv_last: rows.Involved, inv_now: rows.Involved,
                   loss_fn, grad_now=None):
  """``phi -> meta-loss`` (Eq. 15): the loss on ``B_t`` of the recommender after the preliminary update on
  ``B_last`` (order 2), or its linearisation at ``Theta_t`` given ``grad_now`` (order 1)."""
  ps_last = _sg(rows.per_sample(loss_fn, inv_last))

  def objective(meta):
    h_last = interaction_repr(cfg, meta, params, roles, hist, inv_last)
    d_last = deltas(cfg, meta, inv_last, ps_last, h_last)
    after = rows.involved_after(inv_now, inv_last, d_last)
    if cfg.order == 2:
      return rows.batch_loss(loss_fn, after)
    return sum(jnp.vdot(g, a) for g, a in zip(jax.tree.leaves(grad_now),
                                               jax.tree.leaves((after.user, after.item, after.dense))))

  return objective


def _negatives(rng, b, num_items, n):
  return jax.random.randint(rng, (b, n), 0, num_items, jnp.int32)


def online_step(cfg: StepConfig, state: MelonState, batch: dict, rng: jax.Array):
  """One mini-batch of Algorithm 1 (see module docstring): ``(state, metrics)``."""
  params, hist = state.params, state.history
  roles = rows.leaf_roles(params)
  loss_fn = rows.local_loss(cfg.module, cfg.loss)
  num_items = cfg.module.num_items
  users, items, mask = batch["user"], batch["positive"], batch["mask"]
  b = users.shape[0]
  k_last, k_now, k_hist = jax.random.split(rng, 3)
  inv_now = rows.gather(params, roles, users, items, _negatives(k_now, b, num_items, cfg.num_negatives), mask)
  ps_now = rows.per_sample(loss_fn, inv_now)
  m = mask.astype(jnp.float32)
  loss_now = jnp.sum(ps_now.loss * m) / jnp.maximum(m.sum(), 1.0)

  meta, meta_opt = state.meta, state.meta_opt
  metrics = {"loss": loss_now}
  if cfg.meta_update:
    last = history_lib.b_last(hist, users, items, mask)
    inv_last = rows.gather(params, roles, last["user"], last["positive"],
                           _negatives(k_last, 2 * b, num_items, cfg.num_negatives), last["mask"])
    grad_now = None
    if cfg.order == 1:
      grad_now = jax.grad(lambda u, i, d: rows.batch_loss(loss_fn, inv_now._replace(user=u, item=i, dense=d)),
                          argnums=(0, 1, 2))(inv_now.user, inv_now.item, inv_now.dense)
    objective = meta_objective(cfg, params, roles, hist, inv_last, inv_now, loss_fn, grad_now)
    meta_loss, g = jax.value_and_grad(objective)(meta)
    updates, new_opt = cfg.tx().update(g, meta_opt, meta)
    new_meta = optax.apply_updates(meta, updates)
    any_last = last["mask"].any()
    meta = jax.tree.map(lambda n, o: jnp.where(any_last, n, o), new_meta, meta)
    meta_opt = jax.tree.map(lambda n, o: jnp.where(any_last, n, o), new_opt, meta_opt)
    metrics.update(meta_loss=meta_loss, meta_grad_norm=optax.global_norm(g),
                   b_last_real=last["mask"].sum().astype(jnp.float32) / jnp.maximum(2.0 * m.sum(), 1.0))

  h_now = interaction_repr(cfg, meta, params, roles, hist, inv_now)
  d_now = deltas(cfg, meta, inv_now, ps_now, h_now)
  new_params = rows.apply(params, roles, inv_now, d_now)
  new_hist = history_lib.observe(hist, users, items, mask, k_hist)
  real = mask.any()
  # No whole-state select on ``real``: an all-padding batch already leaves every table bit-identical
  # (the scatters drop padding, the dense mean over no rows is 0, the meta update is guarded by
  # ``any_last`` above), and a select over the full tables would cost O(users + items) per step.
  new_state = MelonState(params=new_params, meta=meta, meta_opt=meta_opt, history=new_hist,
                         step=state.step + real.astype(jnp.int32))
  metrics.update(rate=d_now.loss, real=real)
  return new_state, metrics


def block_scan(step: Callable, batch_size: int, state, block: dict, rng: jax.Array):
  """A block of ``[P]`` rows as consecutive mini-batches of ``batch_size`` in time order (``lax.scan``
  of ``step(state, batch, rng) -> (state, metrics with a "real" flag)``); metrics averaged over the
  mini-batches with real rows. Shared by MeLON and the Table 2 baselines."""
  p = block["mask"].shape[0]
  bs = batch_size if p % batch_size == 0 else p
  nb = p // bs
  xs = {k: block[k].reshape((nb, bs) + block[k].shape[1:]) for k in ("user", "positive", "mask")}

  def body(s, x):
    i, batch = x
    return step(s, batch, jax.random.fold_in(rng, i))

  state, ms = jax.lax.scan(body, state, (jnp.arange(nb), xs))
  real = ms.pop("real").astype(jnp.float32)
  return state, {k: jnp.sum(v * real) / jnp.maximum(real.sum(), 1.0) for k, v in ms.items()}


def block_step(cfg: StepConfig, batch_size: int, state: MelonState, block: dict, rng: jax.Array):
  """MeLON's :func:`online_step` over a block (:func:`block_scan`)."""
  return block_scan(functools.partial(online_step, cfg), batch_size, state, block, rng)


@functools.lru_cache(maxsize=None)
def jitted_block_step(cfg: StepConfig, batch_size: int):
  """:func:`block_step` jitted with the state donated, once per static configuration."""
  return jax.jit(functools.partial(block_step, cfg, batch_size), donate_argnums=0)


def init_state(cfg: StepConfig, params, rng: jax.Array, num_neighbours: int) -> MelonState:
  """The state for recommender ``params``: a fresh meta-model and an empty history."""
  roles = rows.leaf_roles(params)
  user, item, _ = rows.split(params, roles)
  du = sum(int(v[0].size) for v in user.values())
  di = sum(int(v[0].size) for v in item.values())
  meta = meta_lib.init(cfg.meta, rng, du, di, num_neighbours)
  params = jax.tree.map(lambda x: jnp.array(x, copy=True), params)
  return MelonState(params=params, meta=meta, meta_opt=cfg.tx().init(meta),
                    history=history_lib.empty(cfg.module.num_users, cfg.module.num_items, num_neighbours),
                    step=jnp.zeros((), jnp.int32))


def learning_rate_matrix(cfg: StepConfig, state: MelonState, batch: dict, rng: jax.Array) -> jax.Array:
  """Fig. 4's learning-rate matrix ``W^2D`` of one mini-batch: ``[B, Du + Di]``, the rate ``w`` of every
  (interaction, parameter) pair for the parameters of the interaction's user row and positive item row
  (all their leaves concatenated), as :func:`online_step` would use them at ``state``."""
  params = state.params
  roles = rows.leaf_roles(params)
  loss_fn = rows.local_loss(cfg.module, cfg.loss)
  b = batch["user"].shape[0]
  inv = rows.gather(params, roles, batch["user"], batch["positive"],
                    _negatives(rng, b, cfg.module.num_items, cfg.num_negatives), batch["mask"])
  ps = rows.per_sample(loss_fn, inv)
  h = interaction_repr(cfg, state.meta, params, roles, state.history, inv)
  model = meta_lib.MetaModel(cfg.meta)
  m = inv.mask.astype(jnp.float32)
  mean_loss = jnp.sum(ps.loss * m) / jnp.maximum(m.sum(), 1.0)
  loss_in = jnp.broadcast_to(mean_loss, ps.loss.shape) if cfg.meta.batch_mean_loss else ps.loss
  out = []
  for theta_rows, grad_rows in ((inv.user, ps.user), (inv.item, ps.item)):
    for p in sorted(grad_rows):  # slot 0: the user's row, the positive item's row
      theta = theta_rows[p][:, 0].reshape(b, -1)
      grad = grad_rows[p][:, 0].reshape(b, -1)
      w, _ = model.apply(state.meta, h, theta, loss_in, grad, method=model.rates)
      out.append(w)
  return jnp.concatenate(out, axis=1)
