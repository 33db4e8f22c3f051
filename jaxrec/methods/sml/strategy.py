"""SML as a stream strategy over periods (paper 003, Algorithms 1 and 2).

The stream loop (:func:`jaxrec.stream.loop.run` over :func:`jaxrec.stream.blocks.from_periods`) scores
block ``D_{t+1}`` with ``params(state) = W_t`` and only then calls ``update(state, D_{t+1})``, which is
Algorithm 2 (and, run over the training periods, Algorithm 1 with each task's Step 2 done when its next
period arrives)::

    state: W_prev = W_{t-1}, W_hat = W_hat_t, served = W_t, last = D_t, Theta (+ Adam states)
    update(state, D_{t+1}):
      repeat reps times:                                   # Algorithm 2 lines 3-6
        Step 2: Theta  <- L_s(Theta | D_{t+1}) at f(W_{t-1}, W_hat_t)      (SML-N: on D_t)
        Step 1: W_hat_t <- L_r(W_hat_t | D_t)  through f(W_{t-1}, .)
      Step 2 once more; W_t <- f_Theta(W_{t-1}, W_hat_t)                    # line 7
      W_hat_{t+1} <- W_t; Step 1 on D_{t+1} through f(W_t, .)              # line 8
      served <- W_{t+1} = f_Theta(W_t, W_hat_{t+1})                         # line 9
      state <- (W_t, W_hat_{t+1}, W_{t+1}, D_{t+1}, Theta)

The first block after the offline prefix is the first task: ``W_{-1}`` is the pre-trained model ``W_0``
(``first_task="initial"``) or zero (``"zeros"``, the authors' code), ``W_hat_0 = W_0`` and ``D_0`` is
empty (its Step 1 does nothing), so lines 3-7 train ``Theta`` on the first block, which the loop has
already scored; ``"skip"`` leaves lines 3-7 out there and takes ``W_t = W_0``. SML-S
skips lines 3-7 from block ``freeze_from`` on (the transfer stays fixed; Step 1 and the transfer output
still run). The whole update is one pure function (``lax.scan`` over repetitions, epochs and batches,
``lax.cond`` on whether a previous task exists), jitted by the loop with the state donated.

The served parameters are the MF module's own pytree (``{"params": {"user_emb": {"embedding"},
"item_emb": {"embedding"}}}``), so the registry's score function ranks them; the module must be MF
without biases (Eq. 12).
"""

from __future__ import annotations

import functools

import flax
import jax
import jax.numpy as jnp
import optax

from jaxrec.methods.sml import steps, transfer
from jaxrec.methods.sml.config import SMLConfig
from jaxrec.models import mf
from jaxrec.stream import strategies
from jaxrec.train import checkpoint as checkpoint_lib
from jaxrec.train import learner as learner_lib
from jaxrec.train import state as state_lib

GROUPS = ("user", "item")


@flax.struct.dataclass
class SMLState:
  """State of the SML strategy between two periods (see the module docstring).

  Attributes:
    prev: ``W_{t-1}`` tables. hat: ``W_hat_t`` tables. served: ``W_t`` tables (what is scored).
    hat_opt: Step 1's lazy-Adam state of ``hat``.
    theta: ``{"user": Theta_u, "item": Theta_i}``. theta_opt: Step 2's Adam state.
    last: the previous block's ``user``, ``positive``, ``mask`` (``D_t``).
    blocks: int32, blocks consumed so far.
  """

  prev: dict
  hat: dict
  served: dict
  hat_opt: steps.LazyAdamState
  theta: dict
  theta_opt: optax.OptState
  last: dict
  blocks: jax.Array


def tables_of(params) -> dict:
  """``{"user", "item"}`` embedding tables of MF parameters ``{"params": {...}}``."""
  p = params["params"]
  return {"user": p["user_emb"]["embedding"], "item": p["item_emb"]["embedding"]}


def params_of(tables: dict) -> dict:
  """The MF (no bias) parameter pytree of ``tables`` (what ``MF.score`` reads)."""
  return {"params": {"user_emb": {"embedding": tables["user"]}, "item_emb": {"embedding": tables["item"]}}}


def _served(state: SMLState):
  return params_of(state.served)


def _rows(block) -> dict:
  return {"user": jnp.asarray(block["user"], jnp.int32),
          "positive": jnp.asarray(block["positive"], jnp.int32), "mask": jnp.asarray(block["mask"], bool)}


