r"""The 2TS experiment (paper 000, Section 5): Table 1 / Table 3 rows and Figures 2-4 on our data.

    python -m experiments.two_time_scale --dataset=synthetic:medium --workdir=runs/2ts-medium \
        --sweep_t_star=10,20,50 --sweep_k=10,20

Protocol (as in the paper): global chronological split 70/10/20; every validation/test interaction is
a query; MRR and Recall@10 against ``--eval_negatives`` (499) uniformly sampled negatives *and* under
full ranking (known positives excluded), side by side. Hyper-parameters are chosen on validation only:
with ``--sweep_t_star``/``--sweep_k`` the binary trains 2TS for every (t*, K) pair, picks the pair with
the best validation MRR (sampled protocol) and reports test for it; every 2TS variant then uses it.

Rows: 2TS, 2TS-Plus, 2TS-SingleStage, 2-GRU, CCF (``jaxrec.methods.two_time_scale``), SumPooling,
GRU4Rec, SASRec (``experiments.train.run``, best epoch on validation MRR with the same sampled
protocol) and Popularity (floor). For the 2TS variants the query of an interaction is the user's state
after the cells consumed the user's earlier (valid, then test) interactions, no gradient step
(``eval_query_vectors``); sequence baselines read the same earlier interactions as their history.

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

from experiments import common, plots
from experiments import train as train_exp
from experiments.registry import Experiment, ExperimentResult, RunContext, Table
from jaxrec.eval import protocols as protocols_lib
from jaxrec.eval import suite
from jaxrec.methods import two_time_scale as tts
from jaxrec.models import nonlearned
from jaxrec.train import fit as fit_lib

MODULE = "experiments.two_time_scale"
VARIANT_NAMES = {"2ts": "2TS", "2ts-plus": "2TS-Plus", "single-stage": "2TS-SingleStage", "2-gru": "2-GRU",
                 "ccf": "CCF"}
BASELINE_NAMES = {"sumpool": "SumPooling", "gru4rec": "GRU4Rec", "sasrec": "SASRec"}
METRICS = ("MRR", "Recall@10")


# TwoTimeScaleConfig fields exposed as flags of the binary.
TTS_FLAGS = ("t_star", "k", "num_offered", "d_id", "d_feat", "lr_stage1", "lr_stage2", "lr_single",
             "epochs_stage1", "epochs_stage2", "epochs_single")


@dataclasses.dataclass(frozen=True)
class Options:
  """Everything a run depends on besides the dataset (each field is a flag of the binary).

  Attributes:
    variants: 2TS variants to train (``tts.VARIANTS``).
    baselines: base models to train (``BASELINE_NAMES``).
    tts: the 2TS hyper-parameters (its fields in ``TTS_FLAGS`` are flags of the binary); ``t_star`` and
      ``k`` are overridden by the validation choice when a sweep is given.
    sweep_t_star, sweep_k: validation grid of (t*, K) for 2TS (empty: no sweep).
    base_epochs, base_batch_size, base_history_len, base_negatives, base_lr, base_patience: baselines
      (base_batch_size counts windows; GRU4Rec and SASRec take FitConfig.sequence_batch_size sequences).
    eval_negatives: sampled negatives of the test (and validation) protocol (499 as in the paper).
    curve_queries: validation/test queries (random subset) evaluated after every 2TS epoch (Fig. 2).
    seed: the one seed (data, split sampling, init, negatives).
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
  eval_negatives: int = 499
  curve_queries: int = 5000
  seed: int = 0

  def __post_init__(self):
    bad = [v for v in self.variants if v not in tts.VARIANTS] + [
        b for b in self.baselines if b not in BASELINE_NAMES]
    if bad:
      raise ValueError(f"unknown variants/baselines {bad}; known {tts.VARIANTS} and {tuple(BASELINE_NAMES)}")

  def flat(self) -> dict:
    """Every option as one flat ``{flag name: value}`` (2TS fields from ``TTS_FLAGS``)."""
    out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "tts"}
    out.update({name: getattr(self.tts, name) for name in TTS_FLAGS})
    return out

  @classmethod
  def from_flat(cls, values: dict) -> "Options":
    """Inverse of :meth:`flat`."""
    tts_values = {k: v for k, v in values.items() if k in TTS_FLAGS}
    rest = {k: v for k, v in values.items() if k not in TTS_FLAGS}
    return cls(tts=tts.TwoTimeScaleConfig(**tts_values), **rest)

  def flags(self, changed_only: bool = False) -> dict:
    """The CLI flags reproducing these options (lists comma-joined); optionally only non-defaults."""
    default = Options().flat()
    return {k: (",".join(map(str, v)) if isinstance(v, tuple) else v) for k, v in self.flat().items()
            if not changed_only or v != default[k]}

  def tts_config(self, variant: str, t_star: Optional[int] = None, k: Optional[int] = None):
    t_star = self.tts.t_star if t_star is None else t_star
    return dataclasses.replace(self.tts, variant=variant, t_star=t_star, k=self.tts.k if k is None else k,
                               seed=self.seed)

  def fit_config(self) -> fit_lib.FitConfig:
    return fit_lib.FitConfig(epochs=self.base_epochs, batch_size=self.base_batch_size,
                             num_negatives=self.base_negatives, history_len=self.base_history_len,
                             learning_rate=self.base_lr, patience=self.base_patience, metric="valid/MRR",
                             valid_negatives=self.eval_negatives)


