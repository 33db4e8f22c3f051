"""S2Meta (Du et al. 2019, "Sequential scenario-specific meta learner for online recommendation", KDD) as
an online stream strategy (``s2meta``), one of MeLON's Table 2 baselines (paper 002).

S2Meta's update controller is a meta-LSTM (Ravi & Larochelle 2017) whose cell state is the recommender's
parameter: for every parameter ``theta`` (coordinate-wise, the gate weights shared by all parameters),

    i_t = sigmoid(W_I [grad_t, L_t, theta_{t-1}, i_{t-1}] + b_I)        (input gate: the learning rate)
    f_t = sigmoid(W_F [grad_t, L_t, theta_{t-1}, f_{t-1}] + b_F)        (forget gate)
    theta_t = f_t o theta_{t-1} - i_t o grad_t                          (the update)

(Du et al. Sec. 4.2, "Update controller"; gradient and loss preprocessed as in Andrychowicz et al. 2016,
:func:`jaxrec.methods.melon.meta_model.preprocess`). The gates' previous values ``i_{t-1}, f_{t-1}`` are
per-parameter tables in the state (written at the rows a batch touches).

Online (MeLON's protocol, as :mod:`.baselines`): the virtual update of ``Theta_t`` on the previous
mini-batch with ``phi_t``, the meta-gradient of the new batch's loss through it (``jax.grad``, exact), Adam
on ``phi``, then the update on the new batch with ``phi_{t+1}`` (selective: only the rows the batch
involves, their gradient the per-row mean of the per-interaction gradients, as MeLON's aggregation; dense
parameters the batch mean; ``L_t`` the batch-mean loss).

Departures from S2Meta: the stop controller (a learned number of inner steps per scenario) is dropped,
since the online protocol takes one update per mini-batch; the meta-learned parameter initialisation is
the pre-trained recommender (every strategy starts the stream from the same model); the meta data is the
next mini-batch, not a scenario's query set. Gate biases start at MeLON's ``rate_bias`` / ``forget_bias``
(``i ~ 0.007``, ``f ~ 0.993``), the gate weights at ``N(0, 0.01)``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrec.methods.melon import baselines as base
from jaxrec.methods.melon import meta_model as meta_lib
from jaxrec.methods.melon import rows
from jaxrec.stream import strategies as strategies_lib
from jaxrec.train import learner as learner_lib
from jaxrec.train import state as state_lib
from jaxrec.train.fit import check_fields

FEATURES = 6  # preprocessed gradient (2), preprocessed loss (2), theta, the gate's previous value


@dataclasses.dataclass(frozen=True)
class S2MetaConfig:
  """``meta_learning_rate`` (Adam on ``phi``), ``offline_epochs`` / ``offline_meta_only`` (as
  :class:`.baselines.MetaLearnedConfig`), ``rate_bias`` / ``forget_bias`` (the gates' initial biases)."""

  meta_learning_rate: float = 1e-3
  offline_epochs: int = 1
  offline_meta_only: bool = True
  rate_bias: float = -5.0
  forget_bias: float = 5.0

  def __post_init__(self):
    check_fields(self, {"meta_learning_rate": ("pos", 0, False), "offline_epochs": ("int", 0, False),
                        "offline_meta_only": ("bool", 0, False), "rate_bias": ("float", -1e9, False),
                        "forget_bias": ("float", -1e9, False)})


@flax.struct.dataclass
class S2MetaState:
  """``train``: the recommender (no optimizer state); ``meta``: ``phi`` (gate weights); ``meta_opt``;
  ``prev``: the previous mini-batch; ``gates``: ``{"i": tree, "f": tree}`` like the params."""

  train: state_lib.TrainState
  meta: Any
  meta_opt: Any
  prev: dict
  gates: dict


def init_meta(cfg: S2MetaConfig, key) -> dict:
  ki, kf = jax.random.split(key)
  return {"w_i": 0.01 * jax.random.normal(ki, (FEATURES,)), "b_i": jnp.float32(cfg.rate_bias),
          "w_f": 0.01 * jax.random.normal(kf, (FEATURES,)), "b_f": jnp.float32(cfg.forget_bias)}


def gates(phi: dict, grad, loss, theta, i_prev, f_prev):
  """``(i_t, f_t)`` for parameters ``theta`` (any shape; ``loss`` a scalar)."""
  pg = meta_lib.preprocess(grad)
  pl = jnp.broadcast_to(meta_lib.preprocess(loss), grad.shape + (2,))
  x = jnp.concatenate([pg, pl, theta[..., None]], -1)
  i = jax.nn.sigmoid(jnp.concatenate([x, i_prev[..., None]], -1) @ phi["w_i"] + phi["b_i"])
  f = jax.nn.sigmoid(jnp.concatenate([x, f_prev[..., None]], -1) @ phi["w_f"] + phi["b_f"])
  return i, f


def update_rows(phi, roles, inv: rows.Involved, ps: rows.PerSample, gate_state: dict):
  """Per-interaction updates ``Delta_x = (1 - f) theta + i grad`` (rows: ``grad`` the per-row mean of the
  per-interaction gradients, so every entry of a row carries the same update) and the gates ``(i, f)``
  laid out like the rows (``rows.PerSample`` trees)."""
  m = inv.mask.astype(ps.loss.dtype)
  loss = jnp.sum(ps.loss * m) / jnp.maximum(m.sum(), 1.0)
  gi = rows.gather(gate_state["i"], roles, inv.user_idx, inv.item_idx[:, 0], inv.item_idx[:, 1:], inv.mask)
  gf = rows.gather(gate_state["f"], roles, inv.user_idx, inv.item_idx[:, 0], inv.item_idx[:, 1:], inv.mask)
  n = jnp.maximum(m.sum(), 1.0)
  out_d, out_i, out_f = ({}, {}, {}), ({}, {}, {}), ({}, {}, {})
  for k, (theta_t, grad_t, i_t, f_t, idx) in enumerate((
      (inv.user, ps.user, gi.user, gf.user, inv.user_idx[:, None]),
      (inv.item, ps.item, gi.item, gf.item, inv.item_idx),
      (inv.dense, ps.dense, gi.dense, gf.dense, None))):
    for p, g in grad_t.items():
      if idx is None:  # dense: the batch-mean gradient, one gate per element
        gbar = jnp.tensordot(m, g, axes=1) / n
        i, f = gates(phi, gbar, loss, theta_t[p], i_t[p], f_t[p])
        d = (1.0 - f) * theta_t[p] + i * gbar
        out_d[k][p] = jnp.broadcast_to(d, g.shape)
      else:
        gbar = rows.row_mean(idx, inv.mask, g)
        i, f = gates(phi, gbar, loss, theta_t[p], i_t[p], f_t[p])
        out_d[k][p] = (1.0 - f) * theta_t[p] + i * gbar
      out_i[k][p], out_f[k][p] = i, f
  as_ps = lambda t: rows.PerSample(loss, *t)  # noqa: E731
  return as_ps(out_d), as_ps(out_i), as_ps(out_f)


def _write(table_tree, roles, inv: rows.Involved, values: rows.PerSample):
  """The gate tables with the touched rows set to ``values`` (identical across a row's entries;
  padding dropped), dense leaves replaced."""
  user, item, dense = rows.split(table_tree, roles)

  def put(table, idx, v):
    b, k = idx.shape
    fm = jnp.broadcast_to(inv.mask[:, None], (b, k)).reshape(-1)
    fi = jnp.where(fm, idx.reshape(-1), table.shape[0])
    return table.at[fi].set(v.reshape((b * k,) + table.shape[1:]), mode="drop")

  user = {p: put(v, inv.user_idx[:, None], values.user[p]) for p, v in user.items()}
  item = {p: put(v, inv.item_idx, values.item[p]) for p, v in item.items()}
  dense = {p: values.dense[p] for p in dense}
  return rows.merge(user, item, dense)


def objective(loss_fn, roles, inv_prev: rows.Involved, inv_now: rows.Involved, gate_state: dict):
  """``phi -> mean_{B_t} L(Theta~(phi))``, ``Theta~`` the gated update on the previous batch."""
  ps = jax.tree.map(jax.lax.stop_gradient, rows.per_sample(loss_fn, inv_prev))

  def f(phi):
    delta, _, _ = update_rows(phi, roles, inv_prev, ps, gate_state)
    return rows.batch_loss(loss_fn, rows.involved_after(inv_now, inv_prev, delta))

  return f


def step(st: base.Static, state: S2MetaState, batch: dict, rng):
  """One mini-batch (module docstring)."""
  params = state.train.params
  roles, loss_fn, inv_prev, inv_now = base.meta_problem(st, params, state.prev, batch, rng)
  ok = inv_prev.mask.any() & inv_now.mask.any()
  meta_loss, g = jax.value_and_grad(objective(loss_fn, roles, inv_prev, inv_now, state.gates))(state.meta)
  upd, new_opt = st.meta_tx().update(g, state.meta_opt, state.meta)
  phi = base.guard(ok, optax.apply_updates(state.meta, upd), state.meta)
  meta_opt = base.guard(ok, new_opt, state.meta_opt)
  ps = rows.per_sample(loss_fn, inv_now)
  delta, gi, gf = update_rows(phi, roles, inv_now, ps, state.gates)
  real = batch["mask"].any()
  new_params = rows.apply(params, roles, inv_now, delta)
  new_gates = {"i": _write(state.gates["i"], roles, inv_now, gi),
               "f": _write(state.gates["f"], roles, inv_now, gf)}
  g_ = base.guard
  new = S2MetaState(train=state.train.replace(step=state.train.step + real.astype(jnp.int32),
                                              params=g_(real, new_params, params)),
                    meta=phi, meta_opt=meta_opt, prev=g_(real, batch, state.prev),
                    gates=g_(real, new_gates, state.gates))
  m = batch["mask"].astype(ps.loss.dtype)
  mean_i = jnp.mean(jnp.stack([jnp.mean(x) for x in jax.tree.leaves((gi.user, gi.item))]))
  return new, {"loss": jnp.sum(ps.loss * m) / jnp.maximum(m.sum(), 1.0), "meta_loss": meta_loss,
               "meta_grad_norm": optax.global_norm(g), "mean_input_gate": mean_i, "real": real}


base.STEPS["s2meta"] = step


@functools.lru_cache(maxsize=None)
def _fresh_fn(st: base.Static, batch_size: int):
  cfg: S2MetaConfig = st.method

  def fresh(params, key):
    phi = init_meta(cfg, key)
    full = lambda v: jax.tree.map(lambda x: jnp.full(x.shape, v, x.dtype), params)  # noqa: E731
    return S2MetaState(train=state_lib.create(params, optax.identity()), meta=phi,
                       meta_opt=st.meta_tx().init(phi), prev=base.empty_batch(batch_size),
                       gates={"i": full(1.0 / (1.0 + np.exp(-cfg.rate_bias))),
                              "f": full(1.0 / (1.0 + np.exp(-cfg.forget_bias)))})

  return jax.jit(fresh)


def make(env: strategies_lib.Env, config: S2MetaConfig = S2MetaConfig()) -> learner_lib.Learner:
  """S2Meta, online (module docstring)."""
  st = base.static(env, config)
  b = env.config.batch_size

  def init(params, rng):
    meta_key, pass_key = jax.random.split(rng)
    state = _fresh_fn(st, b)(params, meta_key)
    served = (base.copy_tree(state.train), base.copy_tree(state.gates)) if config.offline_meta_only else None
    state = base.offline_pass("s2meta", st, env, state, config.offline_epochs, pass_key)
    if served is not None:
      state = state.replace(train=served[0], gates=served[1])
    return state.replace(prev=base.last_offline_batch(env))

  return learner_lib.Learner(init=init, update=base.update_fn("s2meta", st, b), params=base.served_params)


if "s2meta" not in strategies_lib.STRATEGIES:
  strategies_lib.register("s2meta", make, jittable=True)


def gate_tables_size(state: S2MetaState) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.gates)))
