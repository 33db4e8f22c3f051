r"""The 2TS experiment (paper 000, Section 5): Table 1 / Table 3 rows and Figures 2-4 on our data.

    python -m experiments.two_time_scale --dataset=synthetic:medium --workdir=runs/2ts-medium \
        --config.sweep_t_star="(10,20,50)" --config.sweep_k="(10,20)" --config.tts.lr_stage2=1e-4

Protocol: the named ``"2ts-chronological"`` (:mod:`jaxrec.eval.paper_protocols`): global chronological
split 70/10/20, repeats kept, every validation/test interaction is a query, MRR and Recall@10 against 499
negatives sampled uniformly from all items but the positive (nothing excluded, as in the paper) *and*
under full ranking, side by side. Model selection uses the whole validation set with the same sampled
protocol (candidates drawn once) for every method: the (t*, K) sweep, each 2TS stage's epoch, and each
baseline's epoch.

Rows: 2TS, 2TS-Plus, 2TS-SingleStage, 2-GRU, CCF (``jaxrec.methods.two_time_scale``), SumPooling,
GRU4Rec, SASRec (``jaxrec.train.fit``) and Popularity (floor). For the 2TS variants the query of an
interaction is the user's state after the cells consumed the user's earlier (valid, then test)
interactions, no gradient step (``tts.eval_query_vectors``); sequence baselines read the same earlier
interactions as their history.

Configuration: one :class:`Options` dataclass, every field a ``--config.FIELD`` flag
(:mod:`experiments.configs`; the 2TS hyper-parameters are ``--config.tts.FIELD``); ``--dataset``,
``--workdir``, ``--seed`` and ``--cache_dir`` are the shared data flags. Tables and figures:
:mod:`experiments.two_time_scale_report`.

Writes into ``--workdir``: ``results.json`` (every row, configs, timings, histories, the command),
``fig2_mrr_vs_time.png``, ``fig3_mrr_by_segment.png``, ``fig4_embedding_moves.png``,
``fig_threshold_sweep.png`` (with a sweep) and checkpoints where the method takes a workdir.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import os
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common, configs
from experiments import two_time_scale_report as report
from experiments.registry import Experiment, ExperimentResult, RunContext
from jaxrec.eval import paper_protocols
from jaxrec.eval import protocols as protocols_lib
from jaxrec.eval import suite
from jaxrec.methods import two_time_scale as tts
from jaxrec.models import nonlearned, registry
from jaxrec.train import fit as fit_lib
from jaxrec.train import sparse as sparse_lib

MODULE = "experiments.two_time_scale"
PROTOCOL = "2ts-chronological"
VARIANT_NAMES = report.VARIANT_NAMES
BASELINE_NAMES = report.BASELINE_NAMES
METRICS = ("MRR", "Recall@10")
# Baselines with their own training loop: registry name -> (module with ``fit`` and ``query_features``,
# its hyper-parameters). Every other baseline is a registered model trained by ``jaxrec.train.fit``.
OWN_TRAINERS = {"gcmc": ("jaxrec.models.gcmc", {"variant": "gcmc"}),
                "gcmc-sage": ("jaxrec.models.gcmc", {"variant": "gcmc-sage"}),
                "gcmc-gat": ("jaxrec.models.gcmc", {"variant": "gcmc-gat", "max_degree": 32}),  # 128: ~5x slower
                "dynaernn": ("jaxrec.models.dynaernn", {}),
                "jodie": ("jaxrec.models.jodie", {})}


RATES = ("shared", "theory")


def parse_setting(setting: str) -> tuple[str, str, str]:
  """``"CELL/STEPS[/RATES]"`` -> ``(cell, stage2_steps, rates)``, e.g. ``"residual/mixed/theory"``."""
  parts = setting.split("/")
  if len(parts) == 2:
    parts.append("shared")
  if len(parts) != 3 or parts[0] not in tts.CELLS or parts[1] not in tts.STAGE2_STEPS or (
      parts[2] not in RATES):
    raise ValueError(f"stage2_grid entry {setting!r} must be CELL/STEPS[/RATES] with CELL in "
                     f"{tts.CELLS}, STEPS in {tts.STAGE2_STEPS}, RATES in {RATES}")
  return parts[0], parts[1], parts[2]


def setting_name(setting: str) -> str:
  cell, steps, rates = parse_setting(setting)
  return f"{cell}, {steps}" + (", theory rates" if rates == "theory" else "")


@dataclasses.dataclass(frozen=True)
class Options:
  """Everything a run depends on besides the dataset and the seed (each field is a ``--config`` flag).

  Attributes:
    variants: 2TS variants to train (``tts.VARIANTS``).
    baselines: base models to train (of ``BASELINE_NAMES``; by default ``report.DEFAULT_BASELINES``).
    tts: the 2TS hyper-parameters (``--config.tts.FIELD``); ``t_star`` and ``k`` are overridden by the
      validation choice when a sweep is given, ``cell`` / ``stage2_steps`` / ``lr_*`` by the chosen
      ``stage2_grid`` setting, ``seed`` by the run's seed.
    stage2_grid: 2TS stage-2 settings compared on validation, each ``"CELL/STEPS[/RATES]"``
      (:func:`parse_setting`): the cell's start (``gru``, ``keep-gate``, ``residual``), one-group or mixed
      steps, and shared rates or the theory's ``gamma_act / gamma_in`` ratio (Implication 2) for the active
      group. The best on validation MRR is the 2TS row, and 2TS-Plus, 2-GRU and 2TS-SingleStage use its
      cell and steps.
    patience: early-stopping patience (epochs without a better validation MRR) of every 2TS stage; 0:
      never stop early. The baselines' is ``base_patience``.
    time_limit: wall-time cap in seconds of each 2TS stage and of each baseline's training (the loop stops
      at the first validation past it); 0: none.
    sweep_t_star, sweep_k: validation grid of (t*, K) for 2TS (empty: no sweep).
    base_epochs, base_batch_size, base_history_len, base_negatives, base_lr, base_patience: baselines
      (base_batch_size counts windows; GRU4Rec and SASRec take FitConfig.sequence_batch_size sequences).
    eval_negatives: sampled negatives per query; 0: the protocol's (499, as in the paper). Only for data
      with too few items (``synthetic:tiny`` has 100).
    stage1_optimizer: "" (the paper's dense Adam) or a row-sparse table optimizer for every stage 1
      (``lazy-adam``, ``rowwise-adagrad``, ``adagrad``: :mod:`jaxrec.train.sparse`), whose step cost does
      not grow with the numbers of users and items; its learning rate is ``tts.lr_stage1``.
  """

  variants: tuple[str, ...] = tts.VARIANTS
  baselines: tuple[str, ...] = report.DEFAULT_BASELINES
  tts: tts.TwoTimeScaleConfig = tts.TwoTimeScaleConfig()
  stage2_grid: tuple[str, ...] = ("gru/one-group", "residual/mixed")
  patience: int = 3
  time_limit: float = 0.0
  sweep_t_star: tuple[int, ...] = ()
  sweep_k: tuple[int, ...] = ()
  base_epochs: int = 10
  base_batch_size: int = 256
  base_history_len: int = 50
  base_negatives: int = 100
  base_lr: float = 1e-3
  base_patience: int = 3
  eval_negatives: int = 0
  stage1_optimizer: str = ""

  def __post_init__(self):
    bad = [v for v in self.variants if v not in tts.VARIANTS] + [
        b for b in self.baselines if b not in BASELINE_NAMES]
    if bad:
      raise ValueError(f"unknown variants/baselines {bad}; known {tts.VARIANTS} and {tuple(BASELINE_NAMES)}")
    if not self.stage2_grid:
      raise ValueError("stage2_grid must name at least one CELL/STEPS setting")
    for setting in self.stage2_grid:
      parse_setting(setting)
    if self.patience < 0 or self.time_limit < 0:
      raise ValueError("patience and time_limit must be >= 0 (0: none)")
    if self.stage1_optimizer and self.stage1_optimizer not in sparse_lib.OPTIMIZERS:
      raise ValueError(f"stage1_optimizer must be '' (dense Adam) or one of {sorted(sparse_lib.OPTIMIZERS)}, "
                       f"got {self.stage1_optimizer!r}")

  def tts_config(self, variant: str, seed: int, t_star: Optional[int] = None,
                 k: Optional[int] = None, setting: Optional[str] = None,
                 rate_ratio: float = 1.0) -> tts.TwoTimeScaleConfig:
    """The 2TS config of one run; ``setting`` (a ``stage2_grid`` entry) sets the cell, steps and rates
    (``rate_ratio``: the active group's rate over the inactive's, for ``RATES == "theory"``)."""
    cfg = dataclasses.replace(self.tts, variant=variant, seed=seed,
                              t_star=self.tts.t_star if t_star is None else t_star,
                              k=self.tts.k if k is None else k)
    if setting is not None:
      cell, steps, rates = parse_setting(setting)
      cfg = dataclasses.replace(cfg, cell=cell, stage2_steps=steps)
      if rates == "theory":
        cfg = dataclasses.replace(cfg, lr_inactive=cfg.lr_stage2, lr_active=cfg.lr_stage2 * rate_ratio)
    return cfg

  def fit_config(self) -> fit_lib.FitConfig:
    return fit_lib.FitConfig(epochs=self.base_epochs, batch_size=self.base_batch_size,
                             num_negatives=self.base_negatives, history_len=self.base_history_len,
                             learning_rate=self.base_lr, patience=self.base_patience, metric="valid/MRR",
                             time_limit=self.time_limit or None, progress=False)


def command(spec: str, seed: int, opts: Options, cache_dir: Optional[str] = None) -> str:
  """``python -m experiments.two_time_scale`` reproducing ``opts`` (only non-default ``--config`` fields)."""
  flags = {"dataset": spec, "seed": seed, "cache_dir": cache_dir}
  flags.update({k: (repr(v) if isinstance(v, tuple) else v)
                for k, v in configs.overrides(opts, Options()).items()})
  return common.command_line(MODULE, flags)


# -- data, protocol and 2TS evaluation -----------------------------------------------------------------


FILTERED = "2ts-chronological-filtered"


@dataclasses.dataclass
class _Setup:
  """Data, queries, evaluation sequences and frozen protocols of one dataset.

  The test set is evaluated under the paper's protocol (``2ts-chronological``: negatives from all items,
  nothing excluded) and, beside it, under ``2ts-chronological-filtered`` (the same queries, the user's
  earlier items excluded; its results are keyed ``"<name>-filtered"``). Selection uses the paper's.
  """

  prep: common.Prepared
  feats: Optional[jax.Array]
  valid_seqs: tts.EvalSequences      # validation rows only (model selection)
  all_seqs: tts.EvalSequences        # validation then test rows (final evaluation, Fig. 2/4)
  num_valid: int
  train_counts: np.ndarray
  new_users: np.ndarray
  test_protocols: dict
  valid_sampled: protocols_lib.Candidates
  test_sampled: protocols_lib.Candidates
  sampled_name: str
  filtered_queries: Any = None       # test queries with the earlier items to exclude
  filtered_protocols: dict = dataclasses.field(default_factory=dict)


def _setup(spec: str, seed: int, cache_dir: Optional[str], eval_negatives: int = 0) -> _Setup:
  prep = common.prepare(spec, "chronological", seed=seed, cache_dir=cache_dir, protocol=PROTOCOL)
  filt = paper_protocols.prepare(prep.log, paper_protocols.get(FILTERED).with_seed(seed))
  wanted = eval_negatives or prep.protocol.num_negatives
  # Capped, with a warning, at what every validation and test query can have (synthetic:tiny); the
  # filtered protocol excludes more, so it is capped on its own.
  wanted = fit_lib.capped_negatives(prep.valid_queries, prep.num_items, wanted, "validation")
  wanted = fit_lib.capped_negatives(prep.test_queries, prep.num_items, wanted, "test")
  if wanted != prep.protocol.num_negatives:
    prep = dataclasses.replace(prep, protocol=prep.protocol.replace(num_negatives=wanted))
  wanted_f = fit_lib.capped_negatives(filt.test_queries, prep.num_items, wanted, "test (filtered)")
  sp = prep.split
  feats = None if sp.train.item_features is None else jnp.asarray(sp.train.item_features)
  rankings = prep.protocol.rankings(sp.train.item_counts())
  name = next(k for k in rankings if k.startswith("sampled"))
  test_protocols = suite.freeze_protocols(rankings, prep.test_queries, prep.num_items)
  valid_sampled = suite.freeze_protocols({name: rankings[name]}, prep.valid_queries, prep.num_items)[name]
  filt_rankings = filt.protocol.replace(num_negatives=wanted_f).rankings(sp.train.item_counts())
  return _Setup(prep=prep, feats=feats, valid_seqs=tts.prepare_eval_sequences([sp.valid]),
                all_seqs=tts.prepare_eval_sequences([sp.valid, sp.test]), num_valid=len(sp.valid),
                train_counts=sp.train.user_counts(), new_users=common.new_user_mask(prep),
                test_protocols=test_protocols, valid_sampled=valid_sampled,
                test_sampled=test_protocols[name], sampled_name=name,
                filtered_queries=filt.test_queries,
                filtered_protocols=suite.freeze_protocols(filt_rankings, filt.test_queries, prep.num_items))


def _evaluate_test(score_fn, params, s: _Setup, features: dict) -> dict:
  """Test results under both protocols (the filtered ones keyed ``"<name>-filtered"``)."""
  out = suite.evaluate_all(score_fn, params, dataclasses.replace(s.prep.test_queries, features=features),
                           s.prep.num_items, s.test_protocols, train_counts=s.train_counts,
                           new_users=s.new_users)
  filt = suite.evaluate_all(score_fn, params, dataclasses.replace(s.filtered_queries, features=features),
                            s.prep.num_items, s.filtered_protocols, train_counts=s.train_counts,
                            new_users=s.new_users)
  out.update({f"{k}-filtered": v for k, v in filt.items()})
  return out


def _with_vecs(queries, vecs):
  return dataclasses.replace(queries, features={"user_vec": np.asarray(vecs)})


def _sampled_mrr(table, queries, protocol, num_items) -> float:
  res = protocols_lib.evaluate(tts.table_scores, table, queries, protocol, num_items, ks=(10,))
  return float(res.summary["MRR"])


def _valid_fn(cfg, data, s: _Setup, with_test: bool = False) -> Callable:
  """Per-epoch sampled MRR on the whole validation set: ``"mrr"`` keeps each stage's best epoch.

  Only the validation rows are rolled out; with ``with_test`` (Fig. 2 only, never used for selection) the
  validation + test rows are, and the same rollout gives ``"test_MRR"`` on the whole test set. Stage-1
  epochs are scored as CCF (the static phi_u), later stages with the variant's own queries.
  """
  ccf = dataclasses.replace(cfg, variant="ccf")
  seqs = s.all_seqs if with_test else s.valid_seqs

  def eval_fn(stage, params):
    c = ccf if stage == "stage1" else cfg
    eq = tts.eval_query_vectors(c, params, data, seqs, s.feats)
    table = tts.item_table(c, params, s.feats)
    out = {"mrr": _sampled_mrr(table, _with_vecs(s.prep.valid_queries, eq.user_vec[:s.num_valid]),
                               s.valid_sampled, s.prep.num_items)}
    if with_test:
      out["test_MRR"] = _sampled_mrr(table, _with_vecs(s.prep.test_queries, eq.user_vec[s.num_valid:]),
                                     s.test_sampled, s.prep.num_items)
    return out

  return eval_fn


def _train_tts(cfg, s: _Setup, opts: Options, workdir=None, with_test_curve: bool = False,
               stage1_params=None):
  """Trains one variant, each stage keeping its best epoch on validation MRR and stopping after
  ``opts.patience`` epochs without a better one (or past ``opts.time_limit`` seconds)."""
  data = tts.prepare_training_data(s.prep.split.train, cfg.t_star, cfg.k)
  t0 = time.perf_counter()
  res = tts.train(cfg, s.prep.split.train, eval_fn=_valid_fn(cfg, data, s, with_test_curve), metric="mrr",
                  patience=opts.patience or None, time_limit=opts.time_limit or None, workdir=workdir,
                  stage1_params=stage1_params,
                  stage1_optimizer=(opts.stage1_optimizer or None) if "stage1" in tts.stage_names(cfg) else None)
  return res, time.perf_counter() - t0


def _evaluate_tts(cfg, res, s: _Setup) -> tuple[dict, dict, Any]:
  """(test results per protocol, validation sampled summary, EvalQueries of validation + test)."""
  eq = tts.eval_query_vectors(cfg, res.params, res.data, s.all_seqs, s.feats)
  table = tts.item_table(cfg, res.params, s.feats)
  test = _evaluate_test(tts.table_scores, table, s, {"user_vec": np.asarray(eq.user_vec[s.num_valid:])})
  valid_q = _with_vecs(s.prep.valid_queries, eq.user_vec[:s.num_valid])
  valid = protocols_lib.evaluate(tts.table_scores, table, valid_q, s.valid_sampled, s.prep.num_items,
                                 ks=(10,)).summary
  return test, {k: float(v) for k, v in valid.items()}, eq


def _budget(history: list) -> dict:
  """Epochs run per stage, why training stopped, and the seconds of training (no evaluation)."""
  out = {}
  for stage in tts.STAGES:
    recs = [r for r in history if r.get("stage") == stage]
    if recs:
      out[f"{stage} epochs"] = len(recs)
      out[f"{stage} stopped"] = recs[-1].get("stopped", "epochs")
  return out


def _train_baseline(model: str, s: _Setup, opts: Options, seed: int, workdir: Optional[str]) -> dict:
  """Fits ``model`` with its best epoch on the whole validation set (the 2TS validation candidates).

  A registered model trains through :func:`jaxrec.train.fit.fit`; one of ``OWN_TRAINERS`` (graph and
  temporal baselines) through its module's ``fit(logs, valid_queries, config, ...)``, which reads only
  ``logs[0]`` to train (and ``logs[1]`` for validation features), and its ``query_features``.
  """
  sp = s.prep.split
  config = opts.fit_config()
  logs = [sp.train, sp.valid, sp.test]
  if model in OWN_TRAINERS:
    module_name, hparams = OWN_TRAINERS[model]
    trainer = importlib.import_module(module_name)
    fitted = trainer.fit(logs, s.prep.valid_queries, config, seed=seed, workdir=workdir,
                         valid_protocol=s.valid_sampled, **hparams)
    test = _evaluate_test(fitted.score_fn, fitted.params, s, trainer.query_features(fitted, logs, 2))
  else:
    spec = registry.get(model)
    hist = fit_lib.history_len_for(model, config)
    valid_q = dataclasses.replace(s.prep.valid_queries, features=fit_lib.query_features(spec, logs, 1, hist))
    fitted = fit_lib.fit(model, sp.train, valid_q, config, seed=seed, workdir=workdir,
                         valid_protocol=s.valid_sampled)
    test = _evaluate_test(fitted.score_fn, fitted.params, s, fit_lib.query_features(spec, logs, 2, hist))
  evals = [r for r in fitted.history if any(k.startswith("valid/") for k in r)]
  return {"model": model, "config": dataclasses.asdict(config), "train_seconds": fitted.train_seconds,
          "best_step": fitted.best_step, "valid_history": evals, "test": test,
          "epochs": len(evals), "stopped": evals[-1].get("stopped", "epochs") if evals else "epochs",
          "valid_MRR": max((r["valid/MRR"] for r in evals), default=float("nan"))}


# -- one dataset -------------------------------------------------------------------------------------


def _row(dataset, method, results, seconds, cmd, **extra) -> dict:
  return {"dataset": dataset, "method": method, **extra, **suite.flat_row(results, METRICS),
          "train s": round(float(seconds), 1), "command": cmd}


def theory_rate_ratio(train_counts: np.ndarray, phi: np.ndarray, t_star: int) -> dict:
  """Implication 2's ``gamma_act / gamma_in`` on our data (:mod:`theory.two_time_scale`, App. A.2).

  ``alpha``: maximum-likelihood exponent of ``P(T) = (T+1)^-alpha / zeta(alpha, 1)`` over every user's
  training count (new users count ``T = 0``); ``Var_m`` and ``Q >= E||phi_u||^2`` from the stage-1
  embeddings of trained users (``Q`` itself is unbounded for our loss, see :func:`report.theory`), so the
  ratio is a lower bound. ``N`` and ``B`` cancel.
  """
  from scipy import optimize, special  # pylint: disable=g-import-not-at-top
  from theory import two_time_scale as theory_lib  # pylint: disable=g-import-not-at-top
  t = np.asarray(train_counts, np.float64)
  log_t1 = np.log1p(t).sum()

  def nll(a):
    return a * log_t1 + t.size * np.log(special.zeta(a, 1.0))

  alpha = float(optimize.minimize_scalar(nll, bounds=(1.01, 6.0), method="bounded").x)
  trained = phi[t > 0]
  var_m = float(np.mean(np.sum((trained - trained.mean(axis=0)) ** 2, axis=1)))
  q = float(np.mean(np.sum(trained ** 2, axis=1)))
  with jax.enable_x64():
    ratio = float(theory_lib.gamma_act(t_star, alpha, q, 1.0, 1.0) / theory_lib.gamma_in(var_m, 1.0, 1.0))
  return {"alpha": alpha, "var_m": var_m, "q_lower_bound": q, "ratio": ratio}


def run_dataset(spec: str, opts: Options, *, seed: int = 0, workdir: Optional[str] = None,
                cache_dir: Optional[str] = None, checkpoints: bool = False,
                log: Callable[[str], None] = print) -> dict:
  """Trains and evaluates every row on one dataset; returns a JSON-able dict (rows, curves, configs).

  Stage 1 (CCF) does not depend on t*, K, the cells or the stage-2 steps: it is trained once (the CCF
  row, with its own early stopping) and every two-stage run starts its stage 2 from it
  (``tts.train(stage1_params=...)``, the same keys as a whole pipeline); their times include it.
  """
  s = _setup(spec, seed, cache_dir, opts.eval_negatives)
  name = s.prep.name
  out: dict[str, Any] = {"dataset": spec, "stats": common.stats_row(s.prep), "options": configs.to_dict(opts),
                         "protocol": s.prep.protocol.describe(),
                         "filtered_protocol": paper_protocols.get(FILTERED).describe(),
                         "sampled_name": s.sampled_name, "rows": [], "tts": {}, "baselines": {}, "sweep": [],
                         "grid": []}

  def ckpt(tag):
    return os.path.join(workdir, "checkpoints", name, tag) if (checkpoints and workdir) else None

  t_star, k = opts.tts.t_star, opts.tts.k
  two_stage = [v for v in opts.variants if v in ("2ts", "2ts-plus", "2-gru")]
  ccf = None
  if "ccf" in opts.variants or two_stage:
    cfg = opts.tts_config("ccf", seed)
    res, sec = _train_tts(cfg, s, opts, ckpt("ccf"), with_test_curve=True)
    ccf = {"cfg": cfg, "res": res, "seconds": sec, "params": jax.device_get(res.params)}
    log(f"[{name}] stage 1 (CCF): {len(res.history)} epochs, {sec:.0f} s")

  def from_stage1(cfg, tag, with_test_curve=False):
    res, sec = _train_tts(cfg, s, opts, ckpt(tag), with_test_curve, stage1_params=ccf["params"])
    offset = ccf["res"].history[-1]["wall_time"]
    res.history = ccf["res"].history + [dict(r, wall_time=r["wall_time"] + offset) for r in res.history]
    return res, sec + ccf["seconds"]

  def record(cfg, res, sec, test, valid, eq):
    rec = {"config": dataclasses.asdict(cfg), "train_seconds": sec, "test": test, "valid": valid,
           "history": res.history, **_budget(res.history)}
    if cfg.has_cells:
      rec["moves"] = report.embedding_moves(eq, s.num_valid, s.new_users[s.prep.split.test.user])
    return rec

  # Validation sweep over (t*, K) for 2TS (the first stage2_grid setting).
  grid = list(itertools.product(opts.sweep_t_star or (t_star,), opts.sweep_k or (k,)))
  if len(grid) > 1 and ccf is not None:
    for ts_, k_ in grid:
      cfg = opts.tts_config("2ts", seed, ts_, min(k_, max(ts_, 1)), opts.stage2_grid[0])
      res, sec = from_stage1(cfg, f"sweep-{ts_}-{cfg.k}")
      test, valid, _ = _evaluate_tts(cfg, res, s)
      rec = {"t_star": ts_, "k": cfg.k, "valid MRR": valid["MRR"],
             "test MRR": test[s.sampled_name]["summary"]["MRR"], "train s": sec}
      out["sweep"].append(rec)
      log(f"[{name}] sweep t*={ts_} K={cfg.k}: valid MRR={rec['valid MRR']:.4f} "
          f"test MRR={rec['test MRR']:.4f}")
    best = max(out["sweep"], key=lambda r: r["valid MRR"])
    t_star, k = best["t_star"], best["k"]
  k = min(k, max(t_star, 1))
  out["chosen"] = {"t_star": t_star, "k": k}
  chosen = dataclasses.replace(opts, tts=dataclasses.replace(opts.tts, t_star=t_star, k=k), sweep_t_star=(),
                               sweep_k=())

  # Stage-2 settings (cell start, steps, rates), chosen on validation MRR.
  setting = opts.stage2_grid[0]
  if two_stage:
    ratio = None
    if any(parse_setting(g)[2] == "theory" for g in opts.stage2_grid):
      ratio = theory_rate_ratio(s.train_counts, np.asarray(ccf["params"]["user"]), t_star)
      out["theory_rates"] = ratio
      log(f"[{name}] theory rates: gamma_act/gamma_in = {ratio['ratio']:.3g} (alpha={ratio['alpha']:.2f})")
    best_valid = -1.0
    for g in opts.stage2_grid:
      cfg = opts.tts_config("2ts", seed, t_star, k, g, ratio["ratio"] if ratio else 1.0)
      res, sec = from_stage1(cfg, "2ts-" + g.replace("/", "-"), with_test_curve=True)
      test, valid, eq = _evaluate_tts(cfg, res, s)
      rec = record(cfg, res, sec, test, valid, eq)
      rec["setting"] = g
      out["grid"].append({"dataset": name, "setting": setting_name(g), "valid MRR": valid["MRR"],
                          **_budget(res.history), **suite.flat_row(test, METRICS),
                          "train s": round(sec, 1),
                          "command": command(spec, seed, dataclasses.replace(
                              chosen, variants=("2ts",), baselines=(), stage2_grid=(g,)), cache_dir)})
      log(f"[{name}] 2TS ({setting_name(g)}): valid MRR={valid['MRR']:.4f}")
      if valid["MRR"] > best_valid:
        best_valid, setting = valid["MRR"], g
        if "2ts" in opts.variants:
          rec["theory"] = report.theory(cfg, res)
          out["tts"]["2ts"] = rec
  out["chosen"]["stage2"] = setting
  chosen = dataclasses.replace(chosen, stage2_grid=(setting,))
  ratio_value = out.get("theory_rates", {}).get("ratio", 1.0)

  for variant in opts.variants:
    cfg = opts.tts_config(variant, seed, t_star, k, setting, ratio_value)
    if variant == "2ts":
      rec = out["tts"]["2ts"]
      sec = rec["train_seconds"]
    else:
      if variant == "ccf":
        cfg, res, sec = ccf["cfg"], ccf["res"], ccf["seconds"]
      elif variant in two_stage:
        res, sec = from_stage1(cfg, variant)
      else:  # single-stage
        res, sec = _train_tts(cfg, s, opts, ckpt(variant))
      test, valid, eq = _evaluate_tts(cfg, res, s)
      rec = record(cfg, res, sec, test, valid, eq)
      out["tts"][variant] = rec
    cmd = command(spec, seed, dataclasses.replace(chosen, variants=(variant,), baselines=()), cache_dir)
    budget = {k_: v for k_, v in rec.items() if k_.endswith(" epochs") or k_.endswith(" stopped")}
    out["rows"].append(_row(name, VARIANT_NAMES[variant], rec["test"], sec, cmd,
                            **{"t*": cfg.t_star, "K": cfg.k, "valid MRR": rec["valid"]["MRR"],
                               "epochs": _epochs_text(budget), "stopped": _stopped_text(budget)}))
    log(f"[{name}] {VARIANT_NAMES[variant]}: {report.fmt_row(out['rows'][-1])}")

  for model in opts.baselines:
    res = _train_baseline(model, s, opts, seed, ckpt(model))
    out["baselines"][model] = res
    cmd = command(spec, seed, dataclasses.replace(opts, variants=(), baselines=(model,), sweep_t_star=(),
                                                  sweep_k=()), cache_dir)
    out["rows"].append(_row(name, BASELINE_NAMES[model], res["test"], res["train_seconds"], cmd,
                            **{"valid MRR": res["valid_MRR"], "epochs": str(res["epochs"]),
                               "stopped": res["stopped"]}))
    log(f"[{name}] {BASELINE_NAMES[model]}: {report.fmt_row(out['rows'][-1])}")

  pop_fn, pop_params = nonlearned.popularity(s.prep.split.train)
  pop = _evaluate_test(pop_fn, pop_params, s, {})
  out["popularity"] = pop
  cmd = command(spec, seed, dataclasses.replace(opts, variants=(), baselines=(), sweep_t_star=(), sweep_k=()),
                cache_dir)
  out["rows"].append(_row(name, "Popularity", pop, 0.0, cmd))
  log(f"[{name}] Popularity: {report.fmt_row(out['rows'][-1])}")
  return out


def _epochs_text(budget: dict) -> str:
  return "+".join(str(budget[f"{st} epochs"]) for st in tts.STAGES if f"{st} epochs" in budget)


def _stopped_text(budget: dict) -> str:
  return "+".join(budget[f"{st} stopped"] for st in tts.STAGES if f"{st} stopped" in budget)


# -- result assembly ---------------------------------------------------------------------------------


def run_all(specs: Sequence[str], opts: Options, workdir: str, *, seed: int = 0,
            cache_dir: Optional[str] = None, checkpoints: bool = False, command_line: Optional[str] = None,
            log: Callable[[str], None] = print) -> tuple[dict, list[str]]:
  """Runs every dataset, writes ``results.json`` and the figures; returns (results, figure paths)."""
  os.makedirs(workdir, exist_ok=True)
  results: dict[str, Any] = {"command": command_line, "seed": seed, "options": configs.to_dict(opts),
                             "datasets": {}, "rows": []}
  figures: list[str] = []
  t0 = time.perf_counter()
  for spec in specs:
    res = run_dataset(spec, opts, seed=seed, workdir=workdir, cache_dir=cache_dir, checkpoints=checkpoints,
                      log=log)
    results["datasets"][spec] = res
    results["rows"] += res["rows"]
    prefix = "" if len(specs) == 1 else f"{res['stats']['dataset']}_"
    figures += report.make_figures(res, workdir, prefix)
  results["figures"] = [os.path.basename(p) for p in figures]
  results["wall_seconds"] = time.perf_counter() - t0
  common.write_results(workdir, results)
  return results, figures


# -- the main job's entry ------------------------------------------------------------------------------


# The stage-2 settings of the full suite: each change alone, both together, and the theory's rates.
FULL_GRID = ("gru/one-group", "residual/one-group", "gru/mixed", "residual/mixed", "residual/mixed/theory")


def suite_options(suite_name: str) -> Options:
  """Budgets of the main job: quick must stay around 4 minutes on 2 loaded cores (both datasets)."""
  if suite_name == "quick":
    return Options(tts=tts.TwoTimeScaleConfig(t_star=20, k=10, epochs_stage1=3, epochs_stage2=3,
                                              epochs_single=3),
                   base_epochs=2, base_batch_size=512, base_history_len=20, base_negatives=32,
                   base_patience=2)
  # Full: to convergence (patience 3 on validation MRR, 100-epoch caps, 10 minutes per stage / baseline),
  # Appendix C's 64 + 64 dimensions, every stage-2 setting, all twelve of Table 1's baselines.
  return Options(baselines=tuple(BASELINE_NAMES),
                 tts=tts.TwoTimeScaleConfig(t_star=20, k=10, d_id=64, d_feat=64, epochs_stage1=100,
                                            epochs_stage2=100, epochs_single=100),
                 stage2_grid=FULL_GRID, patience=3, time_limit=600.0, base_epochs=100, base_batch_size=256,
                 base_history_len=50, base_negatives=64, sweep_t_star=(10, 20, 50), sweep_k=(10, 20))



def _experiment(ctx: RunContext) -> ExperimentResult:
  opts = suite_options(ctx.suite)
  results, figures = run_all(ctx.datasets, opts, ctx.workdir, seed=ctx.seed, cache_dir=ctx.cache_dir,
                             log=lambda m: None)
  return ExperimentResult(tables=report.tables(results), figures=figures, results=results,
                          notes=["Fig. 2: 2TS curves are test (and validation) sampled MRR on the whole "
                                 "test (validation) set after each epoch (stage-1 epochs scored as CCF); "
                                 "baselines show their validation history (same sampled protocol), "
                                 "time = step x train_seconds / steps (includes their validation time)."])


EXPERIMENT = Experiment(name="two_time_scale", title="Two-time-scale representations (2TS, paper 000)",
                        run=_experiment, order=30)


_CONFIG = None


def define_flags():
  """The binary's flags: ``--config.*`` (:class:`Options`) plus the shared data flags.

  Defined only when run as a program, so importing the module (the main job does) never touches FLAGS.
  """
  global _CONFIG  # pylint: disable=global-statement
  from absl import flags  # pylint: disable=g-import-not-at-top
  common.define_data_flags("chronological", None, ["chronological"])
  flags.DEFINE_list("datasets", None, "Dataset specs (overrides --dataset).")
  flags.DEFINE_bool("checkpoints", True, "Write checkpoints where the method takes a workdir.")
  _CONFIG = configs.define(Options())


@common.friendly_errors
def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  fv = flags.FLAGS
  try:
    opts = configs.value(_CONFIG)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
  specs = fv.datasets or [fv.dataset]
  workdir = fv.workdir or f"runs/two_time_scale/{'+'.join(s.replace(':', '-') for s in specs)}"
  results, figures = run_all(specs, opts, workdir, seed=fv.seed, cache_dir=fv.cache_dir,
                             checkpoints=fv.checkpoints, command_line=common.this_command(),
                             log=lambda m: print(m, flush=True))
  common.print_tables(report.tables(results))
  print(f"\nwrote {os.path.join(workdir, 'results.json')} and {len(figures)} figures in "
        f"{results['wall_seconds']:.0f} s")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  define_flags()
  app.run(main)
