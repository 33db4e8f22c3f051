"""Training a registry encoder with TP: optional plain pre-training, then meta-training (stages).

:func:`train` builds the encoder from :mod:`jaxrec.models.registry` (architecture unchanged: the "-TP"
models of the paper are the same modules), then runs :func:`jaxrec.train.stages.run_stages` over

* ``"pretrain"`` (only with ``TPConfig.pretrain_epochs > 0``): plain joint training, the registry's
  binary cross-entropy loss (``"log"``) on every window, Adam (:func:`jaxrec.train.learner.gradient_learner`);
* ``"tp"``: the TP learner (:mod:`.learner`) over the task batches of :mod:`.tasks`.

:func:`train_plain` runs the first stage alone (as ``"plain"``): the paper's baselines, trained by the
same code on the same windows, loss, negatives, validation candidates and clock.

Each stage validates once per epoch (sampled ``valid_negatives`` candidates, drawn once, NDCG@10; keep
best, early stopping with ``patience``), times its epochs (``train/epoch_seconds``: from the first batch
to the epoch's last update, device included, validation excluded) and checkpoints into
``workdir/<stage>`` (exact resume; a workdir of another configuration is refused).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Mapping, Optional

import jax
import optax

from jaxrec.data.log import InteractionLog
from jaxrec.eval import protocols as protocols_lib
from jaxrec.eval.queries import Queries
from jaxrec.methods.tp import tasks as tasks_lib
from jaxrec.methods.tp.config import TPConfig
from jaxrec.methods.tp.learner import tp_learner
from jaxrec.models import registry
from jaxrec.train import fit as fit_lib
from jaxrec.train import learner as learner_lib
from jaxrec.train import loop as loop_lib
from jaxrec.train import stages as stages_lib

METRIC = "valid/NDCG@10"


@dataclasses.dataclass
class TPResult:
  """What :func:`train` / :func:`train_plain` return.

  Attributes:
    params: the best encoder parameters (of the last stage).
    module, score_fn: the encoder and its registry ScoreFn ``(params, queries, items)``.
    history_len: the window ``L`` used.
    histories: ``{stage: loop records}``.
    train_seconds: wall time of the whole run (compilation and validation included).
    steps_per_epoch: ``{stage: updates per epoch}``.
    epoch_seconds: ``{stage: [seconds of each epoch]}`` (first batch to last update, validation excluded;
      the first epoch includes compilation).
    subsequences_per_epoch: ``{stage: real training subsequences (targets) per epoch}``.
  """

  params: Any
  module: Any
  score_fn: Any
  history_len: int
  histories: dict
  train_seconds: float
  steps_per_epoch: dict
  epoch_seconds: dict
  subsequences_per_epoch: dict


def history_len(model: str, config: TPConfig, hparams: Optional[Mapping[str, Any]] = None) -> int:
  """``config.history_len`` capped by the encoder's ``max_len`` (Caser, SASRec)."""
  return fit_lib.history_len_for(model, fit_lib.FitConfig(history_len=config.history_len), hparams)


def build(model: str, num_users: int, num_items: int, config: TPConfig, seed: int,
          hparams: Optional[Mapping[str, Any]] = None):
  """``(spec, module, params, L)``: the registry encoder and its initial parameters."""
  spec = registry.get(model)
  if spec.family != "sequence":
    raise ValueError(f"TP needs a sequence encoder; {model!r} is a {spec.family!r} model")
  length = history_len(model, config, hparams)
  module = spec.make(num_users, num_items, **dict(hparams or {}))
  sample = registry.sample_batch("sequence", history_len=length, num_negatives=config.num_negatives)
  params = spec.init(jax.random.PRNGKey(seed), module, sample)
  return spec, module, params, length


@functools.lru_cache(maxsize=None)
def plain_learner(model: str, module, lr: float) -> learner_lib.Learner:
  """Plain joint training of ``module``: the registry's ``"log"`` loss (Eq. 2), Adam (cached)."""
  return learner_lib.gradient_learner(registry.get(model).loss_fn(module, "log"), optax.adam(lr))


def train(config: TPConfig, model: str, train_log: InteractionLog, *, seed: int = 0,
          valid_queries: Optional[Queries] = None, valid_protocol: Optional[protocols_lib.Protocol] = None,
          hparams: Optional[Mapping[str, Any]] = None, workdir: Optional[str] = None, progress: bool = False,
          run_config: Optional[Mapping[str, Any]] = None) -> TPResult:
  """Trains ``model`` (a registry sequence encoder) on ``train_log`` with TP (module docstring).

  Args:
    config: :class:`TPConfig`.
    model: registry name (``"gru4rec"``, ``"caser"``, ``"sasrec"``, ...).
    train_log: the existing users' training rows (new users never enter).
    seed: initialisation, data order, negatives, validation candidates.
    valid_queries: validation queries with ``"history"``/``"history_mask"`` features of the encoder's
      window (:func:`jaxrec.train.fit.query_features`); None: the last epoch is kept.
    valid_protocol: the validation's ranking protocol (e.g. candidates drawn once and shared with the
      baselines); None: ``config.valid_negatives`` sampled negatives drawn with ``seed``.
    hparams: encoder hyper-parameters over the registry defaults.
    workdir: checkpoints and ``metrics.jsonl`` per stage (resumes); None: in memory.
    progress: tqdm bars.
    run_config: more of what defines the run (dataset, protocol), remembered in each stage's workdir.
  """
  return _run(config, model, train_log, config.pretrain_epochs, True, seed=seed, valid_queries=valid_queries,
              valid_protocol=valid_protocol, hparams=hparams, workdir=workdir, progress=progress,
              run_config=run_config)


