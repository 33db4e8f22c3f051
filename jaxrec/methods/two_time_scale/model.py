"""2TS model: configuration, parameters, item vectors, the two cells, queries and the ScoreFn.

The neural 2TS model (paper 000, Section 3.1; equations in ``/work/shared/papers/README.md``):

* **CCF (Eq. 10)**: transductive user embeddings ``phi_u`` ``[U, d]`` and item representations
  ``[x_i ; g(f_i)]`` ``[I, d]`` (Section 3.3: ``g`` a small MLP of the item features).
* **the two cells (Eq. 8, 9)**::

    inactive (T <= t*):  h_0 = psi;    h_{t+1} = RNNcell_1(h_t, x_{i_t})   over all T <= t* interactions
    active   (T >  t*):  h_0 = phi_u;  h_{t+1} = RNNcell_2(h_t, x_{i_t})   over the last K interactions

  The query scoring step ``t`` is the state *before* consuming ``i_t`` (:func:`rollout`).
* **2TS-Plus (Section 3.3)** scores with ``W^T [h_t ; x_{i_{t-1}}]``. Departure from the paper: ``W``
  ``[2d, d]`` is learned in stage 2 only, initialised to ``[I ; 0]`` so that stage 2 starts from the CCF
  scores, and a learned ``x_start`` (zero-initialised) stands for the previous item of a user who has
  none (the paper does not say what ``x_{i_0}`` is).

Parameters are one flat dict pytree::

  "user" [U, d], "item" [I, d_id], "feat_net" (g, only with item features)       -- stage 1
  "cell_in", "cell_act" (flax GRUCell params), "psi" [d], "psi_act" [d] (2-gru),
  "gate_in", "gate_act" [d] (cell="residual"), "w" [2d, d], "x_start" [d] (2ts-plus) -- stage 2

with ``d = d_id + d_feat`` when item features ``[I, f]`` are given, ``d = d_id`` otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.models.common import dot_scores

Params = dict
Batch = Mapping[str, Any]

VARIANTS = ("2ts", "2ts-plus", "single-stage", "2-gru", "ccf")
CELLS = ("gru", "keep-gate", "residual")
STAGE2_STEPS = ("one-group", "mixed")
STAGE1_KEYS = ("user", "item", "feat_net")
# Stage-2 keys of each user group (the rest, the 2TS-Plus head, is shared by both groups).
GROUP_KEYS = {"inactive": ("cell_in", "psi", "gate_in"), "active": ("cell_act", "psi_act", "gate_act")}


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
    cell: how the two cells start (:func:`cell_step`): ``"gru"``, flax's default-initialised GRU cell
      (the paper's ``RNNcell``; its first step replaces much of ``h_0 = phi_u``); ``"keep-gate"``, the
      same cell with the update gate's bias set to ``keep_gate_bias`` so that ``z = sigmoid(bias)`` keeps
      most of the state at the start; ``"residual"``, ``h' = h + s * (GRU(h, x) - h)`` with a learned
      per-dimension ``s`` initialised to 0, so every cell is exactly the identity at step 0 and stage 2
      starts from the CCF scores ("the RNN adapts the long-term embedding", Section 3.1).
    keep_gate_bias: the update-gate bias of ``cell="keep-gate"``.
    stage2_steps: ``"one-group"``, each stage-2 step carries one group's batch (each group's rows once
      per epoch); ``"mixed"``, every step carries a batch of both groups and minimises ``L_in + L_act``
      (Eq. 11 + 12), an epoch taking as many steps as the larger group has batches (the smaller group's
      rows cycled, so the inactive cell gets as many updates as the active one).
    lr_inactive, lr_active: stage-2 Adam learning rates of each group's keys (:data:`GROUP_KEYS`);
      ``0`` means ``lr_stage2``. Implication 2 of the paper sets the two step sizes apart
      (``gamma_act / gamma_in``, :mod:`theory.two_time_scale`).
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
  cell: str = "gru"
  keep_gate_bias: float = 3.0
  stage2_steps: str = "one-group"
  lr_inactive: float = 0.0
  lr_active: float = 0.0
  seed: int = 0

  def __post_init__(self):
    if self.variant not in VARIANTS:
      raise ValueError(f"TwoTimeScaleConfig.variant must be one of {VARIANTS}, got {self.variant!r}")
    if self.cell not in CELLS:
      raise ValueError(f"TwoTimeScaleConfig.cell must be one of {CELLS}, got {self.cell!r}")
    if self.stage2_steps not in STAGE2_STEPS:
      raise ValueError(f"TwoTimeScaleConfig.stage2_steps must be one of {STAGE2_STEPS}, got "
                       f"{self.stage2_steps!r}")
    if self.lr_inactive < 0 or self.lr_active < 0:
      raise ValueError("TwoTimeScaleConfig: lr_inactive and lr_active must be >= 0 (0: lr_stage2)")
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

  def static(self) -> "TwoTimeScaleConfig":
    """This config without the fields that change no compiled function (seed, epochs): the cache key of
    the learners, so another seed or budget reuses the compiled updates."""
    return dataclasses.replace(self, seed=0, epochs_stage1=0, epochs_stage2=0, epochs_single=0)


class FeatureNet(nn.Module):
  """``g(f_i)`` of Section 3.3: a small MLP from item features to a ``d_feat`` embedding."""

  hidden: int
  out: int

  @nn.compact
  def __call__(self, f):
    return nn.Dense(self.out)(nn.relu(nn.Dense(self.hidden)(f)))


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
    for key, k in (("cell_in", ks[3]), ("cell_act", ks[4])):
      params[key] = cell.init(k, zeros, zeros)["params"]
      if cfg.cell == "keep-gate":  # z = sigmoid(W_iz x + b_iz + W_hz h); h' = (1 - z) n + z h
        params[key]["iz"]["bias"] = jnp.full((d,), cfg.keep_gate_bias, params[key]["iz"]["bias"].dtype)
    if cfg.cell == "residual":
      params["gate_in"] = jnp.zeros((d,))
      params["gate_act"] = jnp.zeros((d,))
    params["psi"] = cfg.init_scale * jax.random.normal(ks[5], (d,))
    if cfg.variant == "2-gru":
      params["psi_act"] = cfg.init_scale * jax.random.normal(ks[6], (d,))
    if cfg.plus:
      params["w"] = jnp.concatenate([jnp.eye(d), jnp.zeros((d, d))], axis=0)
      params["x_start"] = jnp.zeros((d,))
  return params


def trainable_keys(cfg: TwoTimeScaleConfig, params: Params, stage: str) -> tuple[str, ...]:
  """Keys of ``params`` trained in ``stage`` (``"stage1"``, ``"stage2"`` or ``"single"``)."""
  del cfg
  if stage == "stage1":
    return tuple(k for k in STAGE1_KEYS if k in params)
  if stage == "stage2":
    return tuple(k for k in params if k not in STAGE1_KEYS)
  if stage == "single":
    return tuple(params)
  raise ValueError(f"unknown stage {stage!r}")


def item_vectors(cfg: TwoTimeScaleConfig, params: Params, idx: jax.Array,
                 item_features: Optional[jax.Array] = None) -> jax.Array:
  """Item representations ``[x_i ; g(f_i)]`` (Section 3.3) of the indices ``idx`` -> ``idx.shape + (d,)``.

  ``g`` runs once per reference, or, when ``idx`` holds at least as many references as there are items
  (a stage-2 batch, or stage 1's offer sets on a small catalogue), once per item and is then gathered:
  the same values and gradients, at the cost of ``I`` rows instead of ``idx.size`` (decided from the
  static shapes)."""
  x = jnp.take(params["item"], idx, axis=0)
  if "feat_net" in params:
    if item_features is None:
      raise ValueError("these parameters have a feature network: pass item_features")
    net = FeatureNet(cfg.feat_hidden, cfg.d_feat)
    if idx.size >= item_features.shape[0]:
      g = jnp.take(net.apply({"params": params["feat_net"]}, item_features), idx, axis=0)
    else:
      g = net.apply({"params": params["feat_net"]}, jnp.take(item_features, idx, axis=0))
    x = jnp.concatenate([x, g], axis=-1)
  return x


def item_table(cfg: TwoTimeScaleConfig, params: Params, item_features: Optional[jax.Array] = None):
  """The full item representation table ``[I, d]`` (for ``dot_scores`` and evaluation)."""
  return item_vectors(cfg, params, jnp.arange(params["item"].shape[0]), item_features)


# -- the two cells -----------------------------------------------------------------------------------


GATES = {"cell_in": "gate_in", "cell_act": "gate_act"}


def cell_step(params: Params, key: str, h: jax.Array, x: jax.Array) -> jax.Array:
  """``h' = RNNcell(h, x)`` with the flax GRUCell whose params are ``params[key]``.

  With the residual cell (``cfg.cell == "residual"``: a ``gate_in`` / ``gate_act`` vector ``s`` in
  ``params``) ``h' = h + s * (GRU(h, x) - h)``, the identity while ``s = 0``. The keep-gate cell is the
  plain GRU with another initial bias (:func:`init_params`).
  """
  new_h, _ = nn.GRUCell(features=h.shape[-1]).apply({"params": params[key]}, h, x)
  gate = GATES[key]
  if gate in params:
    new_h = h + params[gate] * (new_h - h)
  return new_h


def query(cfg: TwoTimeScaleConfig, params: Params, h: jax.Array, x_prev: jax.Array) -> jax.Array:
  """``h_t`` (2TS) or ``W^T [h_t ; x_{i_{t-1}}]`` (2TS-Plus, Section 3.3)."""
  if cfg.plus:
    return jnp.concatenate([h, x_prev], axis=-1) @ params["w"]
  return h


def prev_vectors(cfg: TwoTimeScaleConfig, params: Params, prev: jax.Array,
                 feats: Optional[jax.Array]) -> jax.Array:
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
    q = query(cfg, params, h, xp)
    h_new = jnp.where(m[:, None], cell_fn(h, x), h)
    xp = jnp.where(m[:, None], x, xp)
    move = jnp.linalg.norm(h_new - h, axis=-1) if with_moves else None
    return (h_new, xp), (q, move)

  (h, xp), (qs, moves) = jax.lax.scan(body, (h0, x_prev0), (jnp.swapaxes(xs, 0, 1), jnp.swapaxes(mask, 0, 1)))
  qs = jnp.swapaxes(qs, 0, 1)
  moves = None if moves is None else jnp.swapaxes(moves, 0, 1)
  return qs, moves, h, xp


def initial_state(cfg: TwoTimeScaleConfig, params: Params, group_batch: Batch, group: str) -> jax.Array:
  """``h_0``: ``psi`` (inactive), ``phi_u`` (active) or ``psi_2`` (active, 2-GRU)."""
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
  x_prev0 = prev_vectors(cfg, params, jnp.asarray(group_batch["prev"]), item_features)
  h0 = initial_state(cfg, params, group_batch, group)
  qs, _, h, xp = rollout(cfg, params, functools.partial(cell_step, params, key), h0, x_prev0, xs,
                         jnp.asarray(group_batch["mask"]))
  return qs, xs, h, xp


# -- scoring -----------------------------------------------------------------------------------------


def table_scores(table: jax.Array, queries: Mapping[str, jax.Array], items: jax.Array) -> jax.Array:
  """The 2TS ScoreFn ``score_fn(params, queries, items)`` with ``params`` = the item table ``[I, d]``.

  The queries carry the rolled-out query vector ``"user_vec"`` ``[B, d]`` (:mod:`.rollout`); scores are
  ``dot_scores(user_vec, table, items)``. Module-level, so the evaluator's jit (``score_fn`` static)
  compiles once for every epoch and variant of the same shapes.
  """
  return dot_scores(jnp.asarray(queries["user_vec"]), table, jnp.asarray(items))
