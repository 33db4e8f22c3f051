"""2TS training: the offer-set losses (Eq. 10-12), per-stage learners with frozen keys, and the stages.

* **stage 1, CCF (Eq. 10)**: the softmax over an offer set ``O(u, i)`` (the clicked item plus ``p``
  uniformly sampled other items), order ignored::

    L = 1/|D| sum_{(u,i) in D} [ log sum_{j in O(u,i)} exp(phi_u^T x_j) - phi_u^T x_i ]

* **stage 2 (Eq. 11 + 12)**: ``L_in + L_act``, the same offer-set softmax on every step of the two cells'
  rollouts (:mod:`.model`), the state before consuming ``i_t`` predicting ``i_t``. The item representation
  and the active users' ``phi_u`` are frozen.
* **single stage** (2TS-SingleStage, Table 3): ``L_in + L_act + w * L_CCF`` on every parameter jointly.
  Departure: the CCF term (``single_stage_ccf_weight``, default 1) is our reading of "all parameters are
  trained together"; without it the active users' ``phi_u`` would only ever see their last K interactions.

Every offer-set loss is :func:`jaxrec.models.losses.sampled_softmax` (positive in column 0). Departure:
offer sets are sampled with replacement inside the jitted step, uniformly over the items other than the
positive (the paper does not say whether the ``p`` items may repeat).

Each stage is a :func:`jaxrec.train.learner.gradient_learner` whose transform is ``optax.multi_transform``
(Adam on the stage's trained keys, ``optax.set_to_zero`` on the frozen ones, which stay bit-identical);
frozen keys also enter the loss through ``stop_gradient`` so no scatter into the frozen ``[U, d]`` /
``[I, d]`` tables is computed. Learners are cached per :meth:`TwoTimeScaleConfig.static` (no seed, no
epochs): another seed or budget does not recompile. :func:`train` runs the stages with
:func:`jaxrec.train.stages.run_stages` (``workdir/stage1``, ``workdir/stage2`` or ``workdir/single``,
resume, keep-best and early stopping on an ``eval_fn``, NaN checks, ``metrics.jsonl``).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import optax

from jaxrec.data import shards as shards_lib
from jaxrec.data.log import InteractionLog
from jaxrec.methods.two_time_scale import batches as batches_lib
from jaxrec.methods.two_time_scale import model as model_lib
from jaxrec.methods.two_time_scale.model import Batch, Params, TwoTimeScaleConfig
from jaxrec.models import losses
from jaxrec.train import learner as learner_lib
from jaxrec.train import loop as loop_lib
from jaxrec.train import sparse as sparse_lib
from jaxrec.train import stages as stages_lib
from jaxrec.train import state as state_lib


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


def offer_set_scores(query: jax.Array, pos_vec: jax.Array, neg_vecs: jax.Array) -> jax.Array:
  """``[..., 1 + p]`` offer-set scores ``q^T x_j``, the clicked item first (``sampled_softmax``'s layout).

  Args:
    query: ``[..., d]`` user representation scoring the interaction.
    pos_vec: ``[..., d]`` clicked item's representation.
    neg_vecs: ``[..., p, d]`` sampled items' representations.
  """
  pos = jnp.sum(query * pos_vec, axis=-1)
  neg = jnp.einsum("...d,...pd->...p", query, neg_vecs)
  return jnp.concatenate([pos[..., None], neg], axis=-1)


def offer_set_loss(scores: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
  """Mean over the (unmasked) interactions of ``log sum_{j in O} exp(s_j) - s_0`` (Eq. 10-12).

  ``scores`` ``[..., 1 + p]`` from :func:`offer_set_scores`; ``mask`` ``[...]``. One call of
  :func:`jaxrec.models.losses.sampled_softmax` on the flattened interactions.
  """
  flat = scores.reshape(-1, scores.shape[-1])
  return losses.sampled_softmax(flat, None if mask is None else jnp.reshape(mask, (-1,)))


def ccf_loss(cfg: TwoTimeScaleConfig, params: Params, batch: Batch, rng: jax.Array,
             negatives: Optional[jax.Array] = None) -> tuple[jax.Array, dict]:
  """Stage-1 CCF loss (Eq. 10), mean over the batch's (unmasked) (user, item) pairs.

  Args:
    cfg: the configuration (``num_offered`` is ``p``).
    params: parameter pytree.
    batch: ``{"user": [B], "item": [B]}`` (+ optional ``"item_features"``, and ``"mask"`` [B] marking the
      real pairs of a filled last batch, as :func:`jaxrec.data.shards.epoch_batches` yields).
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
  scores = offer_set_scores(q, model_lib.item_vectors(cfg, params, item, feats),
                            model_lib.item_vectors(cfg, params, negatives, feats))
  loss = offer_set_loss(scores, batch.get("mask"))
  return loss, {"ccf_loss": loss}


def _group_loss(cfg, params, group_batch, group, feats, rng, negatives=None):
  qs, xs, _, _ = model_lib.group_rollout(cfg, params, group_batch, group, feats)
  items = jnp.asarray(group_batch["items"])
  if negatives is None:
    negatives = sample_offer_negatives(rng, items, params["item"].shape[0], cfg.num_offered)
  mask = jnp.asarray(group_batch["mask"])
  scores = offer_set_scores(qs, xs, model_lib.item_vectors(cfg, params, negatives, feats))
  return offer_set_loss(scores, mask), jnp.sum(mask.astype(jnp.float32))


def stage2_loss(cfg: TwoTimeScaleConfig, params: Params, batch: Batch, rng: jax.Array,
                negatives: Optional[Mapping[str, jax.Array]] = None) -> tuple[jax.Array, dict]:
  """Stage-2 loss ``L_in + L_act`` (Eq. 11 + Eq. 12), each a mean over its group's unmasked steps.

  Args:
    cfg: configuration.
    params: parameter pytree.
    batch: the stage-2 batch (:mod:`.batches`); either group may be absent (the one-group steps of
      :func:`.batches.stage_batches`), it then adds ``0`` to the loss and ``0`` to its ``steps_*`` count.
    rng: key for the offer sets.
    negatives: optional ``{"inactive": [B_in, L, p], "active": [B_act, K, p]}`` explicit offered items.

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
    else:  # a one-group step: the other group contributes nothing
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


# -- learners: the shared gradient learner with per-stage freezing ------------------------------------


_LOSSES = {"stage1": ccf_loss, "stage2": stage2_loss, "single": single_stage_loss}


def _trained(params: Params, stage: str) -> frozenset:
  return frozenset(model_lib.trainable_keys(None, params, stage))


def _loss_fn(cfg: TwoTimeScaleConfig, stage: str, trained: frozenset):
  loss = functools.partial(_LOSSES[stage], cfg)

  def loss_fn(p: Params, batch: Batch, rng: jax.Array):
    p = {k: v if k in trained else jax.tree.map(jax.lax.stop_gradient, v) for k, v in p.items()}
    return loss(p, batch, rng)

  return loss_fn


def stage_loss_fn(cfg: TwoTimeScaleConfig, params: Params, stage: str):
  """``loss_fn(params, batch, rng) -> (loss, aux)`` of ``stage``, the keys it does not train entering
  through ``stop_gradient`` (their gradient is an exact zero)."""
  return _loss_fn(cfg, stage, _trained(params, stage))


def stage_optimizer(cfg: TwoTimeScaleConfig, params: Params, stage: str,
                    learning_rate: Optional[float] = None) -> optax.GradientTransformation:
  """Adam on the keys trained in ``stage``, ``optax.set_to_zero`` on the frozen ones.

  ``optax.multi_transform`` keeps Adam moments only for the trained sub-tree, and the frozen leaves get an
  update of exactly ``0``, so ``optax.apply_updates`` leaves them bit-identical (``x + 0.0 == x``).

  Args:
    cfg: configuration (``lr_stage1`` / ``lr_stage2`` / ``lr_single``; in stage 2 ``lr_inactive`` and
      ``lr_active`` for the keys of each group, :data:`.model.GROUP_KEYS`, when they differ).
    params: the parameter pytree (only its keys are read).
    stage: ``"stage1"``, ``"stage2"`` or ``"single"``.
    learning_rate: overrides the configured learning rate of the stage.
  """
  return _optimizer(cfg, stage, _trained(params, stage), learning_rate)


def _optimizer(cfg, stage, trained, learning_rate):
  lr = learning_rate if learning_rate is not None else {
      "stage1": cfg.lr_stage1, "stage2": cfg.lr_stage2, "single": cfg.lr_single}[stage]
  txs = {"trained": state_lib.make_optimizer("adam", lr), "frozen": optax.set_to_zero()}
  group_of = {}
  if stage == "stage2" and (cfg.lr_inactive or cfg.lr_active):
    # Implication 2: each group's keys (cell, initial state, gate) get their own rate (0: the stage's).
    group_of = {k: g for g, keys in model_lib.GROUP_KEYS.items() for k in keys}
    txs["inactive"] = state_lib.make_optimizer("adam", cfg.lr_inactive or lr)
    txs["active"] = state_lib.make_optimizer("adam", cfg.lr_active or lr)

  def label(k):
    return "frozen" if k not in trained else group_of.get(k, "trained")

  def labels(p):
    return {k: jax.tree.map(lambda _, k=k: label(k), v) for k, v in p.items()}

  return optax.multi_transform(txs, labels)


@functools.lru_cache(maxsize=64)
def _cached_learner(static_cfg: TwoTimeScaleConfig, stage: str, trained: frozenset,
                    learning_rate: Optional[float]) -> learner_lib.Learner:
  return learner_lib.gradient_learner(_loss_fn(static_cfg, stage, trained),
                                      _optimizer(static_cfg, stage, trained, learning_rate))


def stage_learner(cfg: TwoTimeScaleConfig, params: Params, stage: str,
                  learning_rate: Optional[float] = None) -> learner_lib.Learner:
  """The :class:`~jaxrec.train.learner.Learner` of ``stage``: the stage's loss, frozen keys through
  ``stop_gradient``, then :func:`stage_optimizer`.

  The same learner object (so the same jitted update, :func:`jaxrec.train.learner.jit_update`) is returned
  for equal ``(cfg.static(), stage, keys of params, learning_rate)``: another seed or number of epochs does
  not recompile the step.
  """
  return _cached_learner(cfg.static(), stage, _trained(params, stage), learning_rate)


def stage_names(cfg: TwoTimeScaleConfig) -> tuple[str, ...]:
  """The stages of ``cfg.variant``: ``("single",)``, ``("stage1",)`` (CCF) or ``("stage1", "stage2")``."""
  if cfg.variant == "single-stage":
    return ("single",)
  return ("stage1", "stage2") if cfg.has_cells else ("stage1",)


def _epochs(cfg: TwoTimeScaleConfig, stage: str) -> int:
  return {"stage1": cfg.epochs_stage1, "stage2": cfg.epochs_stage2, "single": cfg.epochs_single}[stage]


@dataclasses.dataclass
class TrainResult:
  """Output of :func:`train`.

  Attributes:
    params: the final parameter pytree (per stage the best by ``metric`` when an ``eval_fn`` is given).
    data: the prepared training arrays (reuse them for :func:`.rollout.eval_query_vectors`).
    history: one dict per epoch: ``stage``, ``epoch``, ``step``, ``loss`` (mean over the epoch's steps),
      the other step metrics' means (``grad_norm``, ``ccf_loss``, ``loss_in``, ...), ``epoch_time`` and
      cumulative ``wall_time`` (seconds of training over all stages so far, excluding evaluation), plus
      what ``eval_fn`` returned.
  """

  params: Params
  data: batches_lib.TwoTimeScaleData
  history: list


def train(cfg: TwoTimeScaleConfig, train_log: Union[InteractionLog, shards_lib.ShardedLog], *,
          eval_fn: Optional[Callable[[str, Params], Mapping[str, float]]] = None,
          metric: Optional[str] = "mrr",
          patience: Optional[int] = None, time_limit: Optional[float] = None,
          workdir: Optional[str] = None, progress: bool = False,
          stage1_params: Optional[Params] = None,
          stage1_optimizer: Optional[str] = None) -> TrainResult:
  """Trains stage 1 (CCF) then stage 2 (or the single stage) with :func:`jaxrec.train.stages.run_stages`.

  Each stage is one :class:`~jaxrec.train.stages.Stage`: :func:`stage_learner`,
  :func:`.batches.stage_batches`, one metrics record and one evaluation per epoch, NaN checks naming the
  step. With a ``workdir`` each stage checkpoints into ``workdir/<stage>`` at every epoch end; calling
  ``train`` again with the same arguments resumes a killed run and reaches the same parameters.

  Args:
    cfg: configuration (the variant decides the stages).
    train_log: training interactions (its ``item_features``, if any, enter as ``[x ; g(f)]``), in memory
      or on disk (:class:`jaxrec.data.shards.ShardedLog`: a log larger than RAM). On disk, stage 1 streams
      its batches from the shards (:func:`jaxrec.data.shards.epoch_batches`: shuffled within windows of
      shards, the last batch filled with masked rows) and stage 2's groups are built per block of users
      (:func:`.batches.prepare_sharded_training_data`); the single-stage variant needs a log in memory.
    eval_fn: ``eval_fn(stage, params) -> {name: scalar}`` validation after each epoch of each stage;
      the stage keeps its best params by ``eval_fn(...)[metric]`` (larger is better) and stops early
      after ``patience`` epochs without improvement. None: the last params of each stage. The params it
      receives are donated to the next step: copy what you keep (``jax.device_get``).
    metric: the key of ``eval_fn``'s output that selects the best params (None: the last params).
    patience: early-stopping patience in epochs (None: never stop early).
    time_limit: per stage, stop after the first epoch end past this many seconds of the stage's run
      (:class:`jaxrec.train.loop.LoopConfig` ``time_limit``; None: no limit).
    workdir: checkpoint / ``metrics.jsonl`` directory (None: nothing written).
    progress: tqdm progress bars.
    stage1_params: trained stage-1 parameters (``"user"``, ``"item"``, ``"feat_net"``) of the same data and
      stage-1 configuration, e.g. the ``"ccf"`` variant's: stage 1 is skipped and stage 2 starts from them
      (the two-stage variants share one stage 1). Stage 2 then runs exactly as after its own stage 1 (same
      keys); the history holds stage 2 only.
    stage1_optimizer: None (the paper's dense Adam) or a row-sparse table optimizer for stage 1
      (:func:`sparse_stage1_learner`: ``"lazy-adam"``, ``"rowwise-adagrad"``, ``"adagrad"``), whose step
      cost does not grow with the number of users and items; recorded in the workdir's run config.

  Returns:
    :class:`TrainResult`.
  """
  sharded = isinstance(train_log, shards_lib.ShardedLog)
  if sharded and cfg.variant == "single-stage":
    raise ValueError("train: the single-stage variant needs the log in memory (ShardedLog.to_log())")
  if sharded:
    data = batches_lib.prepare_sharded_training_data(train_log, cfg.t_star, cfg.k)
    feats = train_log.item_features()
  else:
    data = batches_lib.prepare_training_data(train_log, cfg.t_star, cfg.k)
    feats = train_log.item_features
  feats = None if feats is None else jnp.asarray(feats)
  feat_dim = 0 if feats is None else feats.shape[1]
  k_init, k_train = jax.random.split(jax.random.key(cfg.seed))
  params = model_lib.init_params(cfg, k_init, data.num_users, data.num_items, feat_dim)
  names = stage_names(cfg)
  if stage1_optimizer is not None and stage1_optimizer not in sparse_lib.OPTIMIZERS:
    raise ValueError(f"stage1_optimizer must be one of {sorted(sparse_lib.OPTIMIZERS)}, "
                     f"got {stage1_optimizer!r}")
  if stage1_optimizer is not None and "stage1" not in names:
    raise ValueError(f"stage1_optimizer: variant {cfg.variant!r} has no stage 1")
  if stage1_params is not None:
    if names != ("stage1", "stage2"):
      raise ValueError(f"stage1_params: variant {cfg.variant!r} has no separate stage 2")
    given = {k: stage1_params[k] for k in model_lib.STAGE1_KEYS if k in stage1_params}
    want = {k: params[k] for k in model_lib.STAGE1_KEYS if k in params}
    if jax.tree.map(jnp.shape, given) != jax.tree.map(jnp.shape, want):
      raise ValueError("stage1_params do not match this data and configuration (keys or shapes)")
    params = dict(params, **jax.tree.map(jnp.array, given))
    names = ("stage2",)
  stages = []
  for name in names:
    streamed = sharded and name == "stage1"
    spe = (shards_lib.steps_per_epoch(train_log, cfg.batch_stage1) if streamed
           else batches_lib.steps_per_epoch(cfg, data, name))
    clock = [None]

    def batches_fn(epoch, name=name, clock=clock, streamed=streamed):
      clock[0] = time.perf_counter()
      if streamed:
        extra = {} if feats is None else {"item_features": feats}
        return ({**b, **extra} for b in shards_lib.epoch_batches(train_log, cfg.batch_stage1, seed=cfg.seed,
                                                                 epoch=epoch))
      return batches_lib.stage_batches(cfg, data, name, epoch, feats)

    def stage_eval(p, name=name, clock=clock):
      # Called by the loop at every epoch end (after it fetched the step metrics): times the epoch,
      # then validates (not counted).
      jax.block_until_ready(p)
      elapsed = time.perf_counter() - clock[0]
      out = dict(eval_fn(name, p)) if eval_fn is not None else {}
      out["epoch_time"] = elapsed
      return out

    loop_cfg = loop_lib.LoopConfig(
        num_epochs=_epochs(cfg, name), log_every=spe, eval_at_epoch_end=True,
        metric=metric if eval_fn else None, mode="max",
        patience=patience if (eval_fn and metric) else None, time_limit=time_limit,
        steps_per_epoch=spe, progress=progress)
    # The learner depends on the keys of the params entering the stage: those of `params` (stage 2
    # trains no new keys; every key exists from init).
    # The workdir remembers the config (and the data's size) it was trained with; a resume with
    # another one stops with one line (jaxrec.train.loop.check_run_config).
    run_config = {"tts": dataclasses.asdict(cfg), "num_users": data.num_users,
                  "num_items": data.num_items,
                  "train_pairs": train_log.num_rows if sharded else int(data.pair_user.shape[0])}
    learner = stage_learner(cfg, params, name)
    if name == "stage1" and stage1_optimizer is not None:
      learner = sparse_stage1_learner(cfg.static(), stage1_optimizer, with_features=feats is not None)
      run_config["stage1_optimizer"] = stage1_optimizer
    stages.append(stages_lib.Stage(name=name, learner=learner,
                                   batches_fn=batches_fn, config=loop_cfg, eval_fn=stage_eval,
                                   run_config=run_config))
  params, histories = stages_lib.run_stages(stages, params, rng=k_train, workdir=workdir,
                                            first_index=stage_names(cfg).index(names[0]))
  history = []
  for name in names:
    records = histories[name]
    means = {r["step"]: r for r in records if r["kind"] == "train"}
    for r in records:
      if r["kind"] != "eval":
        continue
      rec = {k: v for k, v in means.get(r["step"], {}).items() if k not in ("kind", "epoch")}
      rec.update({k: v for k, v in r.items() if k not in ("kind", "epoch", "best")})
      rec.update(stage=name, epoch=r["epoch"])
      history.append(rec)
  wall = 0.0
  for rec in history:
    wall += rec["epoch_time"]
    rec["wall_time"] = wall
  return TrainResult(params=params, data=data, history=history)


@functools.lru_cache(maxsize=16)
def sparse_stage1_learner(cfg: TwoTimeScaleConfig, optimizer: str = "lazy-adam",
                          learning_rate: Optional[float] = None,
                          with_features: bool = False, dense_optimizer: str = "adam") -> learner_lib.Learner:
  """Stage 1 (CCF, Eq. 10) with the ``"user"`` and ``"item"`` tables updated row-sparsely
  (:mod:`jaxrec.train.sparse`: ``optimizer`` ``"lazy-adam"``, ``"rowwise-adagrad"`` or ``"adagrad"``),
  ``feat_net`` by dense Adam; the per-step cost grows with the batch, not with ``U`` or ``I``.

  The offer sets are drawn exactly as in :func:`ccf_loss` (same key, same call), so with ``"adagrad"``
  this reaches the same parameters as :func:`stage_learner` with ``optax.adagrad`` would. Departure:
  ``"lazy-adam"`` is not the paper's dense Adam (rows a batch misses do not move by their momentum).
  Cached on its arguments; pass ``cfg.static()`` for one compiled step across seeds and budgets.
  ``with_features``: the batches carry ``"item_features"`` (gathered per step like the tables), and
  ``feat_net`` is trained by ``dense_optimizer`` (:func:`jaxrec.train.state.make_optimizer`'s name). The
  other keys of a two-stage variant (the stage-2 cells, ``psi``, ...) stay bit-identical.
  """
  lr = cfg.lr_stage1 if learning_rate is None else learning_rate
  lookups = sparse_lib.RowLookups(
      groups=(("user", ("user",)), ("item", ("item", "negatives"))),
      tables=(("user", "user"), ("item", "item")),
      batch_tables=(("item_features", "item"),) if with_features else (), mask="mask")

  def prepare(params, batch, rng):
    item = jnp.asarray(batch["item"])
    return dict(batch, negatives=sample_offer_negatives(rng, item, params["item"].shape[0], cfg.num_offered))

  def make_loss(sizes):
    del sizes  # ccf_loss reads no table size once the offer sets are given

    def loss_fn(params, batch, rng):
      return ccf_loss(cfg, params, batch, rng, negatives=batch["negatives"])

    return loss_fn

  # The dense rest (row_sparse_learner passes it flat, keyed by path tuples): feat_net trained, every other
  # key (a two-stage variant's stage-2 keys) frozen, as in stage_optimizer (no moments, an update of 0).
  dense_tx = optax.multi_transform(
      {"trained": state_lib.make_optimizer(dense_optimizer, lr), "frozen": optax.set_to_zero()},
      lambda flat: {path: "trained" if path[0] == "feat_net" else "frozen" for path in flat})
  return sparse_lib.row_sparse_learner(make_loss, lookups, sparse_lib.get(optimizer, lr), dense_tx,
                                       prepare=prepare)