def train_plain(config: TPConfig, model: str, train_log: InteractionLog, epochs: int, **kwargs) -> TPResult:
  """The plain encoder (the paper's baselines): ``epochs`` of joint training only, the pre-training stage
  of :func:`train` (same windows, loss, negatives, validation and timing); keyword arguments as there."""
  return _run(config, model, train_log, epochs, False, **kwargs)


def _run(config: TPConfig, model: str, train_log: InteractionLog, plain_epochs: int, meta: bool, *,
         seed: int = 0, valid_queries: Optional[Queries] = None,
         valid_protocol: Optional[protocols_lib.Protocol] = None,
         hparams: Optional[Mapping[str, Any]] = None, workdir: Optional[str] = None, progress: bool = False,
         run_config: Optional[Mapping[str, Any]] = None) -> TPResult:
  spec, module, params, length = build(model, train_log.num_users, train_log.num_items, config, seed,
                                       hparams)
  cfg = dataclasses.replace(config, history_len=length)
  if valid_protocol is None and valid_queries is not None and len(valid_queries):
    n = fit_lib.capped_negatives(valid_queries, train_log.num_items, cfg.valid_negatives, "validation")
    valid_protocol = protocols_lib.Sampled(num_negatives=n, seed=seed).draw(valid_queries,
                                                                           train_log.num_items)
  if valid_queries is None or not len(valid_queries):
    valid_protocol = None
  epoch_seconds: dict = {}
  steps: dict = {}
  subsequences: dict = {}

  def make_eval(name: str, clock: list):
    def eval_fn(p):
      out = {"train/epoch_seconds": time.perf_counter() - clock[0]}
      epoch_seconds.setdefault(name, []).append(out["train/epoch_seconds"])
      if valid_protocol is not None:
        res = protocols_lib.evaluate(spec.score_fn(module), p, valid_queries, valid_protocol,
                                     train_log.num_items, ks=(10,))
        out.update({f"valid/{k}": v for k, v in res.summary.items() if k != "num_queries"})
      return out
    return eval_fn

  metric = METRIC if valid_protocol is not None else None
  base_run = {"model": model, "hparams": dict(hparams or {}), "seed": seed, **dict(run_config or {})}
  stages = []
  if plain_epochs:
    fit_cfg = fit_lib.FitConfig(batch_size=cfg.pretrain_batch_size, num_negatives=cfg.num_negatives,
                                history_len=length)
    examples = fit_lib.training_examples(spec, train_log, length, all_positions=False)
    known = train_log.user_item_csr()
    clock_p = [0.0]

    def pre_batches(epoch, clock=clock_p):
      clock[0] = time.perf_counter()
      return fit_lib.epoch_batches(examples, known, train_log.num_items, fit_cfg, seed, epoch)

    name = "pretrain" if meta else "plain"
    steps[name] = -(-len(examples["user"]) // fit_cfg.batch_size)
    subsequences[name] = int(len(examples["user"]))
    stages.append(stages_lib.Stage(
        name, plain_learner(model, module, cfg.pretrain_lr), pre_batches,
        loop_lib.LoopConfig(num_epochs=plain_epochs, log_every=max(1, min(100, steps[name])), metric=metric,
                            patience=cfg.patience, progress=progress, steps_per_epoch=steps[name]),
        make_eval(name, clock_p),
        run_config=dict(base_run, stage=name, lr=cfg.pretrain_lr, batch_size=cfg.pretrain_batch_size,
                        num_negatives=cfg.num_negatives, history_len=length, epochs=plain_epochs)))
  if meta:
    data = tasks_lib.prepare(train_log, length, cfg.head_fraction)
    clock = [0.0]

    def tp_batches(epoch):
      clock[0] = time.perf_counter()
      return tasks_lib.epoch_batches(data, num_chains=cfg.num_chains, k=cfg.k, support=cfg.support,
                                     num_negatives=cfg.num_negatives, sampling=cfg.task_sampling,
                                     seed=seed, epoch=epoch)

    steps["tp"] = tasks_lib.steps_per_epoch(data, cfg.num_chains, cfg.k, cfg.support, cfg.task_sampling)
    subsequences["tp"] = tasks_lib.num_subsequences(data, cfg.support, cfg.task_sampling)
    stages.append(stages_lib.Stage(
        "tp", tp_learner(module, cfg), tp_batches,
        loop_lib.LoopConfig(num_epochs=cfg.epochs, log_every=max(1, min(100, steps["tp"])), metric=metric,
                            patience=cfg.patience, progress=progress, steps_per_epoch=steps["tp"]),
        make_eval("tp", clock), run_config=dict(base_run, stage="tp", tp=dataclasses.asdict(cfg))))
  if not stages:
    raise ValueError("train_plain: epochs must be >= 1")
  t0 = time.perf_counter()
  best, histories = stages_lib.run_stages(stages, params, rng=jax.random.PRNGKey(seed + 1), workdir=workdir)
  return TPResult(params=best, module=module, score_fn=spec.score_fn(module), history_len=length,
                  histories=histories, train_seconds=time.perf_counter() - t0, steps_per_epoch=steps,
                  epoch_seconds=epoch_seconds, subsequences_per_epoch=subsequences)
