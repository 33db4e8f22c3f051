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
from jaxrec.eval import protocols as protocols_lib
from jaxrec.eval import suite
from jaxrec.methods import two_time_scale as tts
from jaxrec.models import nonlearned, registry
from jaxrec.train import fit as fit_lib

MODULE = "experiments.two_time_scale"
PROTOCOL = "2ts-chronological"
VARIANT_NAMES = report.VARIANT_NAMES
BASELINE_NAMES = report.BASELINE_NAMES
METRICS = ("MRR", "Recall@10")


@dataclasses.dataclass(frozen=True)
class Options:
  """Everything a run depends on besides the dataset and the seed (each field is a ``--config`` flag).

  Attributes:
    variants: 2TS variants to train (``tts.VARIANTS``).
    baselines: base models to train (``BASELINE_NAMES``).
    tts: the 2TS hyper-parameters (``--config.tts.FIELD``); ``t_star`` and ``k`` are overridden by the
      validation choice when a sweep is given, ``seed`` by the run's seed.
    sweep_t_star, sweep_k: validation grid of (t*, K) for 2TS (empty: no sweep).
    base_epochs, base_batch_size, base_history_len, base_negatives, base_lr, base_patience: baselines
      (base_batch_size counts windows; GRU4Rec and SASRec take FitConfig.sequence_batch_size sequences).
    eval_negatives: sampled negatives per query; 0: the protocol's (499, as in the paper). Only for data
      with too few items (``synthetic:tiny`` has 100).
  """

  variants: tuple[str, ...] = tts.VARIANTS
  baselines: tuple[str, ...] = tuple(BASELINE_NAMES)
  tts: tts.TwoTimeScaleConfig = tts.TwoTimeScaleConfig()
  sweep_t_star: tuple[int, ...] = ()
  sweep_k: tuple[int, ...] = ()
  base_epochs: int = 10
  base_batch_size: int = 256
  base_history_len: int = 50
  base_negatives: int = 100
  base_lr: float = 1e-3
  base_patience: int = 3
  eval_negatives: int = 0

  def __post_init__(self):
    bad = [v for v in self.variants if v not in tts.VARIANTS] + [
        b for b in self.baselines if b not in BASELINE_NAMES]
    if bad:
      raise ValueError(f"unknown variants/baselines {bad}; known {tts.VARIANTS} and {tuple(BASELINE_NAMES)}")

  def tts_config(self, variant: str, seed: int, t_star: Optional[int] = None,
                 k: Optional[int] = None) -> tts.TwoTimeScaleConfig:
    return dataclasses.replace(self.tts, variant=variant, seed=seed,
                               t_star=self.tts.t_star if t_star is None else t_star,
                               k=self.tts.k if k is None else k)

  def fit_config(self) -> fit_lib.FitConfig:
    return fit_lib.FitConfig(epochs=self.base_epochs, batch_size=self.base_batch_size,
                             num_negatives=self.base_negatives, history_len=self.base_history_len,
                             learning_rate=self.base_lr, patience=self.base_patience, metric="valid/MRR",
                             progress=False)


def command(spec: str, seed: int, opts: Options, cache_dir: Optional[str] = None) -> str:
  """``python -m experiments.two_time_scale`` reproducing ``opts`` (only non-default ``--config`` fields)."""
  flags = {"dataset": spec, "seed": seed, "cache_dir": cache_dir}
  flags.update({k: (repr(v) if isinstance(v, tuple) else v)
                for k, v in configs.overrides(opts, Options()).items()})
  return common.command_line(MODULE, flags)


# -- data, protocol and 2TS evaluation -----------------------------------------------------------------


@dataclasses.dataclass
class _Setup:
  """Data, queries, evaluation sequences and frozen protocols of one dataset."""

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


def _setup(spec: str, seed: int, cache_dir: Optional[str], eval_negatives: int = 0) -> _Setup:
  prep = common.prepare(spec, "chronological", seed=seed, cache_dir=cache_dir, protocol=PROTOCOL)
  wanted = eval_negatives or prep.protocol.num_negatives
  # Capped, with a warning, at what every validation and test query can have (synthetic:tiny).
  wanted = fit_lib.capped_negatives(prep.valid_queries, prep.num_items, wanted, "validation")
  wanted = fit_lib.capped_negatives(prep.test_queries, prep.num_items, wanted, "test")
  if wanted != prep.protocol.num_negatives:
    prep = dataclasses.replace(prep, protocol=prep.protocol.replace(num_negatives=wanted))
  sp = prep.split
  feats = None if sp.train.item_features is None else jnp.asarray(sp.train.item_features)
  rankings = prep.protocol.rankings(sp.train.item_counts())
  name = next(k for k in rankings if k.startswith("sampled"))
  test_protocols = suite.freeze_protocols(rankings, prep.test_queries, prep.num_items)
  valid_sampled = suite.freeze_protocols({name: rankings[name]}, prep.valid_queries, prep.num_items)[name]
  return _Setup(prep=prep, feats=feats, valid_seqs=tts.prepare_eval_sequences([sp.valid]),
                all_seqs=tts.prepare_eval_sequences([sp.valid, sp.test]), num_valid=len(sp.valid),
                train_counts=sp.train.user_counts(), new_users=common.new_user_mask(prep),
                test_protocols=test_protocols, valid_sampled=valid_sampled,
                test_sampled=test_protocols[name], sampled_name=name)


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