# -- 2TS evaluation ----------------------------------------------------------------------------------


def _with_vecs(queries, vecs):
  return dataclasses.replace(queries, features={"user_vec": np.asarray(vecs)})


def _subset(queries, protocol, idx):
  """Queries ``idx`` with their frozen sampled candidates."""
  return queries.take(idx), protocols_lib.Candidates(items=protocol.items[idx], desc=protocol.desc)


def _sampled_mrr(score_fn, queries, protocol, num_items) -> float:
  res = protocols_lib.evaluate(score_fn, queries, protocol, num_items, ks=(10,))
  return float(res.summary["MRR"])


@dataclasses.dataclass
class _Setup:
  """Data, queries and frozen protocols of one dataset."""

  prep: common.Prepared
  feats: Optional[jax.Array]
  seqs: Any
  num_valid: int
  train_counts: np.ndarray
  new_users: np.ndarray
  test_protocols: dict
  valid_sampled: Any
  sampled_name: str
  curve_valid: tuple
  curve_test: tuple


def _setup(spec: str, opts: Options, cache_dir: Optional[str]) -> _Setup:
  prep = common.prepare(spec, "chronological", seed=opts.seed, cache_dir=cache_dir)
  sp = prep.split
  feats = None if sp.train.item_features is None else jnp.asarray(sp.train.item_features)
  protos = suite.standard_protocols(num_negatives=opts.eval_negatives, seed=opts.seed)
  test_protocols = suite.freeze_protocols(protos, prep.test_queries, prep.num_items)
  name = f"sampled{opts.eval_negatives}"
  valid_sampled = suite.freeze_protocols({name: protos[name]}, prep.valid_queries, prep.num_items)[name]
  rng = np.random.default_rng(opts.seed)

  def pick(n):
    return np.sort(rng.choice(n, size=min(n, opts.curve_queries), replace=False))

  vi, ti = pick(len(prep.valid_queries)), pick(len(prep.test_queries))
  return _Setup(prep=prep, feats=feats, seqs=tts.prepare_eval_sequences([sp.valid, sp.test]),
                num_valid=len(sp.valid), train_counts=sp.train.user_counts(),
                new_users=common.new_user_mask(prep), test_protocols=test_protocols,
                valid_sampled=valid_sampled, sampled_name=name,
                curve_valid=(vi,) + _subset(prep.valid_queries, valid_sampled, vi),
                curve_test=(ti,) + _subset(prep.test_queries, test_protocols[name], ti))


def _query_vectors(cfg, params, data, s: _Setup):
  eq = tts.eval_query_vectors(cfg, params, data, s.seqs, s.feats)
  return eq, tts.item_table(cfg, params, s.feats)


