"""The generic stream strategies every paper compares against, as :class:`Learner` s over blocks.

A strategy is a ``Learner(init, update, params)`` whose ``update(state, block, rng)`` consumes one block
of :mod:`jaxrec.stream.blocks` (``user``, ``positive``, optional ``history``/``history_mask``, ``mask``
and ``end``). All of them train the registered model's own loss (``registry.get(model).loss_fn``) on
one-target-per-interaction batches with ``num_negatives`` negatives drawn uniformly *inside* the jitted
step from ``fold_in`` keys:

* ``fine-tune``: ``steps`` passes over the new block in mini-batches of ``batch_size`` (MeLON paper
  002's "Default": one update per mini-batch of 256, ``steps=1``; SML paper 003 Sec. 4.1.2 "Fine-tune":
  epochs over ``D_t`` only). Pure, jitted end to end (``lax.scan`` over passes and mini-batches).
* ``retrain``: from scratch (fresh initialisation from the block's key and a fresh optimizer) on every
  interaction so far (offline prefix + all blocks up to this one), ``retrain_epochs`` epochs (SML Sec.
  4.1.2 "Full-retrain"). A host composition of one jitted step.
* ``retrain-warm``: the same, but starting from the current parameters (fresh optimizer state).
* ``replay``: SPMF-style reservoir replay (Wang et al. 2018, SML's baseline [42]): a fixed-size reservoir
  of past interactions kept by reservoir sampling (Vitter's Algorithm R, vectorised over a block: the
  later of two rows drawn into the same slot wins, as in the sequential algorithm); each update trains
  ``steps`` passes on the new block plus ``replay_sample`` rows drawn uniformly from the reservoir,
  then inserts the block. The reservoir starts as a uniform sample of the offline prefix.

Departures from the papers: negatives are uniform over all items (a known positive may be drawn; the
host samplers of :mod:`jaxrec.train.fit` exclude them), sequence models train one target per interaction
(not GRU4Rec's all-position chunks), SPMF's reservoir is sampled uniformly rather than by its
loss-based (``wrong prediction``) sampling, and the warm retrain resets the optimizer state.

Static shapes: a mini-batch with no real row leaves the state untouched (``where`` on the whole state,
so Adam's moments do not move on padding); blocks are padded to one size, so the jitted updates compile
once. Constructors are cached by their static configuration (``functools.lru_cache``): another seed or
another run reuses the compiled updates.

**Adding a strategy** (MeLON's, SML's, a paper's baseline): write ``make(env) -> Learner`` and add it to
:data:`STRATEGIES` with :func:`register`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.models import registry
from jaxrec.stream import blocks as blocks_lib
from jaxrec.train import learner as learner_lib
from jaxrec.train import state as state_lib
from jaxrec.train.fit import OPTIMIZERS, check_fields


@dataclasses.dataclass(frozen=True)
class StrategyConfig:
  """Hyper-parameters shared by the generic strategies.

  Attributes:
    steps: passes over each new block (fine-tune, replay).
    batch_size: rows per gradient step (a block whose padded size it does not divide is one step).
    num_negatives: uniform negatives per positive, drawn in the jitted step.
    optimizer, learning_rate, weight_decay, clip_norm: the optax optimizer
      (:func:`jaxrec.train.state.make_optimizer`).
    loss: loss name (None: the model's default).
    retrain_epochs: epochs over everything so far per block (retrain, retrain-warm) and of the
      offline pre-training (:func:`pretrain`).
    reservoir_size: rows kept in the replay reservoir.
    replay_sample: reservoir rows added to each new block (replay).
  """

  steps: int = 1
  batch_size: int = 256
  num_negatives: int = 4
  optimizer: str = "adam"
  learning_rate: float = 1e-3
  weight_decay: float = 0.0
  clip_norm: Optional[float] = None
  loss: Optional[str] = None
  retrain_epochs: int = 5
  reservoir_size: int = 10_000
  replay_sample: int = 256

  def __post_init__(self):
    check_fields(self, {
        "steps": ("int", 1, False), "batch_size": ("int", 1, False), "num_negatives": ("int", 1, False),
        "optimizer": (OPTIMIZERS, None, False), "learning_rate": ("pos", 0, False),
        "weight_decay": ("float", 0, False), "clip_norm": ("pos", 0, True),
        "retrain_epochs": ("int", 1, False),
        "reservoir_size": ("int", 1, False), "replay_sample": ("int", 0, False)})


@dataclasses.dataclass(frozen=True, eq=False)
class Env:
  """What a strategy is built from: the model, the configuration and the stream's data.

  A strategy may read ``data.examples`` rows ``[0, block["end"])`` only (the offline prefix and the
  blocks up to the one being consumed).
  """

  model: str
  module: Any
  config: StrategyConfig
  data: blocks_lib.Blocks


class StrategyDef(NamedTuple):
  """A registered strategy: ``make(env) -> Learner``; ``jittable``: its update may be jitted."""

  make: Callable[[Env], learner_lib.Learner]
  jittable: bool


STRATEGIES: dict[str, StrategyDef] = {}


def register(name: str, make: Callable[[Env], learner_lib.Learner], jittable: bool) -> None:
  """Adds a strategy under ``name`` (MeLON and SML add theirs here)."""
  if name in STRATEGIES:
    raise ValueError(f"strategy {name!r} is already registered")
  STRATEGIES[name] = StrategyDef(make, jittable)


def get(name: str) -> StrategyDef:
  if name not in STRATEGIES:
    raise KeyError(f"unknown strategy {name!r}; registered: {sorted(STRATEGIES)}")
  return STRATEGIES[name]


# -- the shared gradient step ---------------------------------------------------------------------


def _tx(config: StrategyConfig):
  return state_lib.make_optimizer(config.optimizer, config.learning_rate,
                                  weight_decay=config.weight_decay, clip_norm=config.clip_norm)


def _static_key(env: Env) -> tuple:
  """Everything the compiled updates depend on (no seed, no data)."""
  return (env.model, env.module, env.config)


def _examples_only(block) -> dict:
  return {k: v for k, v in block.items() if k != "end"}


@functools.lru_cache(maxsize=None)
def _step_fn(model: str, module, config: StrategyConfig):
  """``step(train_state, batch, rng) -> (train_state, metrics)``: negatives drawn, then one gradient
  step of the model's loss; a batch without real rows leaves the state as it was."""
  spec = registry.get(model)
  inner = learner_lib.gradient_learner(spec.loss_fn(module, config.loss), _tx(config))
  num_items = module.num_items

  def step(ts, batch, rng):
    neg_key, loss_key = jax.random.split(rng)
    b = batch["mask"].shape[0]
    negatives = jax.random.randint(neg_key, (b, config.num_negatives), 0, num_items, jnp.int32)
    new, metrics = inner.update(ts, dict(batch, negatives=negatives), loss_key)
    real = batch["mask"].any()
    ts = jax.tree.map(lambda n, o: jnp.where(real, n, o), new, ts)
    return ts, {"loss": metrics["loss"], "real": real}

  return step


def _passes(step, ts, rows, rng, passes: int, batch_size: int):
  """``passes`` shuffled passes over ``rows`` (``[P, ...]`` with ``mask``) in mini-batches (jittable)."""
  p = rows["mask"].shape[0]
  b = batch_size if p % batch_size == 0 else p
  nb = p // b

  def one_pass(ts, e):
    perm_key, step_key = jax.random.split(jax.random.fold_in(rng, e))
    # Real rows first (in random order), padding last: every mini-batch but the last real one is full.
    order = jnp.argsort(jnp.where(rows["mask"], jax.random.uniform(perm_key, (p,)), 2.0))
    batches = jax.tree.map(lambda x: x[order].reshape((nb, b) + x.shape[1:]), rows)

    def body(ts, xs):
      i, batch = xs
      return step(ts, batch, jax.random.fold_in(step_key, i))

    return jax.lax.scan(body, ts, (jnp.arange(nb), batches))

  ts, m = jax.lax.scan(one_pass, ts, jnp.arange(passes))
  real = m["real"].astype(jnp.float32)
  loss = jnp.sum(jnp.where(m["real"], m["loss"], 0.0)) / jnp.maximum(real.sum(), 1.0)
  return ts, {"loss": loss, "steps": real.sum().astype(jnp.int32)}


def _train_state_params(state):
  return state.params


@functools.lru_cache(maxsize=None)
def _jitted_init(model: str, module, history_len: int):
  spec = registry.get(model)
  sample = registry.sample_batch(spec.family, 2, 2, history_len)
  return jax.jit(lambda rng: spec.init(rng, module, sample))


def init_params(env: Env, rng: jax.Array):
  """Fresh parameters of ``env.model`` (``{"params": ...}``) from ``rng`` (jitted, compiled once)."""
  hist = env.data.examples.get("history")
  return _jitted_init(env.model, env.module, 5 if hist is None else int(hist.shape[1]))(rng)


# -- fine-tune ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _fine_tune(model: str, module, config: StrategyConfig) -> learner_lib.Learner:
  step = _step_fn(model, module, config)
  tx = _tx(config)

  def init(params, rng):
    del rng
    return state_lib.create(params, tx)

  def update(ts, block, rng):
    return _passes(step, ts, _examples_only(block), rng, config.steps, config.batch_size)

  return learner_lib.Learner(init=init, update=update, params=_train_state_params)


def fine_tune(env: Env) -> learner_lib.Learner:
  """``steps`` passes over the new block only (MeLON's Default, SML's Fine-tune)."""
  return _fine_tune(*_static_key(env))


# -- retrain over everything so far ---------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _jitted_step(model: str, module, config: StrategyConfig):
  step = _step_fn(model, module, config)

  def run(ts, batch, rng, i):
    return step(ts, batch, jax.random.fold_in(rng, i))

  return jax.jit(run, donate_argnums=0)


def _host_seed(rng: jax.Array) -> int:
  return int(jax.random.randint(rng, (), 0, 2**31 - 1))


def train_rows(env: Env, ts, end: int, epochs: int, rng: jax.Array):
  """``epochs`` shuffled epochs over example rows ``[0, end)`` (host loop of one jitted step)."""
  step = _jitted_step(*_static_key(env))
  b = env.config.batch_size
  rows = env.data.rows(0, end)
  seed = _host_seed(rng)
  nb = -(-end // b)
  losses = []
  for e in range(epochs):
    perm = np.random.default_rng([seed, e]).permutation(end)
    for i in range(nb):
      batch = blocks_lib.pad_rows({k: v[perm[i * b:(i + 1) * b]] for k, v in rows.items()}, b)
      ts, m = step(ts, batch, rng, np.int32(e * nb + i))
      losses.append(m["loss"])
  loss = jnp.mean(jnp.stack(losses[-nb:])) if losses else jnp.float32(0.0)
  return ts, {"loss": loss, "steps": jnp.int32(len(losses))}


def pretrain(env: Env, params, rng: jax.Array, epochs: Optional[int] = None):
  """Parameters trained on the offline prefix (``retrain_epochs`` epochs unless ``epochs``)."""
  ts = state_lib.create(params, _tx(env.config))
  ts, _ = train_rows(env, ts, env.data.offline_end,
                     env.config.retrain_epochs if epochs is None else epochs, rng)
  return ts.params


def retrain(env: Env, warm: bool = False) -> learner_lib.Learner:
  """Retrain on everything so far each block: from scratch, or from the current params (``warm``)."""
  tx = _tx(env.config)

  def init(params, rng):
    del rng
    return state_lib.create(params, tx)

  def update(ts, block, rng):
    init_key, train_key = jax.random.split(rng)
    params = ts.params if warm else init_params(env, init_key)
    fresh = state_lib.create(params, tx)
    fresh = fresh.replace(step=ts.step)
    return train_rows(env, fresh, int(block["end"]), env.config.retrain_epochs, train_key)

  return learner_lib.Learner(init=init, update=update, params=_train_state_params)


# -- reservoir replay -----------------------------------------------------------------------------


@flax.struct.dataclass
class ReplayState:
  """State of :func:`replay`.

  Attributes:
    train: the model's :class:`TrainState`.
    reservoir: example fields ``[R, ...]`` (slots ``>= min(seen, R)`` are empty).
    seen: int32 scalar, interactions offered to the reservoir so far.
  """

  train: state_lib.TrainState
  reservoir: dict
  seen: jax.Array


def _reservoir_insert(reservoir, seen, rows, rng):
  """Algorithm R over the real rows of ``rows``, vectorised; returns ``(reservoir, seen)``."""
  size = rows["mask"].shape[0]
  cap = jax.tree.leaves(reservoir)[0].shape[0]
  mask = rows["mask"]
  n = seen + jnp.cumsum(mask.astype(jnp.int32)) - 1  # 0-based arrival index of each real row
  draw = jnp.floor(jax.random.uniform(rng, (size,)) * (n + 1).astype(jnp.float32)).astype(jnp.int32)
  slot = jnp.where(n < cap, n, jnp.minimum(draw, n))
  slot = jnp.where(mask & (slot < cap), slot, cap)  # cap = dropped
  winner = jnp.full((cap + 1,), -1, jnp.int32).at[slot].max(jnp.arange(size, dtype=jnp.int32))[:cap]
  take = winner >= 0
  src = jnp.maximum(winner, 0)
  reservoir = {k: jnp.where(take.reshape((cap,) + (1,) * (v.ndim - 1)), rows[k][src], v)
               for k, v in reservoir.items()}
  return reservoir, seen + mask.sum(dtype=jnp.int32)


@functools.lru_cache(maxsize=None)
def _replay_update(model: str, module, config: StrategyConfig):
  step = _step_fn(model, module, config)
  b = config.batch_size
  sample = max(b, -(-config.replay_sample // b) * b) if config.replay_sample else 0

  def update(state: ReplayState, block, rng):
    sample_key, insert_key, train_key = jax.random.split(rng, 3)
    rows = _examples_only(block)
    filled = jnp.minimum(state.seen, config.reservoir_size)
    if sample:
      idx = jax.random.randint(sample_key, (sample,), 0, jnp.maximum(filled, 1))
      drawn = {k: v[idx] for k, v in state.reservoir.items()}
      drawn["mask"] = (jnp.arange(sample) < config.replay_sample) & (filled > 0)
      train_rows_ = jax.tree.map(lambda x, y: jnp.concatenate([x, y]), rows, drawn)
    else:
      train_rows_ = rows
    ts, metrics = _passes(step, state.train, train_rows_, train_key, config.steps, b)
    reservoir, seen = _reservoir_insert(state.reservoir, state.seen, rows, insert_key)
    return ReplayState(train=ts, reservoir=reservoir, seen=seen), metrics

  return update


def _replay_params(state: ReplayState):
  return state.train.params


def replay(env: Env) -> learner_lib.Learner:
  """Reservoir replay (SPMF-style); the reservoir starts as a uniform sample of the offline prefix."""
  config = env.config
  tx = _tx(config)
  cap = config.reservoir_size

  def init(params, rng):
    n = env.data.offline_end
    keep = np.arange(n) if n <= cap else np.sort(
        np.random.default_rng(_host_seed(rng)).choice(n, cap, replace=False))
    offline = env.data.rows(0, n)
    reservoir = blocks_lib.pad_rows({k: v[keep] for k, v in offline.items()}, cap)
    del reservoir["mask"]
    return ReplayState(train=state_lib.create(params, tx),
                       reservoir=jax.tree.map(jnp.asarray, reservoir), seen=jnp.int32(n))

  return learner_lib.Learner(init=init, update=_replay_update(*_static_key(env)), params=_replay_params)


register("fine-tune", fine_tune, jittable=True)
register("retrain", retrain, jittable=False)
register("retrain-warm", functools.partial(retrain, warm=True), jittable=False)
register("replay", replay, jittable=True)
