"""Fit a registered base model on a split: examples, per-epoch batches, validation, the loop.

This composes the shared pieces (``jaxrec.data.samplers`` for windows and negatives,
``jaxrec.models.registry`` for the model, ``jaxrec.train.loop`` for the loop and checkpoints,
``jaxrec.eval`` for validation) so that every experiment trains base models the same way:

* ``"user"`` models train on (user, positive) pairs of the training log;
* ``"sequence"`` models on every training interaction that has at least one earlier interaction of its
  user, as a target exactly once:

  - all-position models (``ModelSpec.all_positions``: GRU4Rec, SASRec, as their authors train them):
    each user's training sequence is cut from the end backwards into chunks of ``history_len`` targets
    (:func:`sequence_chunks`); a chunk is ``history_len + 1`` consecutive items, input ``s_1 .. s_L``
    and targets ``s_2 .. s_{L+1}``, consecutive chunks sharing one item (the last target of the earlier
    chunk is the first input of the next); the most recent chunk is full, the earliest left-padded.
    One encoder pass scores up to ``L`` targets;
  - other sequence models (Caser, SumPooling, or ``FitConfig.all_positions=False``): one example per
    target, with the last ``history_len`` earlier items as input (``samplers.last_windows``);
* negatives are drawn per epoch from ``np.random.default_rng([seed, epoch])``, excluding the user's
  training positives (per position for all-position examples), so data order and sampling depend only
  on (seed, epoch) and resumption is exact.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from typing import Any, Mapping, Optional

from absl import logging
import jax
import numpy as np

from jaxrec.data import order as order_lib
from jaxrec.data import samplers
from jaxrec.data.log import InteractionLog, concat_logs
from jaxrec.eval import protocols as protocols_lib
from jaxrec.eval.queries import Queries
from jaxrec.models import registry
from jaxrec.train import loop as loop_lib
from jaxrec.train import state as state_lib
from jaxrec.train import learner as learner_lib


class ConfigError(ValueError):
  """A config field outside its allowed range: ``field`` (its name) and ``requirement`` (a phrase).

  ``str(e)`` reads ``FitConfig.epochs must be >= 1, got -1``; a binary names its own flag:
  ``f"--config.fit.{e.field} {e.requirement}"``.
  """

  def __init__(self, owner: str, field: str, requirement: str):
    self.owner, self.field, self.requirement = owner, field, requirement
    super().__init__(f"{owner}.{field} {requirement}")


OPTIMIZERS = ("adam", "sgd", "adamw")


def _is_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def check_fields(cfg: Any, rules: Mapping[str, tuple]) -> None:
  """Validates dataclass ``cfg`` against ``{field: (kind, low, optional)}``; raises :class:`ConfigError`.

  ``kind``: ``"int"`` (``>= low``), ``"pos"`` (a finite float ``> low``), ``"float"`` (finite, ``>= low``),
  ``"bool"``, ``"str"`` (non-empty) or a tuple of allowed strings; ``optional``: None is allowed.
  """
  owner = type(cfg).__name__
  for name, (kind, low, optional) in rules.items():
    v = getattr(cfg, name)
    if v is None:
      if not optional:
        raise ConfigError(owner, name, "must be set, got None")
      continue
    none = " or None" if optional else ""
    if kind == "int":
      if not _is_int(v):
        raise ConfigError(owner, name, f"must be an integer >= {low}{none}, got {v!r}")
      if v < low:
        raise ConfigError(owner, name, f"must be >= {low}{none}, got {v!r}")
    elif kind in ("pos", "float"):
      ok = isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(v)
      if not ok or (v <= low if kind == "pos" else v < low):
        raise ConfigError(owner, name, f"must be a number {'>' if kind == 'pos' else '>='} {low}{none}, "
                          f"got {v!r}")
    elif kind == "bool":
      if not isinstance(v, (bool, np.bool_)):
        raise ConfigError(owner, name, f"must be true or false{none}, got {v!r}")
    elif kind == "str":
      if not isinstance(v, str) or not v:
        raise ConfigError(owner, name, f"must be a non-empty string{none}, got {v!r}")
    elif v not in kind:
      raise ConfigError(owner, name, f"must be one of {', '.join(kind)}{none}, got {v!r}")


_FIT_RULES = {
    "epochs": ("int", 1, False), "batch_size": ("int", 1, False), "sequence_batch_size": ("int", 1, False),
    "num_negatives": ("int", 1, False), "history_len": ("int", 1, False),
    "learning_rate": ("pos", 0, False), "weight_decay": ("float", 0, False),
    "optimizer": (OPTIMIZERS, None, False), "clip_norm": ("pos", 0, True), "loss": ("str", None, True),
    "eval_every": ("int", 1, True), "metric": ("str", None, False), "valid_negatives": ("int", 1, False),
    "patience": ("int", 1, True), "progress": ("bool", None, False), "all_positions": ("bool", None, True),
    "time_limit": ("pos", 0, True),
}


@dataclasses.dataclass(frozen=True)
class FitConfig:
  """Training hyper-parameters shared by every base model.

  Attributes:
    epochs: passes over the training examples.
    batch_size: examples (interactions or windows) per step (static; the last batch is padded and
      masked).
    sequence_batch_size: sequences (of up to ``history_len`` targets each) per step for all-position
      models, which replaces ``batch_size`` for them.
    num_negatives: sampled negatives per example.
    history_len: input window of sequence models.
    learning_rate, weight_decay, optimizer, clip_norm: the optax optimizer.
    loss: loss name (None: the model's default).
    eval_every: steps between validations (None: at epoch ends only).
    metric: validation metric for keep-best and early stopping.
    valid_negatives: sampled negatives of the validation protocol (drawn once).
    patience: evaluations without improvement before stopping (None: never).
    time_limit: seconds of training after which the first evaluation stops the run (None: no cap;
      :class:`jaxrec.train.loop.LoopConfig`).
    progress: tqdm progress bar.
    all_positions: train sequence models on all positions (None: the registry's
      ``ModelSpec.all_positions``; False: one target per window, e.g. to compare).

  Every field is checked on construction (integers >= 1, learning rate > 0, ...): a value out of
  range raises :class:`ConfigError` naming the field and its range.
  """

  epochs: int = 10
  batch_size: int = 256
  sequence_batch_size: int = 32
  num_negatives: int = 100
  history_len: int = 50
  learning_rate: float = 1e-3
  weight_decay: float = 0.0
  optimizer: str = "adam"
  clip_norm: Optional[float] = 5.0
  loss: Optional[str] = None
  eval_every: Optional[int] = None
  metric: str = "valid/NDCG@10"
  valid_negatives: int = 99
  patience: Optional[int] = 3
  progress: bool = False
  all_positions: Optional[bool] = None
  time_limit: Optional[float] = None

  def __post_init__(self):
    check_fields(self, _FIT_RULES)


def available_negatives(queries: Queries, num_items: int) -> int:
  """The most sampled negatives every query can have: items that are neither known nor its positive."""
  if not len(queries):
    return num_items
  excluded = queries.num_known() + (~queries.positive_is_known()).astype(np.int64)
  return int(num_items - excluded.max())


def capped_negatives(queries: Queries, num_items: int, wanted: int, what: str = "sampled") -> int:
  """``wanted``, or the most every query can have (:func:`available_negatives`) with a warning."""
  avail = available_negatives(queries, num_items)
  if wanted <= avail:
    return wanted
  if avail < 1:
    raise ValueError(f"{what}: a user knows every one of the {num_items} items; no negatives to draw")
  logging.warning("%s protocol: %d negatives capped to %d (a user has only %d items that are neither "
                  "known nor the positive, of %d)", what, wanted, avail, avail, num_items)
  return avail


def query_features(spec: registry.ModelSpec, logs: list[InteractionLog], which: int,
                   history_len: int) -> dict[str, np.ndarray]:
  """Model inputs for the queries made of the rows of ``logs[which]``.

  For sequence models each row's history is the user's last ``history_len`` interactions strictly
  before it in the concatenation ``logs[0] + logs[1] + ...`` (e.g. train, valid, test), so a query
  never sees itself or a later interaction. User models need no features.
  """
  if spec.family != "sequence":
    return {}
  full = concat_logs(logs)
  win = samplers.last_windows(full, history_len)
  start = sum(len(log) for log in logs[:which])
  rows = slice(start, start + len(logs[which]))
  return {"history": win.history[rows], "history_mask": win.mask[rows]}


def history_len_for(model: str, config: FitConfig, hparams: Optional[Mapping[str, Any]] = None) -> int:
  """The window a model actually reads: ``config.history_len``, capped by the model's ``max_len``."""
  spec = registry.get(model)
  max_len = dict(spec.defaults, **(hparams or {})).get("max_len")
  return config.history_len if max_len is None else min(config.history_len, int(max_len))


def sequence_chunks(log: InteractionLog, history_len: int, pad_id: int = 0) -> dict[str, np.ndarray]:
  """All-position examples: each user's sequence cut into chunks of ``history_len`` targets.

  A user's rows are ordered by timestamp, ties by input row order (as :func:`samplers.last_windows`).
  Every row with at least one earlier row of its user is the target of exactly one chunk position,
  and its input at that position is the user's previous item: ``targets[m, t]`` follows
  ``history[m, t]``, and positions ``< t`` of the chunk hold earlier items only. Chunks are cut from
  the end backwards: the most recent one is full, the earliest is left-padded (``target_mask`` ==
  ``history_mask`` False on padding, ids ``pad_id``). Chunks follow users in index order, the most
  recent first.

  Args:
    log: the training log.
    history_len: positions per chunk ``L``.
    pad_id: id at masked positions.

  Returns:
    ``{"user" int32 [M], "history" int32 [M, L], "history_mask" bool [M, L], "targets" int32 [M, L],
    "target_mask" bool [M, L]}``.
  """
  if history_len < 1:
    raise ValueError(f"sequence_chunks: history_len must be >= 1, got {history_len}")
  up = order_lib.user_positions(log.user, log.timestamp, log.num_users)  # ties in arrival order
  items = log.item[up.order].astype(np.int32)
  counts, starts = up.counts, up.starts
  per_user = -(-np.maximum(counts - 1, 0) // history_len)  # chunks: ceil(targets / L)
  user = np.repeat(np.arange(counts.size), per_user)
  first = np.concatenate([[0], np.cumsum(per_user)[:-1]])
  back = np.arange(user.size) - np.repeat(first, per_user)  # 0 = most recent chunk
  last = counts[user] - 1 - back * history_len  # within-user index of the chunk's last target
  idx = last[:, None] - (history_len - 1 - np.arange(history_len))[None, :]  # target indices [M, L]
  mask = idx >= 1
  rows = starts[user][:, None] + np.where(mask, idx, 1)
  targets = np.where(mask, items[rows] if items.size else 0, pad_id).astype(np.int32)
  history = np.where(mask, items[rows - 1] if items.size else 0, pad_id).astype(np.int32)
  return {"user": user.astype(np.int32), "history": history, "history_mask": mask,
          "targets": targets, "target_mask": mask.copy()}


def uses_all_positions(spec: registry.ModelSpec, config: FitConfig) -> bool:
  """Whether ``spec`` trains on all positions under ``config`` (see :attr:`FitConfig.all_positions`)."""
  if config.all_positions is None:
    return spec.all_positions
  if config.all_positions and not spec.all_positions:
    raise ValueError(f"{spec.name} cannot train on all positions (no encode_sequence)")
  return config.all_positions


def training_examples(spec: registry.ModelSpec, train: InteractionLog, history_len: int,
                      all_positions: Optional[bool] = None) -> dict:
  """Host arrays of training examples for the model's family (see module docstring).

  ``all_positions`` (None: ``spec.all_positions``) selects :func:`sequence_chunks` for sequence models.
  """
  if spec.family == "user":
    return {"user": train.user.astype(np.int32), "positive": train.item.astype(np.int32)}
  if spec.all_positions if all_positions is None else all_positions:
    return sequence_chunks(train, history_len)
  win = samplers.last_windows(train, history_len)
  keep = win.mask.any(axis=1)
  return {"user": win.user[keep], "positive": win.target[keep], "history": win.history[keep],
          "history_mask": win.mask[keep]}


def epoch_negatives(rng: np.random.Generator, examples: Mapping[str, np.ndarray], known_csr,
                    num_items: int, num_negatives: int) -> np.ndarray:
  """Negatives excluding the user's known positives: ``[M, N]``, or ``[M, L, N]`` per real position."""
  if "targets" not in examples:
    return samplers.sample_negatives(rng, examples["user"], num_negatives, num_items, known_csr)
  mask = examples["target_mask"]
  users = np.broadcast_to(examples["user"][:, None], mask.shape)[mask]
  out = np.zeros(mask.shape + (num_negatives,), np.int32)
  out[mask] = samplers.sample_negatives(rng, users, num_negatives, num_items, known_csr)
  return out


def epoch_batches(examples: Mapping[str, np.ndarray], known_csr, num_items: int, config: FitConfig,
                  seed: int, epoch: int):
  """Shuffled static-shape batches of one epoch with freshly sampled negatives."""
  rng = np.random.default_rng([seed, epoch])
  negatives = epoch_negatives(rng, examples, known_csr, num_items, config.num_negatives)
  arrays = dict(examples, negatives=negatives)
  return samplers.iterate_batches(arrays, config.batch_size, rng=rng)


@dataclasses.dataclass
class FitResult:
  """What :func:`fit` returns.

  Attributes:
    train_seconds: training time of the whole run: with a workdir, the total over every segment
      (first run, resumes, no-op re-runs), see ``train_segments``.
    train_segments: ``[{"from_step", "to_step", "seconds"}]`` (one per ``fit`` call on the workdir).
    valid_negatives: the sampled negatives the validation used (``config.valid_negatives``, capped
      at what every validation query can have), None without a sampled validation.
  """

  params: Any
  score_fn: Any
  history: list
  train_seconds: float
  best_step: int
  train_segments: list = dataclasses.field(default_factory=list)
  valid_negatives: Optional[int] = None


def fit(model: str, train: InteractionLog, valid_queries: Optional[Queries], config: FitConfig, *,
        seed: int = 0, hparams: Optional[Mapping[str, Any]] = None, workdir: Optional[str] = None,
        valid_protocol: Optional[protocols_lib.Protocol] = None,
        run_config: Optional[Mapping[str, Any]] = None) -> FitResult:
  """Trains ``model`` (a registry name) on ``train``, selecting the best state on ``valid_queries``.

  Args:
    model: registered model name.
    train: training log.
    valid_queries: validation queries (with the features the model needs); None: no validation,
      the last state is kept.
    config: :class:`FitConfig`.
    seed: the one seed (init, data order, negatives).
    hparams: model hyper-parameters overriding the registry defaults.
    workdir: checkpoints and ``metrics.jsonl`` (resumes if it holds a checkpoint); None: in memory.
    valid_protocol: protocol of the validation (default: ``config.valid_negatives`` sampled negatives,
      capped, with a warning, at the most every validation query can have).
    run_config: what else defines the run (e.g. ``{"dataset": ..., "split": ...}``); with ``model``,
      ``config`` (but ``progress``), ``hparams`` and ``seed`` it is the workdir's ``run_config.json``,
      and a resume with another one raises :class:`jaxrec.train.loop.ConfigMismatchError`.

  Returns:
    A :class:`FitResult` with the best parameters and their ``ScoreFn``.
  """
  spec = registry.get(model)
  hp = dict(hparams or {})
  fit_fields = {k: v for k, v in dataclasses.asdict(config).items() if k != "progress"}
  full_run_config = {"model": model, "fit": fit_fields, "hparams": hp, "seed": seed,
                     **dict(run_config or {})}
  config = dataclasses.replace(config, history_len=history_len_for(model, config, hp))
  module = spec.make(train.num_users, train.num_items, **hp)
  all_positions = uses_all_positions(spec, config)
  if all_positions:
    config = dataclasses.replace(config, batch_size=config.sequence_batch_size)
  examples = training_examples(spec, train, config.history_len, all_positions)
  known = train.user_item_csr()
  rng = jax.random.PRNGKey(seed)
  init_rng, loop_rng = jax.random.split(rng)
  sample = next(iter(epoch_batches({k: v[:2] for k, v in examples.items()}, known, train.num_items,
                                   dataclasses.replace(config, batch_size=2), seed, 0)))
  params = spec.init(init_rng, module, sample)
  tx_key = (config.optimizer, config.learning_rate, config.weight_decay, config.clip_norm)
  learner = _fit_learner(model, module, config.loss, tx_key)
  state = learner.init(params, init_rng)

  protocol, valid_negatives = validation_protocol(valid_queries, train.num_items, config, seed,
                                                  valid_protocol)
  eval_fn = None
  if protocol is not None:
    eval_fn = lambda p: validation_metrics(spec.score_fn(module), p, valid_queries, protocol,  # noqa: E731
                                           train.num_items)
  steps_per_epoch = -(-len(examples["user"]) // config.batch_size)
  t0 = time.time()
  best, history = loop_lib.train(
      loop_config(config, steps_per_epoch, eval_fn is not None), learner, state,
      lambda epoch: epoch_batches(examples, known, train.num_items, config, seed, epoch),
      eval_fn, workdir, rng=loop_rng, run_config=full_run_config)
  segments, seconds = train_timing(workdir, int(best.step), time.time() - t0)
  return FitResult(params=best.params, score_fn=spec.score_fn(module), history=history,
                   train_seconds=seconds, best_step=int(best.step), train_segments=segments,
                   valid_negatives=valid_negatives)


# -- pieces shared with the models that train with their own loop (jaxrec.models.gcmc, jodie, dynaernn) --


def validation_protocol(valid_queries: Optional[Queries], num_items: int, config: FitConfig, seed: int,
                        valid_protocol: Optional[protocols_lib.Protocol] = None
                        ) -> tuple[Optional[protocols_lib.Protocol], Optional[int]]:
  """The validation protocol, sampled candidates drawn once, and its number of negatives.

  ``valid_protocol`` if given (a :class:`~jaxrec.eval.protocols.Sampled` is drawn here), else
  ``config.valid_negatives`` uniform negatives (capped, with a warning, at what every query can have).
  Returns ``(None, None)`` without validation queries.
  """
  if valid_queries is None or not len(valid_queries):
    return None, None
  valid_negatives = None
  if valid_protocol is None:
    valid_negatives = capped_negatives(valid_queries, num_items, config.valid_negatives, "validation")
  protocol = valid_protocol or protocols_lib.Sampled(num_negatives=valid_negatives, seed=seed)
  if isinstance(protocol, protocols_lib.Sampled):
    valid_negatives = protocol.num_negatives
    protocol = protocol.draw(valid_queries, num_items)
  return protocol, valid_negatives


def validation_metrics(score_fn, params, valid_queries: Queries, protocol: protocols_lib.Protocol,
                       num_items: int) -> dict[str, float]:
  """``{"valid/MRR": ..., "valid/NDCG@10": ...}``: the loop's validation record."""
  res = protocols_lib.evaluate(score_fn, params, valid_queries, protocol, num_items, batch_size=256, ks=(10,))
  return {f"valid/{k}": v for k, v in res.summary.items() if k != "num_queries"}


def loop_config(config: FitConfig, steps_per_epoch: int, validates: bool) -> loop_lib.LoopConfig:
  """The shared loop's configuration for ``config`` (keep-best and stopping on ``config.metric`` when
  ``validates``)."""
  return loop_lib.LoopConfig(
      num_epochs=config.epochs, log_every=max(1, min(100, steps_per_epoch)), eval_every=config.eval_every,
      metric=config.metric if validates else None, patience=config.patience,
      time_limit=config.time_limit, progress=config.progress, steps_per_epoch=steps_per_epoch)


def train_timing(workdir: Optional[str], best_step: int, seconds: float) -> tuple[list, float]:
  """``(train_segments, train_seconds)``: this call's, or with a workdir the total over every segment."""
  segments = [{"from_step": 0, "to_step": best_step, "seconds": seconds}]
  if workdir is not None and os.path.exists(os.path.join(workdir, loop_lib.TIMING_FILE)):
    timing = loop_lib.read_timing(workdir)
    segments, seconds = timing["segments"], timing["total_seconds"]
  return segments, seconds


@functools.lru_cache(maxsize=None)
def _fit_learner(model: str, module, loss: Optional[str], tx_key: Any) -> learner_lib.Learner:
  """One learner (so one compiled update) per (model, module, loss, optimizer settings): another seed or
  number of epochs reuses the compiled update."""
  spec = registry.get(model)
  name, lr, wd, clip = tx_key
  tx = state_lib.make_optimizer(name, lr, weight_decay=wd, clip_norm=clip)
  return learner_lib.gradient_learner(spec.loss_fn(module, loss), tx)