def _valid_fn(cfg, data, s: _Setup, with_test: bool = False) -> Callable:
  """Per-epoch sampled MRR on the curve subsets: ``"mrr"`` (validation) keeps each stage's best epoch.

  With ``with_test`` the same query vectors also give ``"test_MRR"`` (Fig. 2 only; never used for
  selection), so one evaluation rollout per epoch serves both. Stage-1 epochs are scored as CCF (the
  static phi_u), later stages with the variant's own queries.
  """
  ccf = dataclasses.replace(cfg, variant="ccf")
  curves = [("mrr", s.curve_valid, 0)] + ([("test_MRR", s.curve_test, s.num_valid)] if with_test else [])

  def eval_fn(stage, params):
    eq, table = _query_vectors(ccf if stage == "stage1" else cfg, params, data, s)
    score_fn = tts.make_score_fn(table)
    return {name: _sampled_mrr(score_fn, _with_vecs(q, eq.user_vec[offset + idx]), proto, s.prep.num_items)
            for name, (idx, q, proto), offset in curves}

  return eval_fn


def _train_tts(cfg, s: _Setup, workdir=None, data=None, with_test_curve: bool = False):
  """Trains one variant, keeping each stage's best epoch on validation MRR."""
  if data is None:
    data = tts.prepare_training_data(s.prep.split.train, cfg.t_star, cfg.k)
  t0 = time.perf_counter()
  res = tts.train(cfg, s.prep.split.train, eval_fn=_valid_fn(cfg, data, s, with_test_curve), metric="mrr",
                  workdir=workdir)
  return res, time.perf_counter() - t0


def _evaluate_tts(cfg, res, s: _Setup) -> tuple[dict, dict, Any]:
  """(test results per protocol, validation sampled summary, EvalQueries)."""
  eq, table = _query_vectors(cfg, res.params, res.data, s)
  score_fn = tts.make_score_fn(table)
  test_q = _with_vecs(s.prep.test_queries, eq.user_vec[s.num_valid:])
  test = suite.evaluate_all(score_fn, test_q, s.prep.num_items, s.test_protocols,
                            train_counts=s.train_counts, new_users=s.new_users)
  valid_q = _with_vecs(s.prep.valid_queries, eq.user_vec[:s.num_valid])
  valid = protocols_lib.evaluate(score_fn, valid_q, s.valid_sampled, s.prep.num_items, ks=(10,)).summary
  return test, {k: float(v) for k, v in valid.items()}, eq


def _moves(eq, num_bins: int = 12) -> dict:
  """Mean ``||phi_{t+1} - phi_t||`` by interactions seen (log bins), active vs inactive (Fig. 4)."""
  seen = eq.seen.astype(np.int64)
  edges = np.unique(np.concatenate([[0, 1, 2, 3, 5], np.geomspace(8, max(seen.max(initial=1) + 1, 9),
                                                                     num_bins).astype(np.int64)]))
  edges[-1] = max(edges[-1], seen.max(initial=0) + 1)
  out = {"edges": edges.tolist()}
  for name, sel in (("active", eq.active), ("inactive", ~eq.active)):
    b = np.searchsorted(edges, seen[sel], side="right") - 1
    sums = np.bincount(b, weights=eq.move[sel], minlength=len(edges) - 1)
    cnt = np.bincount(b, minlength=len(edges) - 1)
    out[name] = {"mean": np.where(cnt > 0, sums / np.maximum(cnt, 1), np.nan).tolist(),
                 "count": cnt.tolist(), "overall": float(eq.move[sel].mean()) if sel.any() else float("nan"),
                 "first10": float(eq.move[sel & (eq.seen < 10)].mean()) if (sel & (eq.seen < 10)).any()
                 else float("nan")}
  return out


def _theory(cfg, res) -> dict:
  """Var_m and a lower bound of Q from stage-1 embeddings of trained users (see the module report)."""
  from theory import two_time_scale as theory_lib  # pylint: disable=g-import-not-at-top
  counts = res.data.counts
  phi = np.asarray(res.params["user"])[counts > 0]
  m = phi.mean(axis=0)
  var_m = float(np.mean(np.sum((phi - m) ** 2, axis=1)))
  q_lb = float(np.mean(np.sum(phi ** 2, axis=1)))
  return {"var_m": var_m, "q_lower_bound": q_lb, "ratio_lower_bound": q_lb / var_m,
          "t_star_star_lower_bound": int(theory_lib.t_star_corrected(q_lb / var_m)),
          "note": "Q = E max{(B_x + c B_phi)^2 / c^2, ||phi*||^2} is unbounded for our loss (c = 0, no L2 "
                  "term); only Q >= E||phi_u||^2 is estimable, hence only a lower bound of "
                  "t** = ceil(Q/Var_m) - 1."}