def _train_tts(cfg, s: _Setup, workdir=None, with_test_curve: bool = False):
  """Trains one variant, keeping each stage's best epoch on validation MRR."""
  data = tts.prepare_training_data(s.prep.split.train, cfg.t_star, cfg.k)
  t0 = time.perf_counter()
  res = tts.train(cfg, s.prep.split.train, eval_fn=_valid_fn(cfg, data, s, with_test_curve), metric="mrr",
                  workdir=workdir)
  return res, time.perf_counter() - t0


def _evaluate_tts(cfg, res, s: _Setup) -> tuple[dict, dict, Any]:
  """(test results per protocol, validation sampled summary, EvalQueries of validation + test)."""
  eq = tts.eval_query_vectors(cfg, res.params, res.data, s.all_seqs, s.feats)
  table = tts.item_table(cfg, res.params, s.feats)
  test_q = _with_vecs(s.prep.test_queries, eq.user_vec[s.num_valid:])
  test = suite.evaluate_all(tts.table_scores, table, test_q, s.prep.num_items, s.test_protocols,
                            train_counts=s.train_counts, new_users=s.new_users)
  valid_q = _with_vecs(s.prep.valid_queries, eq.user_vec[:s.num_valid])
  valid = protocols_lib.evaluate(tts.table_scores, table, valid_q, s.valid_sampled, s.prep.num_items,
                                 ks=(10,)).summary
  return test, {k: float(v) for k, v in valid.items()}, eq


def _train_baseline(model: str, s: _Setup, opts: Options, seed: int, workdir: Optional[str]) -> dict:
  """Fits ``model`` with its best epoch on the whole validation set (the 2TS validation candidates)."""
  spec = registry.get(model)
  sp = s.prep.split
  config = opts.fit_config()
  logs = [sp.train, sp.valid, sp.test]
  hist = fit_lib.history_len_for(model, config)
  valid_q = dataclasses.replace(s.prep.valid_queries, features=fit_lib.query_features(spec, logs, 1, hist))
  test_q = dataclasses.replace(s.prep.test_queries, features=fit_lib.query_features(spec, logs, 2, hist))
  fitted = fit_lib.fit(model, sp.train, valid_q, config, seed=seed, workdir=workdir,
                       valid_protocol=s.valid_sampled)
  test = suite.evaluate_all(fitted.score_fn, fitted.params, test_q, s.prep.num_items, s.test_protocols,
                            train_counts=s.train_counts, new_users=s.new_users)
  evals = [r for r in fitted.history if any(k.startswith("valid/") for k in r)]
  return {"model": model, "config": dataclasses.asdict(config), "train_seconds": fitted.train_seconds,
          "best_step": fitted.best_step, "valid_history": evals, "test": test}


# -- one dataset -------------------------------------------------------------------------------------


def _row(dataset, method, results, seconds, cmd, **extra) -> dict:
  return {"dataset": dataset, "method": method, **extra, **suite.flat_row(results, METRICS),
          "train s": round(float(seconds), 1), "command": cmd}