def step2_tx(config: SMLConfig) -> optax.GradientTransformation:
  return state_lib.make_optimizer("adam", config.step2_lr, weight_decay=config.step2_weight_decay)


@functools.lru_cache(maxsize=None)
def make_update(config: SMLConfig, dim: int, num_users: int, num_items: int):
  """``update(state, block, rng) -> (state, metrics)`` for this static configuration (cached)."""
  c = config.resolved()
  tcfg = c.transfer_config(dim)
  tx = step2_tx(c)
  direct = c.variant == "sml-fp"
  keep = c.transfer_untouched
  tables = lambda theta, prev, hat: steps.transfer_tables(theta, prev, hat, tcfg, keep)  # noqa: E731

  def step1_epochs(hat, opt, prev, theta, rows, rng):
    def step(carry, batch):
      h, o = carry
      h, o, loss = steps.step1(h, o, prev, theta, batch, tconfig=tcfg, lr=c.step1_lr, l2=c.l2, direct=direct)
      return (h, o), loss
    (hat, opt), loss = steps.epochs(step, (hat, opt), rows, rng, c.step1_epochs, c.step1_batch,
                                    num_items, c.num_negatives)
    return hat, opt, loss

  def step2_epochs(theta, opt, prev, hat, rows, rng):
    def step(carry, batch):
      th, o = carry
      th, o, loss = steps.step2(th, o, prev, hat, batch, tconfig=tcfg, tx=tx, transfer_untouched=keep)
      return (th, o), loss
    (theta, opt), loss = steps.epochs(step, (theta, opt), rows, rng, c.step2_epochs, c.step2_batch,
                                      num_items, c.num_negatives)
    return theta, opt, loss

  def update(state: SMLState, block, rng):
    new = _rows(block)
    old = state.last
    meta_rows = old if c.variant == "sml-n" else new
    rep_key, last_key, new_key = jax.random.split(rng, 3)

    def adapt(carry):  # Algorithm 2 lines 3-7: refine Theta on D_{t+1} and W_hat_t on D_t
      theta, theta_opt, hat, hat_opt = carry

      def rep(carry, r):
        theta, theta_opt, hat, hat_opt = carry
        k2, k1 = jax.random.split(jax.random.fold_in(rep_key, r))
        theta, theta_opt, l2_ = step2_epochs(theta, theta_opt, state.prev, hat, meta_rows, k2)
        hat, hat_opt, l1_ = step1_epochs(hat, hat_opt, state.prev, theta, old, k1)
        if c.hat_from_output:  # the authors' code: the tables become the transfer output
          hat = tables(theta, state.prev, hat)
        return (theta, theta_opt, hat, hat_opt), (l2_, l1_)

      carry, (l2s, l1s) = jax.lax.scan(rep, (theta, theta_opt, hat, hat_opt), jnp.arange(c.reps))
      theta, theta_opt, hat, hat_opt = carry
      theta, theta_opt, l2_ = step2_epochs(theta, theta_opt, state.prev, hat, meta_rows, last_key)
      served = tables(theta, state.prev, hat)
      meta_loss = (jnp.sum(l2s) + l2_) / (c.reps + 1)
      step1_loss = jnp.mean(l1s) if c.reps else jnp.float32(0.0)
      return theta, theta_opt, served, hat_opt, meta_loss, step1_loss

    def skip(carry):  # no previous task (first block), or SML-S's frozen transfer
      theta, theta_opt, _, hat_opt = carry
      return theta, theta_opt, state.served, hat_opt, jnp.float32(0.0), jnp.float32(0.0)

    run_adapt = state.blocks > 0 if c.first_task == "skip" else jnp.bool_(True)
    if c.variant == "sml-s":
      run_adapt = run_adapt & (state.blocks < c.freeze_from)
    theta, theta_opt, w_t, hat_opt, meta_loss, rep_step1 = jax.lax.cond(
        run_adapt, adapt, skip, (state.theta, state.theta_opt, state.hat, state.hat_opt))
    # Algorithm 2 lines 8-9: the next task's W_hat, from W_t, through f(W_t, .)
    hat_opt = hat_opt if c.carry_step1_state else steps.lazy_adam_init(w_t)
    hat, hat_opt, new_loss = step1_epochs(w_t, hat_opt, w_t, theta, new, new_key)
    served = tables(theta, w_t, hat)
    out = SMLState(prev=w_t, hat=hat, served=served, hat_opt=hat_opt, theta=theta, theta_opt=theta_opt,
                   last=new, blocks=state.blocks + 1)
    return out, {"loss": new_loss, "meta_loss": meta_loss, "rep_step1_loss": rep_step1,
                 "adapted": run_adapt.astype(jnp.int32)}

  return update