# -- one dataset -------------------------------------------------------------------------------------


def _row(dataset, method, results, seconds, command, **extra) -> dict:
  return {"dataset": dataset, "method": method, **extra, **suite.flat_row(results, METRICS),
          "train s": round(float(seconds), 1), "command": command}


def run_dataset(spec: str, opts: Options, *, workdir: Optional[str] = None, cache_dir: Optional[str] = None,
                checkpoints: bool = False, log: Callable[[str], None] = print) -> dict:
  """Trains and evaluates every row on one dataset; returns a JSON-able dict (rows, curves, configs)."""
  s = _setup(spec, opts, cache_dir)
  name = s.prep.name
  base_flags = {"dataset": spec, **opts.flags(changed_only=True)}
  if cache_dir:
    base_flags["cache_dir"] = cache_dir

  def command(**override):
    return common.command_line(MODULE, {**base_flags, **override})

  out: dict[str, Any] = {"dataset": spec, "stats": common.stats_row(s.prep), "options": opts.flags(),
                         "rows": [], "tts": {}, "baselines": {}, "sweep": []}
  # Validation sweep over (t*, K) for 2TS.
  t_star, k = opts.tts.t_star, opts.tts.k
  grid = list(itertools.product(opts.sweep_t_star or (t_star,), opts.sweep_k or (k,)))
  if len(grid) > 1:
    for ts_, k_ in grid:
      cfg = opts.tts_config("2ts", ts_, min(k_, max(ts_, 1)))
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
  chosen_flags = {"t_star": t_star, "k": k, "sweep_t_star": "", "sweep_k": ""}

  for variant in opts.variants:
    cfg = opts.tts_config(variant, t_star, min(k, max(t_star, 1)))
    data = tts.prepare_training_data(s.prep.split.train, cfg.t_star, cfg.k)
    ckpt = os.path.join(workdir, "checkpoints", name, variant) if (checkpoints and workdir) else None
    res, sec = _train_tts(cfg, s, ckpt, data, with_test_curve=variant == "2ts")
    test, valid, eq = _evaluate_tts(cfg, res, s)
    rec = {"config": dataclasses.asdict(cfg), "train_seconds": sec, "test": test, "valid": valid,
           "history": res.history}
    if cfg.has_cells:
      rec["moves"] = _moves(eq)
    if variant == "2ts":
      rec["theory"] = _theory(cfg, res)
    out["tts"][variant] = rec
    out["rows"].append(_row(name, VARIANT_NAMES[variant], test, sec,
                            command(**chosen_flags, variants=variant, baselines=""), **{"t*": cfg.t_star,
                                                                                          "K": cfg.k}))
    log(f"[{name}] {VARIANT_NAMES[variant]}: {_fmt_row(out['rows'][-1])}")

  fit_config = opts.fit_config()
  for model in opts.baselines:
    ckpt = os.path.join(workdir, "checkpoints", name, model) if (checkpoints and workdir) else None
    res = train_exp.run(model, spec, "chronological", config=fit_config, seed=opts.seed, workdir=ckpt,
                        protocol="both", eval_negatives=opts.eval_negatives, prepared=s.prep)
    out["baselines"][model] = res
    out["rows"].append(_row(name, BASELINE_NAMES[model], res["test"], res["train_seconds"],
                            command(variants="", baselines=model, sweep_t_star="", sweep_k="")))
    log(f"[{name}] {BASELINE_NAMES[model]}: {_fmt_row(out['rows'][-1])}")

  pop = suite.evaluate_all(nonlearned.popularity(s.prep.split.train), s.prep.test_queries, s.prep.num_items,
                           s.test_protocols, train_counts=s.train_counts, new_users=s.new_users)
  out["popularity"] = pop
  out["rows"].append(_row(name, "Popularity", pop, 0.0,
                          command(variants="", baselines="", sweep_t_star="", sweep_k="")))
  log(f"[{name}] Popularity: {_fmt_row(out['rows'][-1])}")
  return out


