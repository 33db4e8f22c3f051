"""Table 2's update strategies other than Default, MeLON and SML (paper 002), as stream strategies.

None of them is in the MeLON authors' code; each is built from its own paper's update rule, on MeLON's
recommender side (:mod:`.rows`: per-interaction losses and gradients of the registered model, the
selective row update, ``Theta~`` read at another batch's rows without materialising tables) and the
Default's optimizer (:class:`jaxrec.stream.strategies.StrategyConfig`: Adam 1e-3, weight decay 1e-3, one
update per mini-batch of 256). Every update is one pure function over a state pytree, a block being its
mini-batches in time order under ``lax.scan`` (as :func:`jaxrec.methods.melon.step.block_step`), jitted
once per static configuration; mf-bpr, mf-log and ncf from the registry.

* ``eals`` (:func:`eals`): eALS's weighting of new interactions (He et al. 2016, "Fast matrix
  factorization for online recommendation with implicit feedback", Sec. 4.3 "Online update": a new
  interaction gets the weight ``w_new`` while the user's and the item's earlier interactions keep weight
  1, and the user's / item's factors are re-solved over that weighted data). Here: one step of the
  Default's optimizer on ``(w_new sum_new L(x) + sum_old L(x)) / (w_new n_new + n_old)``, the "old"
  rows being ``old_per_node`` sampled earlier items of every batch user and earlier users of every batch
  item (:mod:`.history`'s reservoirs, strictly earlier than the batch). Departures: a gradient step on
  the recommender's own loss (BPR/NCF) instead of eALS's element-wise ALS on the weighted squared loss
  with missing-data weights ``c_i``; the user's / item's history is a uniform sample of ``old_per_node``
  interactions, not all of them. Only the ratio ``w_new : 1`` matters under Adam (a weight on the whole
  batch would be a no-op), which is why the old rows are part of the objective.
* ``mwnet`` (:func:`mwnet`): Meta-Weight-Net (Shu et al. 2019): a weight ``V(L_x; phi)`` per interaction
  from an MLP ``1 -> hidden -> 1`` (ReLU, sigmoid output; Sec. 3.1, Eq. 1 the weighted loss). Online meta
  protocol (MeLON's Algorithm 1 with the previous mini-batch as the training data and the new one as
  the meta data): Eq. 3 ``Theta^(phi) = Theta_t - alpha sum_x V(L_x(Theta_t); phi) grad L_x(Theta_t)`` on
  ``B_{t-1}``; Eq. 4 ``phi_{t+1} = phi_t - beta grad_phi mean_{B_t} L(Theta^(phi))`` (Adam, exact
  second-order by ``jax.grad``); Eq. 5 the recommender update on ``B_t`` with ``V(.; phi_{t+1})``.
  Weights normalised over the batch (MW-Net's code: ``w / sum w``, here ``w / mean w`` so that the
  weighted loss is a weighted mean). Departures: Eq. 3's virtual step is SGD (rate ``virtual_lr``) on
  MeLON's selective rows (a row touched by several interactions takes the mean of their updates, as in
  MeLON); Eq. 5 is one step of the Default's optimizer (Adam) on the weighted loss, so that the weighting
  is the only difference from Default (MW-Net uses SGD with momentum for both); the meta data is the
  next mini-batch, not a clean held-out set; the virtual step is taken from ``Theta_t``, which has
  already learnt ``B_{t-1}`` (as MeLON's B_last).
* ``metasgd`` (:func:`metasgd`): Meta-SGD (Li et al. 2017): a learnable rate ``alpha`` of the parameter's
  own shape, Eq. 1 ``theta' = theta - alpha o grad L_train(theta)``; Eq. 3 ``alpha <- alpha - beta
  grad_alpha L_test(theta')`` (Adam). Online: train = ``B_{t-1}`` at ``Theta_t``, test = ``B_t``; then
  ``Theta_{t+1} = Theta_t - alpha_{t+1} o grad`` on ``B_t`` (selective, per-row mean of the per-interaction
  gradients, as MeLON; no weight decay). ``alpha`` starts uniform in ``init_range`` (Meta-SGD initialises it
  randomly). Departures: ``theta`` is not meta-learned through Eq. 3 (it is the online recommender,
  updated by Eq. 1 on each new batch); the loss gradient is per interaction and row-mean aggregated, not
  the batch mean (the batch mean would divide every row's step by 256).

Offline (as MeLON, :mod:`.strategy`): ``init`` runs ``offline_epochs`` time-ordered passes of the same step
over the offline prefix (the meta-trained ones learn their meta-parameters there; ``eals`` only fills its
history), then by default puts back the pre-trained recommender and a fresh optimizer state, so every
strategy starts the stream from the same model. The previous mini-batch at the first online batch is the
last one of the prefix. Everything read comes from rows ``[0, offline_end)`` and earlier batches.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax
from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrec.methods.melon import history as history_lib
from jaxrec.methods.melon import rows
from jaxrec.methods.melon.step import block_scan
from jaxrec.models import registry
from jaxrec.stream import blocks as blocks_lib
from jaxrec.stream import strategies as strategies_lib
from jaxrec.train import checkpoint as checkpoint_lib
from jaxrec.train import learner as learner_lib
from jaxrec.train import state as state_lib
from jaxrec.train.fit import ConfigError, check_fields

# -- configurations -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EalsConfig:
  """``w_new``: weight of a new interaction (old ones: 1); ``old_per_node``: sampled earlier interactions
  of each batch user and item in the objective (0: the new ones only, a no-op weight under Adam)."""

  w_new: float = 4.0
  old_per_node: int = 5

  def __post_init__(self):
    check_fields(self, {"w_new": ("pos", 0, False), "old_per_node": ("int", 0, False)})


@dataclasses.dataclass(frozen=True)
class MetaLearnedConfig:
  """Shared by MWNet and MetaSGD.

  Attributes:
    meta_learning_rate: Adam rate of the meta-parameters (MeLON's 1e-3).
    offline_epochs: time-ordered passes of the step over the offline prefix in ``init``.
    offline_meta_only: after that pass the pre-trained recommender (and a fresh optimizer) is put back.
    hidden: MWNet's hidden width (100 in Shu et al.).
    virtual_lr: MWNet's Eq. 3 rate ``alpha`` (the meta-gradient's scale, to which Adam is invariant,
      and the curvature it sees).
    normalise: MWNet's batch normalisation of the weights.
    init_range: MetaSGD's ``alpha`` initial range (uniform).
  """

  meta_learning_rate: float = 1e-3
  offline_epochs: int = 1
  offline_meta_only: bool = True
  hidden: int = 100
  virtual_lr: float = 0.1
  normalise: bool = True
  init_range: tuple = (0.005, 0.1)

  def __post_init__(self):
    check_fields(self, {"meta_learning_rate": ("pos", 0, False), "offline_epochs": ("int", 0, False),
                        "hidden": ("int", 1, False), "virtual_lr": ("pos", 0, False)})
    lo, hi = self.init_range
    if not 0 <= lo <= hi:
      raise ConfigError(type(self).__name__, "init_range",
                        f"must be (lo, hi) with 0 <= lo <= hi, got {self.init_range}")


@dataclasses.dataclass(frozen=True)
class Static:
  """What a compiled step depends on (hashable; no seed, no data)."""

  module: Any
  loss: str
  num_negatives: int
  tx: Any  # StrategyConfig's optimizer fields (name, lr, wd, clip)
  method: Any  # EalsConfig or MetaLearnedConfig

  def optimizer(self) -> optax.GradientTransformation:
    name, lr, wd, clip = self.tx
    return state_lib.make_optimizer(name, lr, weight_decay=wd, clip_norm=clip)

  def meta_tx(self) -> optax.GradientTransformation:
    return optax.adam(self.method.meta_learning_rate)


def static(env: strategies_lib.Env, method) -> Static:
  if registry.get(env.model).family != "user":
    raise ValueError(f"the MeLON baselines need a user model (mf-bpr, mf-log, ncf), got {env.model!r}")
  c = env.config
  return Static(env.module, c.loss or registry.get(env.model).default_loss, c.num_negatives,
                (c.optimizer, c.learning_rate, c.weight_decay, c.clip_norm), method)


# -- shared pieces ----------------------------------------------------------------------------------------


def _negatives(rng, b, num_items, n):
  return jax.random.randint(rng, (b, n), 0, num_items, jnp.int32)


def _sg(tree):
  return jax.tree.map(jax.lax.stop_gradient, tree)


def guard(pred, new, old):
  return jax.tree.map(lambda n, o: jnp.where(pred, n, o), new, old)


def empty_batch(b: int) -> dict:
  return {"user": jnp.zeros((b,), jnp.int32), "positive": jnp.zeros((b,), jnp.int32),
          "mask": jnp.zeros((b,), bool)}


def weighted_loss(loss_fn: Callable, roles: dict, params, users, positives, negatives, weights):
  """``sum_x weights_x L_x(params) / sum_x weights_x`` (zero weights: padding), read from the full
  tables (its gradient is the tables' gradient)."""
  inv = rows.gather(params, roles, users, positives, negatives, weights > 0)
  per = jax.vmap(loss_fn, in_axes=(0, 0, None))(inv.user, inv.item, inv.dense)
  return jnp.sum(weights * per) / jnp.maximum(jnp.sum(weights), 1e-12)


def weighted_step(st: Static, ts: state_lib.TrainState, users, positives, negatives, weights):
  """One step of the Default's optimizer on :func:`weighted_loss`; the state unchanged without weight."""
  params = ts.params
  roles = rows.leaf_roles(params)
  loss_fn = rows.local_loss(st.module, st.loss)
  loss, g = jax.value_and_grad(lambda p: weighted_loss(loss_fn, roles, p, users, positives, negatives,
                                                       weights))(params)
  updates, opt = st.optimizer().update(g, ts.opt_state, params)
  new = ts.replace(step=ts.step + 1, params=optax.apply_updates(params, updates), opt_state=opt)
  return guard((weights > 0).any(), new, ts), loss


# -- eALS ------------------------------------------------------------------------------------------------


@flax.struct.dataclass
class EalsState:
  """``train``: the recommender's TrainState; ``history``: :class:`.history.History` (its reservoirs give
  the old interactions)."""

  train: state_lib.TrainState
  history: history_lib.History


def eals_rows(hist: history_lib.History, batch: dict, w_new: float, k: int) -> dict:
  """The objective's rows: the batch (weight ``w_new``), then each batch user's ``k`` sampled earlier items
  and each batch item's ``k`` sampled earlier users (weight 1, 0 where a slot is empty): ``[B (1 + 2k)]``."""
  users, items, mask = batch["user"], batch["positive"], batch["mask"]
  b = users.shape[0]
  parts_u, parts_i = [users], [items]
  parts_w = [jnp.where(mask, jnp.float32(w_new), 0.0)]
  if k:
    nbr_i, m_i = history_lib.neighbours(hist.user_nbrs[:, :k], hist.user_seen, users)
    nbr_u, m_u = history_lib.neighbours(hist.item_nbrs[:, :k], hist.item_seen, items)
    parts_u += [jnp.repeat(users, k), nbr_u.reshape(-1)]
    parts_i += [nbr_i.reshape(-1), jnp.repeat(items, k)]
    parts_w += [(m_i & mask[:, None]).reshape(-1).astype(jnp.float32),
                (m_u & mask[:, None]).reshape(-1).astype(jnp.float32)]
  out = {"user": jnp.concatenate(parts_u).astype(jnp.int32),
         "positive": jnp.concatenate(parts_i).astype(jnp.int32), "weight": jnp.concatenate(parts_w)}
  assert out["user"].shape[0] == b * (1 + 2 * k)
  return out


def eals_step(st: Static, state: EalsState, batch: dict, rng):
  """One mini-batch: a weighted step on :func:`eals_rows`, then the batch enters the history."""
  cfg: EalsConfig = st.method
  k_neg, k_hist = jax.random.split(rng)
  r = eals_rows(state.history, batch, cfg.w_new, cfg.old_per_node)
  negs = _negatives(k_neg, r["user"].shape[0], st.module.num_items, st.num_negatives)
  ts, loss = weighted_step(st, state.train, r["user"], r["positive"], negs, r["weight"])
  hist = history_lib.observe(state.history, batch["user"], batch["positive"], batch["mask"], k_hist)
  real = batch["mask"].any()
  w = r["weight"]
  new_share = jnp.sum(w[:batch["mask"].shape[0]]) / jnp.maximum(jnp.sum(w), 1e-12)
  return EalsState(train=ts, history=hist), {"loss": loss, "new_weight_share": new_share, "real": real}


# -- MWNet -----------------------------------------------------------------------------------------------


class WeightNet(nn.Module):
  """Meta-Weight-Net's ``V(l; phi)``: ``1 -> hidden -> 1``, ReLU, sigmoid output (Shu et al. Sec. 3.1)."""

  hidden: int = 100

  @nn.compact
  def __call__(self, loss):
    h = nn.relu(nn.Dense(self.hidden, name="hidden")(loss[..., None]))
    return nn.sigmoid(nn.Dense(1, name="out")(h))[..., 0]


def mwnet_weights(cfg: MetaLearnedConfig, meta, loss, mask):
  """``V(L_x; phi)`` of the real interactions, normalised to mean 1 over them (``normalise``)."""
  w = WeightNet(cfg.hidden).apply(meta, jax.lax.stop_gradient(loss)) * mask
  if cfg.normalise:
    w = w * jnp.maximum(mask.sum(), 1) / jnp.maximum(jnp.sum(w), 1e-12)
  return w


def _scaled(ps: rows.PerSample, c) -> rows.PerSample:
  """Per-interaction gradients times ``c [B]``: the per-interaction update ``Delta_x``."""
  def mul(tree, lead):
    return {p: v * c.reshape((-1,) + (1,) * (v.ndim - 1)) for p, v in tree.items()} if lead else tree
  return rows.PerSample(ps.loss, mul(ps.user, True), mul(ps.item, True), mul(ps.dense, True))


@flax.struct.dataclass
class MetaState:
  """MWNet / MetaSGD state.

  Attributes:
    train: the recommender's TrainState (MetaSGD: its ``opt_state`` is empty).
    meta: MWNet's ``phi`` (``{"params": ...}``) or MetaSGD's ``alpha`` (the params' tree).
    meta_opt: Adam state of ``meta``.
    prev: the previous mini-batch ``{"user", "positive", "mask"}`` (the meta step's training data).
  """

  train: state_lib.TrainState
  meta: Any
  meta_opt: Any
  prev: dict


def meta_problem(st: Static, params, prev: dict, batch: dict, rng):
  roles = rows.leaf_roles(params)
  loss_fn = rows.local_loss(st.module, st.loss)
  k_prev, k_now = jax.random.split(rng)
  b = batch["user"].shape[0]
  ni, n = st.module.num_items, st.num_negatives
  inv_prev = rows.gather(params, roles, prev["user"], prev["positive"], _negatives(k_prev, b, ni, n),
                         prev["mask"])
  inv_now = rows.gather(params, roles, batch["user"], batch["positive"], _negatives(k_now, b, ni, n),
                        batch["mask"])
  return roles, loss_fn, inv_prev, inv_now


def mwnet_objective(cfg: MetaLearnedConfig, loss_fn, inv_prev: rows.Involved, inv_now: rows.Involved):
  """``phi -> mean_{B_t} L(Theta^(phi))`` (Eq. 3-4): ``Theta^`` the virtual SGD step on ``B_{t-1}`` with
  the weights ``V(L_x; phi)``, read at ``B_t``'s rows."""
  ps = _sg(rows.per_sample(loss_fn, inv_prev))
  m = inv_prev.mask.astype(ps.loss.dtype)

  def objective(meta):
    w = mwnet_weights(cfg, meta, ps.loss, m)
    after = rows.involved_after(inv_now, inv_prev, _scaled(ps, cfg.virtual_lr * w))
    return rows.batch_loss(loss_fn, after)

  return objective


def _meta_update(st: Static, objective, meta, meta_opt, ok):
  meta_loss, g = jax.value_and_grad(objective)(meta)
  updates, new_opt = st.meta_tx().update(g, meta_opt, meta)
  new_meta = optax.apply_updates(meta, updates)
  return guard(ok, new_meta, meta), guard(ok, new_opt, meta_opt), meta_loss, optax.global_norm(g)


def mwnet_step(st: Static, state: MetaState, batch: dict, rng):
  """One mini-batch of the online MW-Net (module docstring): meta step (Eq. 3-4), then Eq. 5."""
  cfg: MetaLearnedConfig = st.method
  k_problem, k_neg = jax.random.split(rng)
  params = state.train.params
  _, loss_fn, inv_prev, inv_now = meta_problem(st, params, state.prev, batch, k_problem)
  ok = inv_prev.mask.any() & inv_now.mask.any()
  meta, meta_opt, meta_loss, gnorm = _meta_update(st, mwnet_objective(cfg, loss_fn, inv_prev, inv_now),
                                                  state.meta, state.meta_opt, ok)
  per = jax.vmap(loss_fn, in_axes=(0, 0, None))(inv_now.user, inv_now.item, inv_now.dense)
  m = batch["mask"].astype(per.dtype)
  w = mwnet_weights(cfg, meta, per, m)
  ts, loss = weighted_step(st, state.train, batch["user"], batch["positive"], inv_now.item_idx[:, 1:], w)
  real = batch["mask"].any()
  new = MetaState(train=ts, meta=meta, meta_opt=meta_opt, prev=guard(real, batch, state.prev))
  wstd = jnp.sqrt(jnp.sum(m * (w - jnp.sum(w * m) / jnp.maximum(m.sum(), 1)) ** 2) / jnp.maximum(m.sum(), 1))
  return new, {"loss": loss, "meta_loss": meta_loss, "meta_grad_norm": gnorm, "weight_std": wstd,
               "real": real}


# -- MetaSGD ---------------------------------------------------------------------------------------------


def metasgd_delta(alpha, roles, inv: rows.Involved, ps: rows.PerSample) -> rows.PerSample:
  """``Delta_x = alpha o grad L_x`` at the rows ``inv`` involves (``alpha`` gathered like the params)."""
  a = rows.gather(alpha, roles, inv.user_idx, inv.item_idx[:, 0], inv.item_idx[:, 1:], inv.mask)
  return rows.PerSample(ps.loss, {p: a.user[p] * g for p, g in ps.user.items()},
                        {p: a.item[p] * g for p, g in ps.item.items()},
                        {p: a.dense[p][None] * g for p, g in ps.dense.items()})


def metasgd_objective(loss_fn, roles, inv_prev: rows.Involved, inv_now: rows.Involved):
  """``alpha -> mean_{B_t} L(Theta_t - alpha o grad L_{B_{t-1}})`` (Eq. 1 and 3)."""
  ps = _sg(rows.per_sample(loss_fn, inv_prev))

  def objective(alpha):
    after = rows.involved_after(inv_now, inv_prev, metasgd_delta(alpha, roles, inv_prev, ps))
    return rows.batch_loss(loss_fn, after)

  return objective


def metasgd_step(st: Static, state: MetaState, batch: dict, rng):
  """One mini-batch of the online Meta-SGD (module docstring)."""
  params = state.train.params
  roles, loss_fn, inv_prev, inv_now = meta_problem(st, params, state.prev, batch, rng)
  ok = inv_prev.mask.any() & inv_now.mask.any()
  alpha, meta_opt, meta_loss, gnorm = _meta_update(st, metasgd_objective(loss_fn, roles, inv_prev, inv_now),
                                                   state.meta, state.meta_opt, ok)
  ps = rows.per_sample(loss_fn, inv_now)
  new_params = rows.apply(params, roles, inv_now, metasgd_delta(alpha, roles, inv_now, ps))
  real = batch["mask"].any()
  m = batch["mask"].astype(ps.loss.dtype)
  ts = state.train.replace(step=state.train.step + real.astype(jnp.int32),
                           params=guard(real, new_params, params))
  new = MetaState(train=ts, meta=alpha, meta_opt=meta_opt, prev=guard(real, batch, state.prev))
  mean_alpha = jnp.mean(jnp.stack([jnp.mean(x) for x in jax.tree.leaves(alpha)]))
  return new, {"loss": jnp.sum(ps.loss * m) / jnp.maximum(m.sum(), 1.0), "meta_loss": meta_loss,
               "meta_grad_norm": gnorm, "mean_alpha": mean_alpha, "real": real}


# -- strategies ------------------------------------------------------------------------------------------

STEPS = {"eals": eals_step, "mwnet": mwnet_step, "metasgd": metasgd_step}


@functools.lru_cache(maxsize=None)
def update_fn(kind: str, st: Static, batch_size: int):
  step = functools.partial(STEPS[kind], st)

  def update(state, block, rng):
    return block_scan(step, batch_size, state, {k: v for k, v in block.items() if k != "end"}, rng)

  return update


@jax.jit
def copy_tree(tree):
  return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


def offline_pass(kind: str, st: Static, env: strategies_lib.Env, state, epochs: int, rng):
  """``epochs`` time-ordered passes of the step over rows ``[0, offline_end)`` (chunks of
  ``block_size`` rows laid out as the stream's blocks, so the stream reuses the compiled update)."""
  n = env.data.offline_end
  bs = env.data.block_size
  pre = env.data.rows(0, n)
  update = learner_lib.jit_update(
      learner_lib.Learner(init=None, update=update_fn(kind, st, env.config.batch_size), params=None))
  state = checkpoint_lib.commit(state)  # as the stream loop commits it: the stream reuses this compilation
  for e in range(epochs):
    for i, lo in enumerate(range(0, n, bs)):
      block = blocks_lib.pad_rows({k: v[lo:lo + bs] for k, v in pre.items()}, bs)
      block["end"] = np.asarray(min(lo + bs, n), np.int64)
      state, _ = update(state, block, jax.random.fold_in(jax.random.fold_in(rng, e), i))
  return state


def last_offline_batch(env: strategies_lib.Env) -> dict:
  n, b = env.data.offline_end, env.config.batch_size
  lo = max(0, n - b)
  block = blocks_lib.pad_rows({k: env.data.examples[k][lo:n] for k in ("user", "positive")}, b)
  return {"user": jnp.asarray(block["user"], jnp.int32),
          "positive": jnp.asarray(block["positive"], jnp.int32), "mask": jnp.asarray(block["mask"])}


def served_params(state):
  return state.train.params


def eals(env: strategies_lib.Env, config: EalsConfig = EalsConfig()) -> learner_lib.Learner:
  """eALS-style weighting of new interactions (module docstring)."""
  st = static(env, config)
  k = max(config.old_per_node, 1)

  def init(params, rng):
    hist = history_lib.empty(env.module.num_users, env.module.num_items, k)
    return EalsState(train=_create_fn(st)(params), history=_fill_history(env, hist, rng))

  return learner_lib.Learner(init=init, update=update_fn("eals", st, env.config.batch_size),
                             params=served_params)


@functools.lru_cache(maxsize=None)
def _create_fn(st: Static):
  return jax.jit(lambda params: state_lib.create(params, st.optimizer()))


@functools.lru_cache(maxsize=None)
def _observe_fn():
  return jax.jit(lambda h, u, i, m, r: history_lib.observe(h, u, i, m, r), donate_argnums=0)


def _fill_history(env: strategies_lib.Env, hist: history_lib.History, rng) -> history_lib.History:
  """The history after the offline prefix, in time order (rows ``[0, offline_end)`` only)."""
  n, b = env.data.offline_end, env.config.batch_size
  pre = env.data.rows(0, n)
  observe = _observe_fn()
  for i, lo in enumerate(range(0, n, b)):
    blk = blocks_lib.pad_rows({k: pre[k][lo:lo + b] for k in ("user", "positive")}, b)
    hist = observe(hist, blk["user"], blk["positive"], blk["mask"], jax.random.fold_in(rng, i))
  return hist


@functools.lru_cache(maxsize=None)
def _fresh_fn(kind: str, st: Static, batch_size: int):
  """``(params, key) -> MetaState`` with fresh meta-parameters (jitted once per static configuration)."""
  cfg: MetaLearnedConfig = st.method

  def fresh(params, key):
    if kind == "mwnet":
      tx = st.optimizer()
      meta = WeightNet(cfg.hidden).init(key, jnp.zeros((1,), jnp.float32))
    else:
      tx = optax.identity()  # Meta-SGD's own rule: no optimizer state
      lo, hi = cfg.init_range
      leaves, tree = jax.tree.flatten(params)
      keys = jax.random.split(key, len(leaves))
      meta = jax.tree.unflatten(tree, [jax.random.uniform(kk, x.shape, x.dtype, lo, hi)
                                       for kk, x in zip(keys, leaves)])
    return MetaState(train=state_lib.create(params, tx), meta=meta, meta_opt=st.meta_tx().init(meta),
                     prev=empty_batch(batch_size))

  return jax.jit(fresh)


def _meta_learner(kind: str, env: strategies_lib.Env, config: MetaLearnedConfig) -> learner_lib.Learner:
  st = static(env, config)
  b = env.config.batch_size

  def init(params, rng):
    meta_key, pass_key = jax.random.split(rng)
    state = _fresh_fn(kind, st, b)(params, meta_key)
    served = copy_tree(state.train) if config.offline_meta_only else None
    state = offline_pass(kind, st, env, state, config.offline_epochs, pass_key)
    if served is not None:
      state = state.replace(train=served)
    return state.replace(prev=last_offline_batch(env))

  return learner_lib.Learner(init=init, update=update_fn(kind, st, b), params=served_params)


def mwnet(env: strategies_lib.Env, config: MetaLearnedConfig = MetaLearnedConfig()) -> learner_lib.Learner:
  """Meta-Weight-Net, online (module docstring)."""
  return _meta_learner("mwnet", env, config)


def metasgd(env: strategies_lib.Env, config: MetaLearnedConfig = MetaLearnedConfig()) -> learner_lib.Learner:
  """Meta-SGD, online (module docstring)."""
  return _meta_learner("metasgd", env, config)


BASELINES = {"eals": eals, "mwnet": mwnet, "metasgd": metasgd}  # and "s2meta" in :mod:`.s2meta`

for _name, _make in BASELINES.items():
  if _name not in strategies_lib.STRATEGIES:
    strategies_lib.register(_name, _make, jittable=True)


def num_params(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