# One compilation per (config, table shape) across learners and seeds.
_fit_pass_through = jax.jit(transfer.fit_pass_through,
                            static_argnames=("config", "steps", "learning_rate", "batch_size", "noise"))


def init_state(config: SMLConfig, params, rng: jax.Array, block_size: int) -> SMLState:
  """The state before the first block: ``W_prev = W_hat = served =`` the pre-trained ``params``."""
  c = config.resolved()
  tables = jax.tree.map(jnp.asarray, tables_of(params))
  dim = int(tables["user"].shape[1])
  tcfg = c.transfer_config(dim)
  ku, ki = jax.random.split(rng)
  theta = {"user": transfer.init(ku, tcfg), "item": transfer.init(ki, tcfg)}
  if c.theta_init == "pass-hat":  # ours: start from a transfer that passes w_hat through
    theta = {g: _fit_pass_through(jax.random.fold_in(k, 1), theta[g], tables[g], config=tcfg,
                                  steps=c.theta_init_steps, learning_rate=c.step2_lr)[0]
             for g, k in (("user", ku), ("item", ki))}
  empty = {"user": jnp.zeros((block_size,), jnp.int32), "positive": jnp.zeros((block_size,), jnp.int32),
           "mask": jnp.zeros((block_size,), bool)}
  copy = lambda: jax.tree.map(jnp.copy, tables)  # three buffers: the loop donates the state
  prev = jax.tree.map(jnp.zeros_like, tables) if c.first_task == "zeros" else copy()
  return SMLState(prev=prev, hat=copy(), served=copy(), hat_opt=steps.lazy_adam_init(tables),
                  theta=theta, theta_opt=step2_tx(c).init(theta), last=empty,
                  blocks=jnp.zeros((), jnp.int32))


def learner(config: SMLConfig, module, block_size: int, warmup=()) -> learner_lib.Learner:
  """SML as a :class:`~jaxrec.train.learner.Learner` whose batch is a block (see module docstring).

  ``warmup``: host blocks (``{"user", "positive", "mask"}``, the training periods in order) of the
  ``config.passes - 1`` passes that ``init`` runs before the stream's own pass (Sec. 3.3's multiple
  passes; needed when ``passes > 1``).
  """
  if not isinstance(module, mf.MF) or module.use_bias:
    raise ValueError("the SML strategy needs an MF module without biases (mf-log/mf-bpr with "
                     f"use_bias=False, Eq. 12), got {module!r}")
  warmup = tuple(warmup)
  if config.passes > 1 and not warmup:
    raise ValueError(f"SMLConfig.passes={config.passes} needs the training periods' blocks (warmup=)")
  update = make_update(config, int(module.dim), int(module.num_users), int(module.num_items))

  def init(params, rng):
    fresh = init_state(config, params, rng, block_size)  # what every pass starts from
    if config.passes == 1:
      return fresh
    # Committed as the stream loop commits its state, so the stream reuses the passes' compilation.
    fresh = checkpoint_lib.commit(fresh)
    step = learner_lib.jit_update(out)  # the stream loop's compiled update (state donated)
    copy = lambda: jax.tree.map(jnp.copy, fresh)  # noqa: E731
    state = copy()
    for p in range(config.passes - 1):
      for t, block in enumerate(warmup):
        state, _ = step(state, jax.tree.map(jnp.asarray, block), jax.random.fold_in(rng, p * 100_003 + t))
      state = copy().replace(theta=state.theta, theta_opt=state.theta_opt)
    return state

  out = learner_lib.Learner(init=init, update=update, params=_served)
  return out


def strategy_for(config: SMLConfig):
  """``make(env) -> Learner`` for :func:`jaxrec.stream.strategies.register`."""
  return lambda env: learner(config, env.module, env.data.block_size)


def register_variants() -> None:
  """Registers ``sml`` and its variants (default configs) as stream strategies (once)."""
  from jaxrec.methods.sml.config import VARIANTS  # noqa: PLC0415
  for v in VARIANTS:
    if v not in strategies.STRATEGIES and v != "sml-s":  # SML-S needs the first test block
      strategies.register(v, strategy_for(SMLConfig(variant=v)), jittable=True)