def _fmt_row(row: dict) -> str:
  return "  ".join(f"{k}={v:.4f}" for k, v in row.items() if isinstance(v, float) and k != "train s") + (
      f"  ({row['train s']} s)")


# -- figures -----------------------------------------------------------------------------------------


def make_figures(res: dict, workdir: str, prefix: str = "") -> list[str]:
  """Figures 2-4 and the threshold sweep of one dataset's results (PNG, written atomically)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  paths = []
  name = res["stats"]["dataset"]
  sampled = f"sampled{res['options']['eval_negatives']}"
  chosen_t = res["chosen"]["t_star"]

  # Fig. 2: MRR vs cumulative training wall time.
  fig, ax = plt.subplots(figsize=(6, 4))
  hist = res["tts"].get("2ts", {}).get("history", [])
  for stage, style in (("stage1", "o-"), ("stage2", "s-")):
    pts = [(r["wall_time"], r["test_MRR"], r["mrr"]) for r in hist if r.get("stage") == stage
           and "test_MRR" in r]
    if pts:
      t, te, va = zip(*pts)
      ax.plot(t, te, style, label=f"2TS-{stage} (test)")
      ax.plot(t, va, style[0] + ":", alpha=0.6, label=f"2TS-{stage} (valid)")
  for model, r in res["baselines"].items():
    evals = r["valid_history"]
    steps = max((e["step"] for e in evals), default=0)
    if evals and steps:
      per_step = r["train_seconds"] / steps
      ax.plot([e["step"] * per_step for e in evals], [e["valid/MRR"] for e in evals], "^--",
              label=f"{BASELINE_NAMES.get(model, model)} (valid)")
  ax.set_xlabel("cumulative training wall time (s)")
  ax.set_ylabel(f"MRR ({sampled})")
  ax.set_title(f"Fig. 2: MRR vs training time ({name})")
  ax.legend(fontsize=7)
  paths.append(plots.save(fig, os.path.join(workdir, f"{prefix}fig2_mrr_vs_time.png")))

  # Fig. 3: test MRR by user segment (training interactions).
  fig, ax = plt.subplots(figsize=(7, 4))
  labels = None
  methods = [(VARIANT_NAMES[v], r["test"]) for v, r in res["tts"].items()]
  methods += [(BASELINE_NAMES[m], r["test"]) for m, r in res["baselines"].items()]
  methods.append(("Popularity", res["popularity"]))
  for method, test in methods:
    seg = test[sampled]["segments"].get("activity", {})
    labels = labels or list(seg)
    ax.plot(range(len(labels)), [seg.get(lab, {}).get("MRR", np.nan) for lab in labels], "o-", label=method)
  if labels:
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, fontsize=7)
    ax.axvline(_label_position(labels, chosen_t), ls="--", c="k", lw=1, label=f"t* = {chosen_t}")
  ax.set_xlabel("#interactions in training set")
  ax.set_ylabel(f"test MRR ({sampled})")
  ax.set_title(f"Fig. 3: test MRR by user segment ({name})")
  ax.legend(fontsize=7, ncol=2)
  paths.append(plots.save(fig, os.path.join(workdir, f"{prefix}fig3_mrr_by_segment.png")))

  # Fig. 4: embedding movement, active vs inactive.
  mv = res["tts"].get("2ts", {}).get("moves")
  if mv:
    fig, ax = plt.subplots(figsize=(6, 4))
    edges = np.asarray(mv["edges"], np.float64)
    mid = np.sqrt(np.maximum(edges[:-1], 0.5) * edges[1:])
    for group in ("inactive", "active"):
      ax.plot(mid, mv[group]["mean"], "o-", label=f"{group} users")
    ax.set_xscale("log")
    ax.set_xlabel("#interactions seen after training (valid + test)")
    ax.set_ylabel("mean ||phi_{t+1} - phi_t||")
    ax.set_title(f"Fig. 4: two-time-scale behaviour (2TS, t*={chosen_t}, {name})")
    ax.legend()
    paths.append(plots.save(fig, os.path.join(workdir, f"{prefix}fig4_embedding_moves.png")))

  # Threshold sweep with the theory's t** (lower bound) for comparison.
  if res["sweep"]:
    fig, ax = plt.subplots(figsize=(6, 4))
    for k in sorted({r["k"] for r in res["sweep"]}):
      pts = sorted((r["t_star"], r["valid MRR"], r["test MRR"]) for r in res["sweep"] if r["k"] == k)
      t, va, te = zip(*pts)
      ax.plot(t, va, "o-", label=f"valid, K={k}")
      ax.plot(t, te, "s--", label=f"test, K={k}")
    th = res["tts"].get("2ts", {}).get("theory")
    if th:
      lb = th["t_star_star_lower_bound"]
      ax.axvline(lb, c="r", ls=":", label=f"theory t** >= {lb} (Q lower bound)")
    ax.axvline(chosen_t, c="k", ls="--", lw=1, label=f"chosen t* = {chosen_t}")
    ax.set_xlabel("threshold t*")
    ax.set_ylabel(f"MRR ({sampled})")
    ax.set_title(f"2TS threshold sweep ({name})")
    ax.legend(fontsize=7)
    paths.append(plots.save(fig, os.path.join(workdir, f"{prefix}fig_threshold_sweep.png")))
  return paths


def _label_position(labels: Sequence[str], t: float) -> float:
  """x position of count ``t`` on an axis of ``"[lo,hi)"`` bucket labels (interpolated in the bucket)."""
  for i, lab in enumerate(labels):
    lo, hi = lab.strip("[)").split(",")
    lo, hi = float(lo), float(hi)
    if lo <= t < hi:
      return i - 0.5 + (t - lo) / (hi - lo) if np.isfinite(hi) else i
  return len(labels) - 0.5


# -- result assembly ---------------------------------------------------------------------------------


def run_all(specs: Sequence[str], opts: Options, workdir: str, *, cache_dir: Optional[str] = None,
            checkpoints: bool = False, command: Optional[str] = None,
            log: Callable[[str], None] = print) -> tuple[dict, list[str]]:
  """Runs every dataset, writes ``results.json`` and the figures; returns (results, figure paths)."""
  os.makedirs(workdir, exist_ok=True)
  results: dict[str, Any] = {"command": command, "options": opts.flags(), "datasets": {}, "rows": []}
  figures: list[str] = []
  t0 = time.perf_counter()
  for spec in specs:
    res = run_dataset(spec, opts, workdir=workdir, cache_dir=cache_dir, checkpoints=checkpoints, log=log)
    results["datasets"][spec] = res
    results["rows"] += res["rows"]
    prefix = "" if len(specs) == 1 else f"{res['stats']['dataset']}_"
    figures += make_figures(res, workdir, prefix)
  results["figures"] = [os.path.basename(p) for p in figures]
  results["wall_seconds"] = time.perf_counter() - t0
  common.write_results(workdir, results)
  return results, figures


def _tables(results: dict) -> list[Table]:
  rows = results["rows"]
  tables = [Table("2TS vs baselines (chronological 70/10/20, test)", common.table_columns(rows), rows,
                  caption="Every valid/test interaction is a query. sampledN = 1 positive + N uniform "
                          "negatives (known positives excluded); full = full ranking, known positives "
                          "excluded. t*/K chosen on validation MRR; baselines keep their best epoch on "
                          "validation MRR (same sampled protocol).")]
  sweep = [{"dataset": spec, **r} for spec, d in results["datasets"].items() for r in d["sweep"]]
  if sweep:
    tables.append(Table("2TS threshold sweep (validation picks t*, K)", common.table_columns(sweep), sweep))
  moves = []
  for spec, d in results["datasets"].items():
    mv = d["tts"].get("2ts", {}).get("moves")
    th = d["tts"].get("2ts", {}).get("theory", {})
    if mv:
      moves.append({"dataset": spec, "mean move inactive": mv["inactive"]["overall"],
                    "mean move active": mv["active"]["overall"],
                    "first 10, inactive": mv["inactive"]["first10"],
                    "first 10, active": mv["active"]["first10"],
                    "Var_m": th.get("var_m"), "t** lower bound": th.get("t_star_star_lower_bound")})
  if moves:
    tables.append(Table("Two-time-scale behaviour (Fig. 4) and theory", common.table_columns(moves), moves))
  return tables


# -- the main job's entry ------------------------------------------------------------------------------


def suite_options(suite_name: str, seed: int = 0) -> Options:
  """Budgets of the main job: quick must stay around 4 minutes on 2 loaded cores (both datasets)."""
  if suite_name == "quick":
    return Options(tts=tts.TwoTimeScaleConfig(t_star=20, k=10, epochs_stage1=3, epochs_stage2=3,
                                              epochs_single=3),
                   base_epochs=2, base_batch_size=512, base_history_len=20, base_negatives=32,
                   base_patience=2, curve_queries=1000, seed=seed)
  return Options(tts=tts.TwoTimeScaleConfig(t_star=20, k=10), base_epochs=10, base_batch_size=256,
                 base_history_len=50, base_negatives=64, sweep_t_star=(10, 20, 50), sweep_k=(10, 20),
                 seed=seed)


def _experiment(ctx: RunContext) -> ExperimentResult:
  opts = suite_options(ctx.suite, ctx.seed)
  results, figures = run_all(ctx.datasets, opts, ctx.workdir, cache_dir=ctx.cache_dir, log=lambda m: None)
  return ExperimentResult(tables=_tables(results), figures=figures, results=results,
                          notes=["Fig. 2: 2TS curves are test (and validation) MRR on a random subset of "
                                 f"{opts.curve_queries} queries after each epoch (stage-1 epochs scored as "
                                 "CCF); baselines show their validation history (same sampled protocol), "
                                 "time = step x train_seconds / steps (includes their validation time)."])


EXPERIMENT = Experiment(name="two_time_scale", title="Two-time-scale representations (2TS, paper 000)",
                        run=_experiment, order=30)


def _define_flags():
  """The binary's flags: one per ``Options`` field plus the dataset/output flags.

  Defined only when run as a program, so importing the module (the main job does) never touches FLAGS.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  d = Options().flat()
  specs = [("list", "datasets", None, "Dataset specs (overrides --dataset)."),
           ("string", "dataset", "synthetic:small", "Dataset spec (see jaxrec.data.datasets)."),
           ("string", "workdir", None, "Output directory (results.json, figures, checkpoints)."),
           ("string", "cache_dir", None, "Cache for public files."),
           ("bool", "checkpoints", True, "Write checkpoints where the method takes a workdir.")]
  for name, default in d.items():
    kind = ("list" if isinstance(default, tuple) else "float" if isinstance(default, float) else "integer")
    where = "TwoTimeScaleConfig" if name in TTS_FLAGS else "Options"
    specs.append((kind, name, [str(x) for x in default] if kind == "list" else default, f"{where}.{name}."))
  for kind, name, default, help_ in specs:
    getattr(flags, f"DEFINE_{kind}")(name, default, help_)
  return flags.FLAGS


@common.friendly_errors
def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  fv = flags.FLAGS
  kw = {}
  for name, default in Options().flat().items():
    v = fv[name].value
    if isinstance(default, tuple):
      v = tuple(int(x) if name.startswith("sweep") else x for x in v if x != "")
    kw[name] = v
  opts = Options.from_flat(kw)
  specs = fv.datasets or [fv.dataset]
  workdir = fv.workdir or f"runs/two_time_scale/{'+'.join(s.replace(':', '-') for s in specs)}"
  results, figures = run_all(specs, opts, workdir, cache_dir=fv.cache_dir, checkpoints=fv.checkpoints,
                             command=common.this_command(), log=lambda m: print(m, flush=True))
  for table in _tables(results):
    print(f"\n## {table.title}")
    cols = [c for c in table.columns if c != "command"]
    print(" | ".join(cols))
    for r in table.rows:
      print(" | ".join(f"{r.get(c):.4f}" if isinstance(r.get(c), float) else str(r.get(c)) for c in cols))
  print(f"\nwrote {os.path.join(workdir, 'results.json')} and {len(figures)} figures in "
        f"{results['wall_seconds']:.0f} s")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(main)
