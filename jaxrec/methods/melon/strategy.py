"""MeLON as a stream strategy (:mod:`jaxrec.stream.strategies`): ``Learner(init, update, params)``.

* ``init(params, rng)``: the state (:class:`jaxrec.methods.melon.step.MelonState`) for the pre-trained
  recommender; then the offline pass (Appendix: "both the recommender and the meta-model are pre-trained
  on the past user-item interactions in an offline manner ... updated in the same way as in the online
  learning"): ``offline_epochs`` passes of the online step over the offline prefix in time order, the
  history emptied at the start of each pass, so ``B_last`` and the neighbours are always strictly earlier
  than the batch (the authors' code samples them from the whole training graph, the future included, and
  shuffles the batches). ``offline_epochs=0`` only fills the history from the prefix (no update). The
  pass reads rows ``[0, offline_end)`` only. ``offline_meta_only`` (default) freezes the recommender
  during that pass, so every strategy starts the stream from the same pre-trained recommender and only
  the meta-model is warmed up.
* ``update(state, block, rng)``: the block as mini-batches of ``batch_size`` in time order, each one step of
  Algorithm 1 (:func:`jaxrec.methods.melon.step.online_step`); pure and jitted (``jittable=True``).
* ``params(state)``: the recommender.

Registered variants (:data:`VARIANTS`): ``melon`` (the paper, Definitions 1-4, Eq. 8-16), ``melon-authors``
(the authors' coded meta-model, :data:`AUTHORS`), ``melon-i`` / ``melon-p`` (Table 3's MeLON_I / MeLON_P),
``melon-fo`` (first-order meta-gradient). The shared :class:`jaxrec.stream.strategies.StrategyConfig`
gives ``batch_size``, ``num_negatives`` and ``loss``; :class:`MelonConfig` the rest.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.methods.melon import history as history_lib
from jaxrec.methods.melon import meta_model as meta_lib
from jaxrec.methods.melon import step as step_lib
from jaxrec.models import registry
from jaxrec.stream import blocks as blocks_lib
from jaxrec.stream import strategies as strategies_lib
from jaxrec.train import checkpoint as checkpoint_lib
from jaxrec.train import learner as learner_lib
from jaxrec.train.fit import ConfigError, check_fields


@dataclasses.dataclass(frozen=True)
class MelonConfig:
  """MeLON's own hyper-parameters.

  Attributes:
    meta: the meta-model's architecture.
    meta_learning_rate: Adam learning rate of the meta-model.
    num_neighbours: sampled neighbours per node (10 in the paper).
    order: 2 (exact) or 1 (first-order) meta-gradient.
    dense: rates of dense parameters, ``"auto" | "pair" | "batch"`` (see :mod:`.step`).
    offline_epochs: passes of the online step over the offline prefix in ``init``.
    offline_meta_only: the offline pass trains the meta-model only (the recommender stays as given).
  """

  meta: meta_lib.MetaConfig = meta_lib.MetaConfig()
  meta_learning_rate: float = 1e-3
  num_neighbours: int = 10
  order: int = 2
  dense: str = "auto"
  offline_epochs: int = 1
  offline_meta_only: bool = True

  def __post_init__(self):
    check_fields(self, {"meta_learning_rate": ("pos", 0, False), "num_neighbours": ("int", 1, False),
                        "order": ("int", 1, False), "dense": (step_lib.DENSE_MODES, 0, False),
                        "offline_epochs": ("int", 0, False), "offline_meta_only": ("bool", 0, False)})
    if self.order not in (1, 2):
      raise ConfigError(type(self).__name__, "order", f"must be 1 or 2, got {self.order!r}")


AUTHORS = meta_lib.MetaConfig(role_layers=1, interaction_layers=2, param_value=False, batch_mean_loss=True,
                              forget=True)
VARIANTS = {
    "melon": MelonConfig(),
    "melon-authors": MelonConfig(meta=AUTHORS),
    "melon-i": MelonConfig(meta=meta_lib.MetaConfig(parameter=False)),
    "melon-p": MelonConfig(meta=meta_lib.MetaConfig(interaction=False)),
    "melon-fo": MelonConfig(order=1),
}


def step_config(env: strategies_lib.Env, config: MelonConfig,
                meta_update: bool = True) -> step_lib.StepConfig:
  loss = env.config.loss or registry.get(env.model).default_loss
  return step_lib.StepConfig(module=env.module, loss=loss, meta=config.meta,
                             meta_learning_rate=config.meta_learning_rate,
                             num_negatives=env.config.num_negatives, order=config.order, dense=config.dense,
                             meta_update=meta_update)


@functools.lru_cache(maxsize=None)
def _observe_fn():
  def observe(hist, block, rng):
    return history_lib.observe(hist, block["user"], block["positive"], block["mask"], rng)
  return jax.jit(observe, donate_argnums=0)


def _offline_pass(env, config: MelonConfig, state: step_lib.MelonState, rng) -> step_lib.MelonState:
  """See the module docstring: time-ordered passes over rows ``[0, offline_end)``."""
  n = env.data.offline_end
  b = env.config.batch_size
  rows = env.data.rows(0, n)
  starts = range(0, n, b)
  if config.offline_epochs == 0:
    observe = _observe_fn()
    hist = state.history
    for i, lo in enumerate(starts):
      block = blocks_lib.pad_rows({k: rows[k][lo:lo + b] for k in ("user", "positive")}, b)
      hist = observe(hist, block, jax.random.fold_in(rng, i))
    return state.replace(history=hist)
  # The stream's own compiled update (one jit object per update function, ``learner.jit_update``), on
  # chunks laid out as the stream's blocks (``block_size`` rows with an ``end``), so the stream reuses
  # this compilation instead of compiling the same step a second time.
  update = learner_lib.jit_update(learner_lib.Learner(init=None, update=_update(step_config(env, config), b),
                                                      params=None))
  bs = env.data.block_size
  empty = history_lib.empty(env.module.num_users, env.module.num_items, config.num_neighbours)
  for e in range(config.offline_epochs):
    # Committed as the stream loop commits its state, so the stream reuses this compilation.
    state = checkpoint_lib.commit(state.replace(history=jax.tree.map(jnp.copy, empty)))
    for i, lo in enumerate(range(0, n, bs)):
      block = blocks_lib.pad_rows({k: rows[k][lo:lo + bs] for k in ("user", "positive")}, bs)
      block["end"] = np.asarray(min(lo + bs, n), np.int64)
      state, _ = update(state, block, jax.random.fold_in(jax.random.fold_in(rng, e), i))
  return state


def make(env: strategies_lib.Env, config: MelonConfig = MelonConfig()) -> learner_lib.Learner:
  """The MeLON strategy for ``env`` (a registered user model) with ``config``."""
  if registry.get(env.model).family != "user":
    raise ValueError(f"MeLON needs a user model (mf-bpr, mf-log, ncf), got {env.model!r}")
  cfg = step_config(env, config)
  b = env.config.batch_size

  def init(params, rng):
    meta_key, pass_key = jax.random.split(rng)
    state = step_lib.init_state(cfg, params, meta_key, config.num_neighbours)
    served = jax.tree.map(jnp.copy, state.params) if config.offline_meta_only else None
    state = _offline_pass(env, config, state, pass_key)
    if served is not None:
      state = state.replace(params=served)
    return state

  return learner_lib.Learner(init=init, update=_update(cfg, b), params=_params)


@functools.lru_cache(maxsize=None)
def _update(cfg: step_lib.StepConfig, batch_size: int):
  def update(state, block, rng):
    return step_lib.block_step(cfg, batch_size, state, {k: v for k, v in block.items() if k != "end"}, rng)
  return update


def _params(state: step_lib.MelonState):
  return state.params


def _variant(name: str):
  return functools.partial(make, config=VARIANTS[name])


for _name in VARIANTS:
  if _name not in strategies_lib.STRATEGIES:
    strategies_lib.register(_name, _variant(_name), jittable=True)


def num_offline_batches(env: strategies_lib.Env) -> int:
  return int(np.ceil(env.data.offline_end / env.config.batch_size))