def run_dataset(spec: str, opts: Options, *, seed: int = 0, workdir: Optional[str] = None,
                cache_dir: Optional[str] = None, checkpoints: bool = False,
                log: Callable[[str], None] = print) -> dict:
  """Trains and evaluates every row on one dataset; returns a JSON-able dict (rows, curves, configs)."""
  s = _setup(spec, seed, cache_dir, opts.eval_negatives)
  name = s.prep.name
  out: dict[str, Any] = {"dataset": spec, "stats": common.stats_row(s.prep), "options": configs.to_dict(opts),
                         "protocol": s.prep.protocol.describe(), "sampled_name": s.sampled_name,
                         "rows": [], "tts": {}, "baselines": {}, "sweep": []}
  # Validation sweep over (t*, K) for 2TS.
  t_star, k = opts.tts.t_star, opts.tts.k
  grid = list(itertools.product(opts.sweep_t_star or (t_star,), opts.sweep_k or (k,)))
  if len(grid) > 1:
    for ts_, k_ in grid:
      cfg = opts.tts_config("2ts", seed, ts_, min(k_, max(ts_, 1)))
      res, sec = _train_tts(cfg, s)
      test, valid, _ = _evaluate_tts(cfg, res, s)
      rec = {"t_star": ts_, "k": cfg.k, "valid MRR": valid["MRR"],
             "test MRR": test[s.sampled_name]["summary"]["MRR"], "train s": sec}
      out["sweep"].append(rec)
      log(f"[{name}] sweep t*={ts_} K={cfg.k}: valid MRR={rec['valid MRR']:.4f} "
          f"test MRR={rec['test MRR']:.4f}")
    best = max(out["sweep"], key=lambda r: r["valid MRR"])
    t_star, k = best["t_star"], best["k"]
  out["chosen"] = {"t_star": t_star, "k": k}
  chosen = dataclasses.replace(opts, tts=dataclasses.replace(opts.tts, t_star=t_star, k=k), sweep_t_star=(),
                               sweep_k=())

  for variant in opts.variants:
    cfg = opts.tts_config(variant, seed, t_star, min(k, max(t_star, 1)))
    ckpt = os.path.join(workdir, "checkpoints", name, variant) if (checkpoints and workdir) else None
    res, sec = _train_tts(cfg, s, ckpt, with_test_curve=variant == "2ts")
    test, valid, eq = _evaluate_tts(cfg, res, s)
    rec = {"config": dataclasses.asdict(cfg), "train_seconds": sec, "test": test, "valid": valid,
           "history": res.history}
    if cfg.has_cells:
      rec["moves"] = report.embedding_moves(eq)
    if variant == "2ts":
      rec["theory"] = report.theory(cfg, res)
    out["tts"][variant] = rec
    cmd = command(spec, seed, dataclasses.replace(chosen, variants=(variant,), baselines=()), cache_dir)
    out["rows"].append(_row(name, VARIANT_NAMES[variant], test, sec, cmd, **{"t*": cfg.t_star, "K": cfg.k}))
    log(f"[{name}] {VARIANT_NAMES[variant]}: {report.fmt_row(out['rows'][-1])}")

  for model in opts.baselines:
    ckpt = os.path.join(workdir, "checkpoints", name, model) if (checkpoints and workdir) else None
    res = _train_baseline(model, s, opts, seed, ckpt)
    out["baselines"][model] = res
    cmd = command(spec, seed, dataclasses.replace(opts, variants=(), baselines=(model,), sweep_t_star=(),
                                                  sweep_k=()), cache_dir)
    out["rows"].append(_row(name, BASELINE_NAMES[model], res["test"], res["train_seconds"], cmd))
    log(f"[{name}] {BASELINE_NAMES[model]}: {report.fmt_row(out['rows'][-1])}")

  pop_fn, pop_params = nonlearned.popularity(s.prep.split.train)
  pop = suite.evaluate_all(pop_fn, pop_params, s.prep.test_queries, s.prep.num_items, s.test_protocols,
                           train_counts=s.train_counts, new_users=s.new_users)
  out["popularity"] = pop
  cmd = command(spec, seed, dataclasses.replace(opts, variants=(), baselines=(), sweep_t_star=(), sweep_k=()),
                cache_dir)
  out["rows"].append(_row(name, "Popularity", pop, 0.0, cmd))
  log(f"[{name}] Popularity: {report.fmt_row(out['rows'][-1])}")
  return out


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


def suite_options(suite_name: str) -> Options:
  """Budgets of the main job: quick must stay around 4 minutes on 2 loaded cores (both datasets)."""
  if suite_name == "quick":
    return Options(tts=tts.TwoTimeScaleConfig(t_star=20, k=10, epochs_stage1=3, epochs_stage2=3,
                                              epochs_single=3),
                   base_epochs=2, base_batch_size=512, base_history_len=20, base_negatives=32,
                   base_patience=2)
  return Options(tts=tts.TwoTimeScaleConfig(t_star=20, k=10), base_epochs=10, base_batch_size=256,
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
  for table in report.tables(results):
    print(f"\n## {table.title}")
    cols = [c for c in table.columns if c != "command"]
    print(" | ".join(cols))
    for r in table.rows:
      print(" | ".join(f"{r.get(c):.4f}" if isinstance(r.get(c), float) else str(r.get(c)) for c in cols))
  print(f"\nwrote {os.path.join(workdir, 'results.json')} and {len(figures)} figures in "
        f"{results['wall_seconds']:.0f} s")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  define_flags()
  app.run(main)
