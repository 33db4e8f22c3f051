"""Two-time-scale (2TS) user representations and their ablations (paper 000, Sections 3 and 5).

The neural 2TS model (Section 3.1) keeps two kinds of user representation:

* **stage 1, collaborative competitive filtering (CCF, Eq. 10)**: transductive user embeddings
  ``phi_u`` ``[U, d]`` and item representations ``[x_i ; g(f_i)]`` ``[I, d]`` trained with the softmax
  over an offer set ``O(u, i)`` (the clicked item plus ``p`` uniformly sampled other items)::

    L = 1/|D| sum_{(u,i) in D} [ log sum_{j in O(u,i)} exp(phi_u^T x_j) - phi_u^T x_i ]

  The order of the interactions is ignored.
* **stage 2, two RNN cells (Eq. 8, 9, 11, 12)**: the item representation (``x`` and ``g``) and the
  active users' ``phi_u`` are frozen, inactive users' ``phi_u`` are dropped, and two GRU cells plus a
  shared initial embedding ``psi`` are learned::

    inactive (T <= t*):  h_0 = psi;    h_{t+1} = RNNcell_1(h_t, x_{i_t})   over all T <= t* interactions
    active   (T >  t*):  h_0 = phi_u;  h_{t+1} = RNNcell_2(h_t, x_{i_t})   over the last K interactions

  Every step is scored with the same offer-set softmax, the state *before* consuming ``i_t``
  predicting ``i_t``. Training steps carry one group each: ``[B_in, L]`` batches of inactive users of
  similar length (``L`` the next power of two of the batch's longest sequence, at most ``t*``) or
  ``[B_act, K]`` active windows, consumed by one jitted step (``lax.scan`` over time, batched over users).

2TS-Plus (Section 3.3) scores with ``W^T [h_t ; x_{i_{t-1}}]`` instead of ``h_t``. Here ``W`` ``[2d, d]``
is learned in stage 2 only (stage 1 is plain CCF), initialised to ``[I ; 0]`` so that stage 2 starts
from the CCF scores; ``x_{i_{t-1}}`` is the item representation of the user's previous interaction
(for an active user's window, the training interaction just before it) and a learned vector
``x_start`` (initialised at zero) when the user has none.

Variants (one :class:`TwoTimeScaleConfig`, one code path):

* ``"2ts"`` / ``"2ts-plus"``: the two-stage method above.
* ``"ccf"``: stage 1 alone; the query is the static ``phi_u`` for every user (inactive and new included).
* ``"single-stage"`` (2TS-SingleStage, Table 3): the 2TS architecture with every parameter (``phi_u``,
  ``x``, ``g``, both cells, ``psi``) trained jointly in one stage on ``L_in + L_act + w * L_CCF``; the
  CCF term (``single_stage_ccf_weight``, default 1) is our reading of "all parameters are trained
  together": without it the active users' ``phi_u`` would only ever see their last K interactions.
* ``"2-gru"`` (Table 3): the two-stage pipeline, but active users start from a second learned initial
  embedding ``psi_2`` instead of ``phi_u`` (no transductive user embeddings in the model; stage 1
  still learns the item representation).

Evaluation (Section 5, chronological 70/10/20 split): the cells keep adapting each user's state as the
user's later (valid, then test) interactions arrive, without any gradient step; the query for an
interaction depends only on earlier interactions (:func:`eval_rollout`, :func:`eval_query_vectors`).
The per-step movements ``||h_{t+1} - h_t||`` are returned for Figure 4. A user keeps the group (and
cell) given by its training count during evaluation.

Parameters are one flat dict pytree::

  "user" [U, d], "item" [I, d_id], "feat_net" (g, only with item features)       -- stage 1
  "cell_in", "cell_act" (flax GRUCell params), "psi" [d], "psi_act" [d] (2-gru),
  "w" [2d, d], "x_start" [d] (2ts-plus)                                            -- stage 2

with ``d = d_id + d_feat`` when item features ``[I, f]`` are given, ``d = d_id`` otherwise.

Batch formats (numpy or jax arrays; item features, when used, ride along as ``"item_features"``)::

  stage 1:  {"user": int32 [B], "item": int32 [B]}
  stage 2:  {"inactive": {"items": int32 [B_in, L], "mask": bool [B_in, L], "prev": int32 [B_in]},
             "active":   {"items": int32 [B_act, K], "mask": bool [B_act, K], "prev": int32 [B_act],
                          "user": int32 [B_act]}}      (prev = previous item or -1; L <= t*)
            either group may be absent (training steps carry one group, see :func:`stage_batches`)
  single-stage: stage-2 batch with both groups (L = t*) plus {"pairs": stage-1 batch}

Training composes the shared core (``jaxrec.train``): per stage, :func:`make_loss_fn` (frozen keys through
``stop_gradient``) and :func:`stage_optimizer` (``optax.multi_transform``: Adam on the trained keys,
``optax.set_to_zero`` on the frozen ones, which stay bit-identical) make one ``jit_train_step``;
:func:`stage_batches` gives the epoch's batches from ``(seed, stage, epoch)``; :func:`train` runs one
``jaxrec.train.loop.train`` per stage (Orbax checkpoints in ``workdir/stage1``, ``workdir/stage2`` or
``workdir/single``, resume, keep-best and early stopping on an ``eval_fn``, NaN checks, metrics.jsonl).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrec.data.log import InteractionLog, concat_logs
from jaxrec.models.common import dot_scores
from jaxrec.train import loop as loop_lib
from jaxrec.train import state as state_lib
from jaxrec.train import step as step_lib

Params = dict
Batch = Mapping[str, Any]

VARIANTS = ("2ts", "2ts-plus", "single-stage", "2-gru", "ccf")
STAGE1_KEYS = ("user", "item", "feat_net")


@dataclasses.dataclass(frozen=True)
class TwoTimeScaleConfig:
  """Hyper-parameters of 2TS, 2TS-Plus and the ablations.

  Defaults suit small data on a CPU (e.g. ML-100K, the synthetic presets); the paper (Appendix C) uses
  ``d_id = d_feat = 64``, ``t_star`` 100/200, ``k`` 10/20 and Adam with 1e-3 or 1e-4 (1e-4 "most of the
  time") on data sets with 1M-100M interactions, where far more steps are taken per epoch.

  Attributes:
    variant: one of ``"2ts"``, ``"2ts-plus"``, ``"single-stage"``, ``"2-gru"``, ``"ccf"``.
    d_id: dimension of the transductive item embedding ``x_i``.
    d_feat: output dimension of the feature network ``g`` (used only when item features are given).
    feat_hidden: hidden width of ``g`` (Dense -> ReLU -> Dense).
    t_star: activity threshold; users with more than ``t_star`` training interactions are active.
    k: number of last training interactions of an active user used in stage 2 (``k <= t_star``).
    num_offered: ``p``, the number of sampled items in an offer set (Eq. 10-12).
    init_scale: standard deviation of the embedding initialisation.
    lr_stage1, lr_stage2, lr_single: Adam learning rates of stage 1, stage 2 and the single stage.
    epochs_stage1, epochs_stage2, epochs_single: passes over the stage-1 pairs / stage-2 groups /
      stage-1 pairs (single stage, the groups cycled alongside).
    batch_stage1: stage-1 pairs per step.
    batch_inactive, batch_active: inactive sequences and active windows per stage-2 step.
    single_stage_ccf_weight: weight of the CCF loss in the single-stage objective.
    seed: seeds the parameter init, the offer-set keys and the host-side shuffling.
  """

  variant: str = "2ts"
  d_id: int = 32
  d_feat: int = 16
  feat_hidden: int = 32
  t_star: int = 20
  k: int = 10
  num_offered: int = 20
  init_scale: float = 0.1
  lr_stage1: float = 1e-3
  lr_stage2: float = 1e-3
  lr_single: float = 1e-3
  epochs_stage1: int = 10
  epochs_stage2: int = 10
  epochs_single: int = 10
  batch_stage1: int = 256
  batch_inactive: int = 64
  batch_active: int = 64
  single_stage_ccf_weight: float = 1.0
  seed: int = 0

  def __post_init__(self):
    if self.variant not in VARIANTS:
      raise ValueError(f"TwoTimeScaleConfig.variant must be one of {VARIANTS}, got {self.variant!r}")
    if self.k < 1 or self.t_star < 0 or self.num_offered < 1:
      raise ValueError(f"TwoTimeScaleConfig: need k >= 1, t_star >= 0, num_offered >= 1; got "
                       f"k={self.k}, t_star={self.t_star}, num_offered={self.num_offered}")

  @property
  def plus(self) -> bool:
    """Whether the 2TS-Plus head ``W^T [h ; x_prev]`` is used."""
    return self.variant == "2ts-plus"

  @property
  def has_cells(self) -> bool:
    return self.variant != "ccf"

  def dim(self, feat_dim: int) -> int:
    """Total representation dimension ``d`` for ``feat_dim`` item features (0: none)."""
    return self.d_id + (self.d_feat if feat_dim else 0)


class FeatureNet(nn.Module):
  """``g(f_i)`` of Section 3.3: a small MLP from item features to a ``d_feat`` embedding."""

  hidden: int
  out: int

  @nn.compact
  def __call__(self, f):
    return nn.Dense(self.out)(nn.relu(nn.Dense(self.hidden)(f)))


# -- parameters ----------------------------------------------------------------------------------------


def init_params(cfg: TwoTimeScaleConfig, rng: jax.Array, num_users: int, num_items: int,
                feat_dim: int = 0) -> Params:
  """Initial parameter pytree (see the module docstring for its keys)."""
  d = cfg.dim(feat_dim)
  ks = jax.random.split(rng, 8)
  params = {
      "user": cfg.init_scale * jax.random.normal(ks[0], (num_users, d)),
      "item": cfg.init_scale * jax.random.normal(ks[1], (num_items, cfg.d_id)),
  }
  if feat_dim:
    params["feat_net"] = FeatureNet(cfg.feat_hidden, cfg.d_feat).init(
        ks[2], jnp.zeros((1, feat_dim)))["params"]
  if cfg.has_cells:
    cell = nn.GRUCell(features=d)
    zeros = jnp.zeros((1, d))
    params["cell_in"] = cell.init(ks[3], zeros, zeros)["params"]
    params["cell_act"] = cell.init(ks[4], zeros, zeros)["params"]
    params["psi"] = cfg.init_scale * jax.random.normal(ks[5], (d,))
    if cfg.variant == "2-gru":
      params["psi_act"] = cfg.init_scale * jax.random.normal(ks[6], (d,))
    if cfg.plus:
      params["w"] = jnp.concatenate([jnp.eye(d), jnp.zeros((d, d))], axis=0)
      params["x_start"] = jnp.zeros((d,))
  return params


def trainable_keys(cfg: TwoTimeScaleConfig, params: Params, stage: str) -> tuple[str, ...]:
  """Keys of ``params`` trained in ``stage`` (``"stage1"``, ``"stage2"`` or ``"single"``)."""
  if stage == "stage1":
    return tuple(k for k in STAGE1_KEYS if k in params)
  if stage == "stage2":
    return tuple(k for k in params if k not in STAGE1_KEYS)
  if stage == "single":
    return tuple(params)
  raise ValueError(f"unknown stage {stage!r}")


def item_vectors(cfg: TwoTimeScaleConfig, params: Params, idx: jax.Array,
                 item_features: Optional[jax.Array] = None) -> jax.Array:
  """Item representations ``[x_i ; g(f_i)]`` (Section 3.3) of the indices ``idx`` -> ``idx.shape + (d,)``."""
  x = jnp.take(params["item"], idx, axis=0)
  if "feat_net" in params:
    if item_features is None:
      raise ValueError("these parameters have a feature network: pass item_features")
    f = jnp.take(item_features, idx, axis=0)
    g = FeatureNet(cfg.feat_hidden, cfg.d_feat).apply({"params": params["feat_net"]}, f)
    x = jnp.concatenate([x, g], axis=-1)
  return x


def item_table(cfg: TwoTimeScaleConfig, params: Params, item_features: Optional[jax.Array] = None):
  """The full item representation table ``[I, d]`` (for ``dot_scores`` and evaluation)."""
  return item_vectors(cfg, params, jnp.arange(params["item"].shape[0]), item_features)


# -- offer-set softmax -------------------------------------------------------------------------------


def sample_offer_negatives(rng: jax.Array, positives: jax.Array, num_items: int, p: int) -> jax.Array:
  """``p`` items per positive, uniform over the ``num_items - 1`` items other than the positive.

  Draws from ``[0, I - 1)`` and shifts values ``>=`` the positive by one, so the positive is never among
  the sampled items (duplicates among the ``p`` are possible, as with sampling with replacement).

  Returns:
    int32 ``positives.shape + (p,)``.
  """
  if num_items < 2:
    raise ValueError("offer sets need at least 2 items")
  r = jax.random.randint(rng, positives.shape + (p,), 0, num_items - 1, dtype=jnp.int32)
  return r + (r >= positives[..., None]).astype(jnp.int32)


def offer_set_loss(query: jax.Array, pos_vec: jax.Array, neg_vecs: jax.Array) -> jax.Array:
  """Per-interaction softmax loss over the offer set (Eq. 10-12).

  Args:
    query: ``[..., d]`` user representation scoring the interaction.
    pos_vec: ``[..., d]`` clicked item's representation.
    neg_vecs: ``[..., p, d]`` sampled items' representations.

  Returns:
    ``[...]`` ``log sum_{j in O} exp(q^T x_j) - q^T x_i``.
  """
  pos = jnp.sum(query * pos_vec, axis=-1)
  neg = jnp.einsum("...d,...pd->...p", query, neg_vecs)
  logits = jnp.concatenate([pos[..., None], neg], axis=-1)
  return jax.nn.logsumexp(logits, axis=-1) - pos


def ccf_loss(cfg: TwoTimeScaleConfig, params: Params, batch: Batch, rng: jax.Array,
             negatives: Optional[jax.Array] = None) -> tuple[jax.Array, dict]:
  """Stage-1 CCF loss (Eq. 10), mean over the batch of (user, item) pairs.

  Args:
    cfg: the configuration (``num_offered`` is ``p``).
    params: parameter pytree.
    batch: ``{"user": [B], "item": [B]}`` (+ optional ``"item_features"``).
    rng: key for the offer sets (sampled inside the step).
    negatives: optional int ``[B, p]`` explicit offered items (tests); sampled when ``None``.

  Returns:
    ``(loss, {"ccf_loss": loss})``.
  """
  feats = batch.get("item_features")
  item = jnp.asarray(batch["item"])
  if negatives is None:
    negatives = sample_offer_negatives(rng, item, params["item"].shape[0], cfg.num_offered)
  q = jnp.take(params["user"], batch["user"], axis=0)
  per = offer_set_loss(q, item_vectors(cfg, params, item, feats), item_vectors(cfg, params, negatives, feats))
  loss = jnp.mean(per)
  return loss, {"ccf_loss": loss}


# -- the two cells -----------------------------------------------------------------------------------


def _cell_step(params: Params, key: str, h: jax.Array, x: jax.Array) -> jax.Array:
  """``h' = RNNcell(h, x)`` with the flax GRUCell whose params are ``params[key]``."""
  new_h, _ = nn.GRUCell(features=h.shape[-1]).apply({"params": params[key]}, h, x)
  return new_h


def _query(cfg: TwoTimeScaleConfig, params: Params, h: jax.Array, x_prev: jax.Array) -> jax.Array:
  """``h_t`` (2TS) or ``W^T [h_t ; x_{i_{t-1}}]`` (2TS-Plus, Section 3.3)."""
  if cfg.plus:
    return jnp.concatenate([h, x_prev], axis=-1) @ params["w"]
  return h


def _prev_vectors(cfg, params, prev, feats):
  """Representation of the previous item (index ``-1``: ``x_start``, or zero without the Plus head)."""
  vec = item_vectors(cfg, params, jnp.maximum(prev, 0), feats)
  start = params["x_start"] if cfg.plus else jnp.zeros(vec.shape[-1], vec.dtype)
  return jnp.where((prev >= 0)[..., None], vec, start)


def rollout(cfg: TwoTimeScaleConfig, params: Params, cell_fn: Callable, h0: jax.Array,
            x_prev0: jax.Array, xs: jax.Array, mask: jax.Array, with_moves: bool = False):
  """Runs the cell over padded, time-ordered sequences (Eq. 8, 9) with ``lax.scan``.

  The query for step ``t`` is computed from the state *before* consuming ``x_t``; masked steps leave
  the state and the previous item unchanged.

  Args:
    cfg: configuration (selects the 2TS or the 2TS-Plus query).
    params: parameter pytree (``w`` for 2TS-Plus).
    cell_fn: ``(h [B, d], x [B, d]) -> h' [B, d]``.
    h0: ``[B, d]`` initial states.
    x_prev0: ``[B, d]`` representation of the item before the sequence.
    xs: ``[B, L, d]`` item representations in time order.
    mask: bool ``[B, L]``.
    with_moves: also return ``||h_{t+1} - h_t||`` (not differentiable at 0; evaluation only).

  Returns:
    ``(queries [B, L, d], moves [B, L] or None, h_L [B, d], x_prev_L [B, d])``.
  """
  def body(carry, inp):
    h, xp = carry
    x, m = inp
    q = _query(cfg, params, h, xp)
    h_new = jnp.where(m[:, None], cell_fn(h, x), h)
    xp = jnp.where(m[:, None], x, xp)
    move = jnp.linalg.norm(h_new - h, axis=-1) if with_moves else None
    return (h_new, xp), (q, move)

  (h, xp), (qs, moves) = jax.lax.scan(body, (h0, x_prev0), (jnp.swapaxes(xs, 0, 1), jnp.swapaxes(mask, 0, 1)))
  qs = jnp.swapaxes(qs, 0, 1)
  moves = None if moves is None else jnp.swapaxes(moves, 0, 1)
  return qs, moves, h, xp


def _initial_state(cfg, params, group_batch, group):
  b = group_batch["items"].shape[0]
  if group == "inactive":
    return jnp.broadcast_to(params["psi"], (b, params["psi"].shape[0]))
  if cfg.variant == "2-gru":
    return jnp.broadcast_to(params["psi_act"], (b, params["psi_act"].shape[0]))
  return jnp.take(params["user"], group_batch["user"], axis=0)


def group_rollout(cfg: TwoTimeScaleConfig, params: Params, group_batch: Batch, group: str,
                  item_features: Optional[jax.Array] = None):
  """Stage-2 forward pass of one user group (Eq. 8 for ``"inactive"``, Eq. 9 for ``"active"``).

  Args:
    cfg: configuration.
    params: parameter pytree.
    group_batch: ``{"items" [B, L], "mask" [B, L], "prev" [B]}`` (+ ``"user" [B]`` for active users).
    group: ``"inactive"`` (``h_0 = psi``, cell 1) or ``"active"`` (``h_0 = phi_u``, cell 2).
    item_features: optional ``[I, f]``.

  Returns:
    ``(queries [B, L, d], xs [B, L, d], h_L [B, d], x_prev_L [B, d])``.
  """
  key = "cell_in" if group == "inactive" else "cell_act"
  xs = item_vectors(cfg, params, group_batch["items"], item_features)
  x_prev0 = _prev_vectors(cfg, params, jnp.asarray(group_batch["prev"]), item_features)
  h0 = _initial_state(cfg, params, group_batch, group)
  qs, _, h, xp = rollout(cfg, params, functools.partial(_cell_step, params, key), h0, x_prev0, xs,
                         jnp.asarray(group_batch["mask"]))
  return qs, xs, h, xp


def _group_loss(cfg, params, group_batch, group, feats, rng, negatives=None):
  qs, xs, _, _ = group_rollout(cfg, params, group_batch, group, feats)
  items = jnp.asarray(group_batch["items"])
  if negatives is None:
    negatives = sample_offer_negatives(rng, items, params["item"].shape[0], cfg.num_offered)
  per = offer_set_loss(qs, xs, item_vectors(cfg, params, negatives, feats))
  m = jnp.asarray(group_batch["mask"]).astype(per.dtype)
  count = jnp.sum(m)
  return jnp.sum(per * m) / jnp.maximum(count, 1.0), count


def stage2_loss(cfg: TwoTimeScaleConfig, params: Params, batch: Batch, rng: jax.Array,
                negatives: Optional[Mapping[str, jax.Array]] = None) -> tuple[jax.Array, dict]:
  """Stage-2 loss ``L_in + L_act`` (Eq. 11 + Eq. 12), each a mean over its group's unmasked steps.

  Args:
    cfg: configuration.
    params: parameter pytree.
    batch: the stage-2 batch (module docstring); either group may be absent (the one-group steps of
      :func:`stage_batches`), it then adds ``0`` to the loss and ``0`` to its ``steps_*`` count.
    rng: key for the offer sets.
    negatives: optional ``{"inactive": [B_in, t*, p], "active": [B_act, K, p]}`` explicit offered items.

  Returns:
    ``(loss, {"loss_in", "loss_act", "steps_in", "steps_act"})``.
  """
  feats = batch.get("item_features")
  keys = dict(zip(("inactive", "active"), jax.random.split(rng)))
  negatives = negatives or {}
  out = {}
  for group in ("inactive", "active"):
    if group in batch:
      out[group] = _group_loss(cfg, params, batch[group], group, feats, keys[group], negatives.get(group))
    else:  # a one-group step (stage_batches): the other group contributes nothing
      out[group] = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
  (l_in, n_in), (l_act, n_act) = out["inactive"], out["active"]
  return l_in + l_act, {"loss_in": l_in, "loss_act": l_act, "steps_in": n_in, "steps_act": n_act}


def single_stage_loss(cfg: TwoTimeScaleConfig, params: Params, batch: Batch, rng: jax.Array):
  """2TS-SingleStage objective: ``L_in + L_act + w * L_CCF`` on all parameters jointly (Table 3)."""
  k2, k1 = jax.random.split(rng)
  loss2, aux = stage2_loss(cfg, params, batch, k2)
  pairs = dict(batch["pairs"])
  if "item_features" in batch:
    pairs["item_features"] = batch["item_features"]
  loss1, _ = ccf_loss(cfg, params, pairs, k1)
  aux = dict(aux, ccf_loss=loss1)
  return loss2 + cfg.single_stage_ccf_weight * loss1, aux


# -- train steps: the shared core with per-stage freezing -------------------------------------------------


STAGES = ("stage1", "stage2", "single")
_LOSSES = {"stage1": ccf_loss, "stage2": stage2_loss, "single": single_stage_loss}


def _trained(cfg: TwoTimeScaleConfig, params: Params, stage: str) -> frozenset:
  return frozenset(trainable_keys(cfg, params, stage))


def _loss_fn(cfg: TwoTimeScaleConfig, stage: str, trained: frozenset) -> step_lib.LossFn:
  loss = functools.partial(_LOSSES[stage], cfg)

  def loss_fn(p: Params, batch: Batch, rng: jax.Array):
    p = {k: v if k in trained else jax.tree.map(jax.lax.stop_gradient, v) for k, v in p.items()}
    return loss(p, batch, rng)

  return loss_fn


def make_loss_fn(cfg: TwoTimeScaleConfig, params: Params, stage: str) -> step_lib.LossFn:
  """The ``loss_fn(params, batch, rng) -> (loss, aux)`` of ``stage`` for :func:`jaxrec.train.make_train_step`.

  Parameters outside ``trainable_keys(cfg, params, stage)`` enter through ``jax.lax.stop_gradient``: their
  gradient is an exact zero, so no scatter into the frozen ``[U, d]`` / ``[I, d]`` tables is computed and the
  step's ``grad_norm`` is that of the trained parameters only.
  """
  return _loss_fn(cfg, stage, _trained(cfg, params, stage))


def _optimizer(cfg: TwoTimeScaleConfig, stage: str, trained: frozenset,
               learning_rate: Optional[float]) -> optax.GradientTransformation:
  lr = learning_rate if learning_rate is not None else {
      "stage1": cfg.lr_stage1, "stage2": cfg.lr_stage2, "single": cfg.lr_single}[stage]

  def labels(p):
    return {k: jax.tree.map(lambda _, k=k: "trained" if k in trained else "frozen", v) for k, v in p.items()}

  return optax.multi_transform(
      {"trained": state_lib.make_optimizer("adam", lr), "frozen": optax.set_to_zero()}, labels)


def stage_optimizer(cfg: TwoTimeScaleConfig, params: Params, stage: str,
                    learning_rate: Optional[float] = None) -> optax.GradientTransformation:
  """Adam on the keys trained in ``stage``, ``optax.set_to_zero`` on the frozen ones.

  ``optax.multi_transform`` keeps Adam moments only for the trained sub-tree, and the frozen leaves get an
  update of exactly ``0``, so ``optax.apply_updates`` leaves them bit-identical (``x + 0.0 == x``).

  Args:
    cfg: configuration (``lr_stage1`` / ``lr_stage2`` / ``lr_single``).
    params: the parameter pytree (only its keys are read).
    stage: ``"stage1"``, ``"stage2"`` or ``"single"``.
    learning_rate: overrides the configured learning rate of the stage.
  """
  return _optimizer(cfg, stage, _trained(cfg, params, stage), learning_rate)


@functools.lru_cache(maxsize=64)
def _step_and_tx(cfg, stage, trained, learning_rate, jit):
  # One step function per (cfg, stage, trained keys, lr): repeated `train` calls (resumption, evaluation
  # sweeps) reuse its compiled executables instead of tracing and compiling the step again.
  tx = _optimizer(cfg, stage, trained, learning_rate)
  factory = step_lib.jit_train_step if jit else step_lib.make_train_step
  return factory(_loss_fn(cfg, stage, trained), tx), tx


def make_train_step(cfg: TwoTimeScaleConfig, params: Params, stage: str,
                    learning_rate: Optional[float] = None,
                    jit: bool = True) -> tuple[step_lib.StepFn, state_lib.TrainState]:
  """The stage's ``step(state, batch, rng) -> (state, metrics)`` and its initial ``TrainState``.

  Composes :func:`make_loss_fn` and :func:`stage_optimizer` with ``jaxrec.train.step``
  (``jit_train_step``: jitted, state donated; ``make_train_step`` when ``jit=False``). The step function
  is shared by calls with equal ``(cfg, stage, keys of params, learning_rate)``.
  """
  step, tx = _step_and_tx(cfg, stage, _trained(cfg, params, stage), learning_rate, jit)
  return step, state_lib.create(params, tx)


# -- host-side data preparation ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TwoTimeScaleData:
  """Static-shape training arrays built by :func:`prepare_training_data` (numpy).

  Attributes:
    num_users, num_items: index-space sizes.
    pair_user, pair_item: int32 ``[n]`` stage-1 pairs (every training interaction).
    counts: int64 ``[U]`` training interactions per user.
    active: bool ``[U]`` ``counts > t_star``.
    last_item: int32 ``[U]`` the user's last training item (-1: none).
    in_user: int32 ``[n_in]`` inactive users with >= 1 training interaction.
    in_items, in_mask: ``[n_in, max(t_star, 1)]`` their full sequences, left-aligned, time-ordered.
    in_prev: int32 ``[n_in]`` all -1 (the sequences start at the user's first interaction).
    act_user: int32 ``[n_act]`` active users.
    act_items, act_mask: ``[n_act, K]`` their last ``K`` training interactions, time-ordered.
    act_prev: int32 ``[n_act]`` the training item just before the window (-1: none).
  """

  num_users: int
  num_items: int
  pair_user: np.ndarray
  pair_item: np.ndarray
  counts: np.ndarray
  active: np.ndarray
  last_item: np.ndarray
  in_user: np.ndarray
  in_items: np.ndarray
  in_mask: np.ndarray
  in_prev: np.ndarray
  act_user: np.ndarray
  act_items: np.ndarray
  act_mask: np.ndarray
  act_prev: np.ndarray

  def group(self, group: str, rows: Optional[np.ndarray] = None) -> dict:
    """The ``group`` batch dict of the given rows (all rows when ``None``)."""
    if group == "inactive":
      out = {"items": self.in_items, "mask": self.in_mask, "prev": self.in_prev, "user": self.in_user}
    else:
      out = {"items": self.act_items, "mask": self.act_mask, "prev": self.act_prev, "user": self.act_user}
    return out if rows is None else {k: v[rows] for k, v in out.items()}


def _pad_group(users, items, mask, prev):
  """An empty group gets one fully masked row so that static-shape batches can still be drawn."""
  if users.shape[0]:
    return users, items, mask, prev
  return (np.zeros(1, np.int32), np.zeros((1, items.shape[1]), np.int32),
          np.zeros((1, items.shape[1]), bool), np.full(1, -1, np.int32))


def prepare_training_data(log: InteractionLog, t_star: int, k: int) -> TwoTimeScaleData:
  """Builds the stage-1 pairs and the two padded stage-2 groups from the training log (vectorised).

  An empty group is represented by a single fully masked row (it contributes nothing to the loss).
  """
  log = log.sorted_by_user()
  u, it = log.user.astype(np.int64), log.item.astype(np.int32)
  n, num_users = u.shape[0], log.num_users
  counts = np.bincount(u, minlength=num_users).astype(np.int64)
  start = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
  pos = np.arange(n) - start[u]
  active = counts > t_star
  has = counts > 0
  last_item = np.full(num_users, -1, np.int32)
  last_item[has] = it[start[has] + counts[has] - 1]

  in_user = np.flatnonzero(~active & has).astype(np.int32)
  row_of = np.full(num_users, -1, np.int64)
  row_of[in_user] = np.arange(in_user.shape[0])
  t_len = max(t_star, 1)
  in_items = np.zeros((in_user.shape[0], t_len), np.int32)
  in_mask = np.zeros((in_user.shape[0], t_len), bool)
  sel = ~active[u]
  in_items[row_of[u[sel]], pos[sel]] = it[sel]
  in_mask[row_of[u[sel]], pos[sel]] = True
  in_prev = np.full(in_user.shape[0], -1, np.int32)

  act_user = np.flatnonzero(active).astype(np.int32)
  row_of[:] = -1
  row_of[act_user] = np.arange(act_user.shape[0])
  off = counts - np.minimum(counts, k)
  act_items = np.zeros((act_user.shape[0], k), np.int32)
  act_mask = np.zeros((act_user.shape[0], k), bool)
  sel = active[u] & (pos >= off[u])
  col = pos[sel] - off[u[sel]]
  act_items[row_of[u[sel]], col] = it[sel]
  act_mask[row_of[u[sel]], col] = True
  a_off = off[act_user]
  act_prev = np.where(a_off > 0, it[np.maximum(start[act_user] + a_off - 1, 0)], -1)

  in_user, in_items, in_mask, in_prev = _pad_group(in_user, in_items, in_mask, in_prev)
  act_user, act_items, act_mask, act_prev = _pad_group(act_user, act_items, act_mask,
                                                       act_prev.astype(np.int32))
  return TwoTimeScaleData(
      num_users=num_users, num_items=log.num_items, pair_user=log.user.astype(np.int32), pair_item=it,
      counts=counts, active=active, last_item=last_item, in_user=in_user, in_items=in_items,
      in_mask=in_mask, in_prev=in_prev, act_user=act_user, act_items=act_items, act_mask=act_mask,
      act_prev=act_prev)


@dataclasses.dataclass(frozen=True)
class EvalSequences:
  """Later (valid then test) interactions per user, padded and time-ordered (numpy).

  Attributes:
    user: int32 ``[B]`` users with at least one later interaction.
    items, mask: ``[B, L]`` their later items in time order, left-aligned.
    row: int64 ``[B, L]`` index of each entry in ``concat_logs(later_logs)`` (-1 on padding).
    num_rows: number of rows of ``concat_logs(later_logs)``.
  """

  user: np.ndarray
  items: np.ndarray
  mask: np.ndarray
  row: np.ndarray
  num_rows: int


def prepare_eval_sequences(later_logs: Sequence[InteractionLog]) -> EvalSequences:
  """Pads each user's later interactions (e.g. ``[valid, test]``) into ``[B, L]`` time-ordered rows.

  Ties in time keep the order of ``concat_logs(later_logs)`` (valid rows before test rows).
  """
  log = concat_logs(list(later_logs))
  n = len(log)
  rows = np.arange(n)
  order = np.lexsort((rows, log.timestamp, log.user))
  u = log.user[order].astype(np.int64)
  users, first, cnt = np.unique(u, return_index=True, return_counts=True)
  user_row = np.searchsorted(users, u)
  pos = np.arange(n) - first[user_row]
  length = int(cnt.max()) if n else 1
  items = np.zeros((users.shape[0], length), np.int32)
  mask = np.zeros((users.shape[0], length), bool)
  row = np.full((users.shape[0], length), -1, np.int64)
  items[user_row, pos] = log.item[order]
  mask[user_row, pos] = True
  row[user_row, pos] = order
  return EvalSequences(user=users.astype(np.int32), items=items, mask=mask, row=row, num_rows=n)


# -- evaluation --------------------------------------------------------------------------------------


def user_states(cfg: TwoTimeScaleConfig, params: Params, data: TwoTimeScaleData,
                item_features: Optional[jax.Array] = None, batch_size: int = 256) -> dict:
  """Every user's state at the end of the training period.

  Inactive users: ``psi`` run through cell 1 over their training sequence (new users: ``psi``);
  active users: ``phi_u`` (``psi_2`` for 2-GRU) run through cell 2 over their last ``K`` interactions;
  CCF: ``phi_u``. ``x_prev`` is the user's last training item (``x_start`` / zero when none). The
  groups are run in static ``[batch_size, L]`` chunks.

  Returns:
    ``{"h": [U, d], "x_prev": [U, d], "active": bool [U]}`` (numpy).
  """
  _, x_prev = _table_and_prev(cfg, params, jnp.asarray(data.last_item), item_features)
  out = {"x_prev": np.asarray(x_prev), "active": np.asarray(data.active)}
  if not cfg.has_cells:
    return dict(out, h=np.asarray(params["user"]))
  h = np.broadcast_to(np.asarray(params["psi"]), (data.num_users, x_prev.shape[1])).copy()
  for group in ("inactive", "active"):
    g = data.group(group)
    n = g["user"].shape[0]
    valid = g["mask"].any(axis=1)
    for lo in range(0, n, batch_size):
      idx = np.arange(lo, lo + batch_size) % n
      h_final = np.asarray(_final_states(cfg, params, {k: v[idx] for k, v in g.items()}, group,
                                         item_features))
      keep = np.flatnonzero(valid[idx[: min(batch_size, n - lo)]])
      h[g["user"][idx[keep]]] = h_final[keep]
  return dict(out, h=h)


@functools.partial(jax.jit, static_argnums=(0,))
def _table_and_prev(cfg, params, last_item, item_features):
  table = item_table(cfg, params, item_features)
  start = params["x_start"] if cfg.plus else jnp.zeros((table.shape[1],), table.dtype)
  return table, jnp.where((last_item >= 0)[:, None], table[jnp.maximum(last_item, 0)], start)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _final_states(cfg, params, group_batch, group, item_features):
  return group_rollout(cfg, params, group_batch, group, item_features)[2]


def eval_rollout(cfg: TwoTimeScaleConfig, params: Params, table: jax.Array, state: Mapping[str, jax.Array],
                 items: jax.Array, mask: jax.Array):
  """Online adaptation over later interactions, no gradient step (Section 5, Figure 4).

  Each user's state is advanced by its group's cell as its later interactions arrive, in time order;
  the query for step ``t`` uses only the state before consuming ``items[:, t]``.

  Args:
    cfg: configuration.
    params: parameter pytree.
    table: ``[I, d]`` item representation table (:func:`item_table`).
    state: ``{"h": [B, d], "x_prev": [B, d], "active": bool [B]}`` (rows of :func:`user_states`).
    items, mask: ``[B, L]`` later interactions in time order.

  Returns:
    ``(queries [B, L, d], moves [B, L], new_state)``; ``queries`` are the ScoreFn ``"user_vec"`` of each
    interaction (``W^T [h ; x_prev]`` for 2TS-Plus), ``moves[b, t] = ||h_{t+1} - h_t||`` (0 on padding).
  """
  items = jnp.asarray(items)
  mask = jnp.asarray(mask)
  xs = jnp.take(table, items, axis=0)
  if not cfg.has_cells:
    qs = jnp.broadcast_to(state["h"][:, None, :], xs.shape)
    x_prev = state["x_prev"]
    return qs, jnp.zeros(mask.shape, table.dtype), dict(state, x_prev=x_prev)
  active = jnp.asarray(state["active"])

  def cell_fn(h, x):
    h_act = _cell_step(params, "cell_act", h, x)
    return jnp.where(active[:, None], h_act, _cell_step(params, "cell_in", h, x))

  qs, moves, h, xp = rollout(cfg, params, cell_fn, state["h"], state["x_prev"], xs, mask, with_moves=True)
  return qs, moves, {"h": h, "x_prev": xp, "active": active}


@dataclasses.dataclass(frozen=True)
class EvalQueries:
  """Per-row outputs of :func:`eval_query_vectors`, aligned with ``concat_logs(later_logs)`` (numpy).

  Attributes:
    user_vec: float32 ``[n, d]`` the query vector scoring each later interaction.
    move: float32 ``[n]`` ``||h_{t+1} - h_t||`` when the user consumes the interaction (Figure 4).
    seen: int64 ``[n]`` the number of the user's later interactions before this one.
    active: bool ``[n]`` whether the user is in the active group.
  """

  user_vec: np.ndarray
  move: np.ndarray
  seen: np.ndarray
  active: np.ndarray


def eval_query_vectors(cfg: TwoTimeScaleConfig, params: Params, data: TwoTimeScaleData,
                       seqs: EvalSequences, item_features: Optional[jax.Array] = None,
                       batch_size: int = 256) -> EvalQueries:
  """Query vectors for every later interaction, batched over users (static ``[batch_size, L]`` chunks)."""
  table, _ = _table_and_prev(cfg, params, jnp.asarray(data.last_item), item_features)
  states = user_states(cfg, params, data, item_features, batch_size)
  fn = _eval_rollout_jit
  n_users = seqs.user.shape[0]
  d = table.shape[1]
  user_vec = np.zeros((seqs.num_rows, d), np.float32)
  move = np.zeros(seqs.num_rows, np.float32)
  seen = np.zeros(seqs.num_rows, np.int64)
  active = np.zeros(seqs.num_rows, bool)
  for lo in range(0, n_users, batch_size):
    idx = np.arange(lo, lo + batch_size) % n_users
    users = seqs.user[idx]
    state = {k: v[users] for k, v in states.items()}
    qs, mv, _ = fn(cfg, params, table, state, seqs.items[idx], seqs.mask[idx])
    take = min(batch_size, n_users - lo)
    m = seqs.mask[idx[:take]]
    rows = seqs.row[idx[:take]][m]
    user_vec[rows] = np.asarray(qs[:take])[m]
    move[rows] = np.asarray(mv[:take])[m]
    seen[rows] = np.broadcast_to(np.arange(m.shape[1]), m.shape)[m]
    active[rows] = np.broadcast_to(data.active[users[:take]][:, None], m.shape)[m]
  return EvalQueries(user_vec=user_vec, move=move, seen=seen, active=active)


_eval_rollout_jit = jax.jit(eval_rollout, static_argnums=(0,))


def _score(table: jax.Array, queries: Mapping[str, jax.Array], items: jax.Array) -> jax.Array:
  return dot_scores(jnp.asarray(queries["user_vec"]), table, jnp.asarray(items))


def make_score_fn(table: jax.Array) -> Callable:
  """ScoreFn over queries ``{"user_vec": [B, d]}``: ``dot_scores(user_vec, table, items)``.

  Returned as ``functools.partial(_score, table)``: ``jaxrec.eval.protocols`` passes a partial's array
  arguments to its jitted kernels as arguments, so the ``[I, d]`` table is neither baked into the compiled
  evaluation as a constant nor a reason to recompile when it changes.
  """
  return functools.partial(_score, table)


# -- batches and the training driver (jaxrec.train.loop) ----------------------------------------------------


@dataclasses.dataclass
class TrainResult:
  """Output of :func:`train`.

  Attributes:
    params: the final parameter pytree (per stage the best by ``metric`` when an ``eval_fn`` is given).
    data: the prepared training arrays (reuse them for :func:`eval_query_vectors`).
    history: one dict per epoch: ``stage``, ``epoch``, ``step``, ``loss`` (mean over the epoch's steps),
      the other step metrics' means (``grad_norm``, ``ccf_loss``, ``loss_in``, ...), ``epoch_time`` and
      cumulative ``wall_time`` (seconds of training over all stages so far, excluding evaluation and the
      callback), plus what ``eval_fn`` and the callback returned.
  """

  params: Params
  data: TwoTimeScaleData
  history: list


def _epoch_order(rng: np.random.Generator, n: int, batch: int, steps: int) -> np.ndarray:
  """``[steps, batch]`` indices: concatenated permutations of ``range(n)`` (cycled when short)."""
  need = steps * batch
  reps = -(-need // n)
  order = np.concatenate([rng.permutation(n) for _ in range(reps)])[:need]
  return order.reshape(steps, batch)


def steps_per_epoch(cfg: TwoTimeScaleConfig, data: TwoTimeScaleData, stage: str) -> int:
  """Steps of one epoch: pairs / ``batch_stage1`` (stage 1, single); stage 2: the inactive group's batches
  plus the active group's batches (each group visited once, one group per step)."""
  if stage == "stage2":
    return -(-data.in_user.shape[0] // cfg.batch_inactive) - (-data.act_user.shape[0] // cfg.batch_active)
  return max(1, -(-data.pair_user.shape[0] // cfg.batch_stage1))


def bucket_width(length: int, width: int) -> int:
  """Padded length of a stage-2 batch whose longest sequence has ``length`` steps: the next power of two,
  capped at the group's width (``max(t*, 1)`` or ``K``), so a group has at most
  ``ceil(log2(width)) + 1`` batch shapes (and compiled steps)."""
  return min(width, 1 << max(int(length) - 1, 0).bit_length())


def _bucketed_plan(rng: np.random.Generator, data: TwoTimeScaleData, group: str,
                   batch: int) -> list[tuple[str, np.ndarray, int]]:
  """``(group, rows, padded length)`` per batch: a fresh permutation of the group's rows, stably sorted by
  sequence length (random order among equal lengths), cut into ``batch`` consecutive rows."""
  mask = data.in_mask if group == "inactive" else data.act_mask
  lengths = mask.sum(axis=1)
  perm = rng.permutation(lengths.shape[0])
  order = perm[np.argsort(lengths[perm], kind="stable")]
  return [(group, rows, bucket_width(lengths[rows].max(), mask.shape[1]))
          for rows in np.split(order, range(batch, order.shape[0], batch))]


def _group_batch(data: TwoTimeScaleData, group: str, rows: np.ndarray, length: int, batch: int) -> dict:
  """Rows of ``group`` trimmed to ``length`` steps (they are left-aligned) and filled up to ``batch`` rows
  with fully masked ones (item 0, prev -1, user 0), which add nothing to the loss."""
  out = {k: v[rows] for k, v in data.group(group).items()}
  out["items"], out["mask"] = out["items"][:, :length], out["mask"][:, :length]
  fill = batch - rows.shape[0]
  if fill:
    pad = {"items": np.zeros((fill, length), np.int32), "mask": np.zeros((fill, length), bool),
           "prev": np.full(fill, -1, np.int32), "user": np.zeros(fill, np.int32)}
    out = {k: np.concatenate([v, pad[k].astype(v.dtype)]) for k, v in out.items()}
  return out


def stage_batches(cfg: TwoTimeScaleConfig, data: TwoTimeScaleData, stage: str, epoch: int,
                  item_features: Optional[jax.Array] = None) -> Iterator[dict]:
  """The static-shape batches of one epoch of ``stage`` (module docstring), in an order fixed by
  ``(cfg.seed, stage, epoch)`` alone, as ``jaxrec.train.loop`` needs for exact resumption.

  * stage 1: a fresh permutation of the pairs; the last batch is filled from the next permutation.
  * stage 2: each group's rows are visited once per epoch, bucketed by length (:func:`_bucketed_plan`):
    a batch is ``batch_inactive`` (``batch_active``) rows of similar length padded to
    :func:`bucket_width` of its longest one, the group's last batch filled with fully masked rows. A step
    carries ONE group (``{"inactive": ...}`` or ``{"active": ...}``); the batches of both groups are
    shuffled together. Over an epoch this takes every step of Eq. 11 + Eq. 12 once, each group's loss
    being a mean over its batch's real steps.
  * single stage: a permutation of the pairs per step, with full-width batches of both groups cycled
    alongside (the smaller numbers of group rows are repeated to match the pair steps).
  """
  rng = np.random.default_rng([cfg.seed, STAGES.index(stage), epoch])
  extra = {} if item_features is None else {"item_features": item_features}
  steps = steps_per_epoch(cfg, data, stage)
  n_pairs = data.pair_user.shape[0]
  if stage == "stage1":
    for idx in _epoch_order(rng, n_pairs, cfg.batch_stage1, steps):
      yield {"user": data.pair_user[idx], "item": data.pair_item[idx], **extra}
    return
  if stage == "stage2":
    plan = (_bucketed_plan(rng, data, "inactive", cfg.batch_inactive)
            + _bucketed_plan(rng, data, "active", cfg.batch_active))
    sizes = {"inactive": cfg.batch_inactive, "active": cfg.batch_active}
    for i in rng.permutation(len(plan)):
      group, rows, length = plan[i]
      yield {group: _group_batch(data, group, rows, length, sizes[group]), **extra}
    return
  o_in = _epoch_order(rng, data.in_user.shape[0], cfg.batch_inactive, steps)
  o_act = _epoch_order(rng, data.act_user.shape[0], cfg.batch_active, steps)
  o_pair = _epoch_order(rng, n_pairs, cfg.batch_stage1, steps)
  for s in range(steps):
    yield {"inactive": data.group("inactive", o_in[s]), "active": data.group("active", o_act[s]),
           "pairs": {"user": data.pair_user[o_pair[s]], "item": data.pair_item[o_pair[s]]}, **extra}


def _is_scalar(v: Any) -> bool:
  return np.ndim(v) == 0 and np.issubdtype(np.asarray(v).dtype, np.number)


def _train_stage(cfg, data, feats, params, stage, rng, callback, eval_fn, metric, patience, workdir,
                 progress):
  """One ``jaxrec.train.loop.train`` call for ``stage``; returns ``(params, history entries)``."""
  step, state = make_train_step(cfg, params, stage)
  spe = steps_per_epoch(cfg, data, stage)
  epochs = {"stage1": cfg.epochs_stage1, "stage2": cfg.epochs_stage2, "single": cfg.epochs_single}[stage]
  current = {"epoch": 0}
  aside: dict = {}  # non-scalar callback values (kept in history, not in metrics.jsonl)
  clock = [time.perf_counter()]

  def batches_fn(epoch):
    current["epoch"] = epoch
    return stage_batches(cfg, data, stage, epoch, feats)

  def epoch_end(p):
    # Called by the loop at every epoch end (after it fetched the step metrics): times the epoch, then
    # runs the validation and the callback, whose time is not counted.
    jax.block_until_ready(p)
    elapsed = time.perf_counter() - clock[0]
    epoch = current["epoch"] + 1
    out = dict(eval_fn(stage, p)) if eval_fn is not None else {}
    for k, v in ((callback(stage, epoch, p) or {}) if callback is not None else {}).items():
      if _is_scalar(v):
        out[k] = v
      else:
        aside.setdefault(epoch, {})[k] = v
    out["epoch_time"] = elapsed
    clock[0] = time.perf_counter()
    return out

  loop_cfg = loop_lib.LoopConfig(
      num_epochs=epochs, log_every=spe, eval_at_epoch_end=True, metric=metric if eval_fn else None,
      mode="max", patience=patience if eval_fn else None, steps_per_epoch=spe, progress=progress)
  stage_dir = None if workdir is None else os.path.join(workdir, stage)
  best, records = loop_lib.train(loop_cfg, state, step, batches_fn, epoch_end, stage_dir, rng=rng)
  means = {r["step"]: r for r in records if r["kind"] == "train"}
  history = []
  for r in records:
    if r["kind"] != "eval":
      continue
    rec = {k: v for k, v in means.get(r["step"], {}).items() if k not in ("kind", "epoch")}
    rec.update({k: v for k, v in r.items() if k not in ("kind", "epoch", "best")})
    rec.update(aside.get(r["epoch"], {}), stage=stage, epoch=r["epoch"])
    history.append(rec)
  return best.params, history


def train(cfg: TwoTimeScaleConfig, train_log: InteractionLog,
          callback: Optional[Callable[[str, int, Params], Optional[dict]]] = None, *,
          eval_fn: Optional[Callable[[str, Params], Mapping[str, float]]] = None, metric: str = "mrr",
          patience: Optional[int] = None, workdir: Optional[str] = None,
          progress: bool = False) -> TrainResult:
  """Trains stage 1 (CCF) then stage 2 (or the single stage), each with ``jaxrec.train.loop.train``.

  Each stage is one loop run: :func:`make_train_step` (shared jitted step, frozen keys through
  ``stop_gradient`` + ``optax.set_to_zero``), :func:`stage_batches`, per-step keys
  ``fold_in(stage key, step)``, one metrics record per epoch, NaN checks naming the step. With a
  ``workdir`` each stage checkpoints into ``workdir/<stage>`` (``stage1``, ``stage2``, ``single``) at
  every epoch end; calling ``train`` again with the same arguments resumes a killed run (finished stages
  are restored, the interrupted one continues) and reaches the same parameters.

  Args:
    cfg: configuration (the variant decides the stages).
    train_log: training interactions (its ``item_features``, if any, enter as ``[x ; g(f)]``).
    callback: ``callback(stage, epoch, params) -> dict | None`` after each epoch (e.g. test MRR for
      MRR-vs-time plots); its time is not counted. The params it receives are donated to the next step:
      copy what you keep (``jax.device_get``). Scalar values also go to ``metrics.jsonl``.
    eval_fn: ``eval_fn(stage, params) -> {name: scalar}`` validation after each epoch of each stage;
      the stage keeps its best params by ``eval_fn(...)[metric]`` (larger is better) and stops early
      after ``patience`` epochs without improvement. None: the last params of each stage.
    metric: the key of ``eval_fn``'s output that selects the best params.
    patience: early-stopping patience in epochs (None: never stop early).
    workdir: checkpoint / ``metrics.jsonl`` directory (None: nothing written).
    progress: tqdm progress bars.

  Returns:
    :class:`TrainResult`.
  """
  data = prepare_training_data(train_log, cfg.t_star, cfg.k)
  feats = None if train_log.item_features is None else jnp.asarray(train_log.item_features)
  feat_dim = 0 if feats is None else feats.shape[1]
  k_init, k1, k2 = jax.random.split(jax.random.key(cfg.seed), 3)
  params = init_params(cfg, k_init, data.num_users, data.num_items, feat_dim)
  if cfg.variant == "single-stage":
    stages = (("single", k1),)
  else:
    stages = (("stage1", k1), ("stage2", k2)) if cfg.has_cells else (("stage1", k1),)
  history: list = []
  for stage, key in stages:
    params, recs = _train_stage(cfg, data, feats, params, stage, key, callback, eval_fn, metric, patience,
                                workdir, progress)
    history += recs
  wall = 0.0
  for rec in history:
    wall += rec["epoch_time"]
    rec["wall_time"] = wall
  return TrainResult(params=params, data=data, history=history)
