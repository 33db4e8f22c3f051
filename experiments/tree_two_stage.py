r"""The tree two-stage experiment (paper 004, Figure 1, Table 1, Proposition 4.1) on our data.

    python -m experiments.tree_two_stage --dataset=ml-100k --workdir=runs/t2s-ml100k
    python -m experiments.tree_two_stage --datasets=synthetic:small,ml-100k --workdir=runs/t2s \
        --config.branch_sweep="(2,4,8,16,32)" --config.t2s.retriever_epochs=4 --config.t2s.ranker_epochs=4

Protocol (Appendix D.2): repeated (user, item) rows dropped, users with <= 15 interactions dropped,
then the named ``"context-holdout"`` protocol (:mod:`jaxrec.eval.paper_protocols`; 10% validation and
10% test users, disjoint, their first half context, which also trains, the rest ground truth). Training
samples are sliding windows (69 context items + the target) over the training rows. Every held-out user
is one query whose ground truth is all of their held-out items (grouped queries); lists are evaluated
by the top-K protocol (:func:`jaxrec.eval.protocols.evaluate_top_k`: rank = position in the returned
list, a miss beyond it): Precision@1 = the first item is in the truth set (the paper's "top-1
classification accuracy"), Recall@K = |list ∩ truth| / |truth|.

Rows:

* Table 1: for each K in ``ks``, the two-stage Precision@1 and Recall@K of TS (DIN trained on every
  window) and H-TS (DIN trained on the windows whose target the width-K beam retrieves), one fixed
  retriever; the retriever's own Recall@K and P@1 (its leaf-score order) beside them.
* Proposition 4.1: P_two = P_ret + P~_rank(K) (1 - P_ret), measured terms and prediction, per user
  (truth sets) and per (user, item) pair, and Corollary 4.2 against the ranker alone over all items.
* Figure 1 (``branch_sweep``): retriever Recall@20 with a beam of 100 for each B at a fixed embedding
  size, with the bound's factor T = B N / sqrt(B^2 - 1) of Theorem 4.5 (``theory.tree_bounds``).

Writes into ``--workdir``: ``results.json`` (rows, decomposition, sweep, configs, histories, the
command), ``fig_table1_precision.png``, ``fig1_branches.png`` (with a sweep), checkpoints under
``checkpoints/`` (``--checkpoints``; a re-run resumes).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from experiments import common, configs, plots
from experiments.registry import Experiment, ExperimentResult, RunContext, Table
from jaxrec.data import datasets, preprocess
from jaxrec.data.log import DataError
from jaxrec.eval import paper_protocols
from jaxrec.methods import tree_two_stage as t2s
from jaxrec.train import fit as fit_lib

MODULE = "experiments.tree_two_stage"
PROTOCOL = "context-holdout"
MIN_INTERACTIONS = 16  # "filtering the users who interact with no more than 15 items"


@dataclasses.dataclass(frozen=True)
class Options:
  """Everything a run depends on besides the dataset and the seed (each field a ``--config`` flag).

  Attributes:
    t2s: the method's hyper-parameters (``--config.t2s.FIELD``); ``seed`` is the run's seed.
    ks: retrieval sizes K of Table 1 (each one beam width, one H-TS ranker).
    branch_sweep: branchings B of Figure 1 (empty: no sweep); each trains a retriever.
    sweep_beam, sweep_recall_at: Figure 1's beam width (100) and recall cut-off (20).
    full_ranker: also rank the whole catalogue with the TS ranker alone (P_rank(N), Corollary 4.2).
    hts_equal_steps: give H-TS as many updates as TS (its epochs scaled by m / m', at most 50x): the
      harmonized subset is smaller, and at equal epochs H-TS would also get fewer steps; False: equal
      epochs. Both keep their best validation epoch.
  """

  t2s: t2s.TreeTwoStageConfig = t2s.TreeTwoStageConfig()
  ks: tuple[int, ...] = (40, 80, 120)
  branch_sweep: tuple[int, ...] = ()
  sweep_beam: int = 100
  sweep_recall_at: int = 20
  full_ranker: bool = True
  hts_equal_steps: bool = True

  def __post_init__(self):
    for name in ("ks", "branch_sweep"):
      v = getattr(self, name)
      low = 2 if name == "branch_sweep" else 1
      if not isinstance(v, tuple) or any(not isinstance(k, int) or k < low for k in v):
        raise fit_lib.ConfigError("Options", name, f"must be a tuple of integers >= {low}, got {v!r}")
    if not self.ks:
      raise fit_lib.ConfigError("Options", "ks", "must hold at least one K")
    fit_lib.check_fields(self, {"sweep_beam": ("int", 1, False), "sweep_recall_at": ("int", 1, False),
                                "full_ranker": ("bool", None, False),
                                "hts_equal_steps": ("bool", None, False)})
    if self.sweep_recall_at > self.sweep_beam:
      raise fit_lib.ConfigError("Options", "sweep_recall_at", f"must be <= sweep_beam ({self.sweep_beam}), "
                                f"got {self.sweep_recall_at}")


def command(spec: str, seed: int, opts: Options, cache_dir: Optional[str] = None) -> str:
  flags = {"dataset": spec, "seed": seed, "cache_dir": cache_dir}
  changed = configs.overrides(opts, Options())
  flags.update({k: (repr(v) if isinstance(v, tuple) else v) for k, v in changed.items()})
  return common.command_line(MODULE, flags)


@dataclasses.dataclass
class _Setup:
  spec: str
  name: str
  log: Any
  split: Any
  windows: t2s.Windows
  valid_q: Any
  test_q: Any
  valid_users: t2s.UserQueries
  test_users: t2s.UserQueries


def _setup(spec: str, seed: int, cache_dir: Optional[str], max_samples: Optional[int]) -> _Setup:
  log = datasets.load_dataset(spec, seed=seed, cache_dir=cache_dir)
  log = preprocess.k_core(preprocess.deduplicate(log, keep="first"), user_k=MIN_INTERACTIONS)
  proto = paper_protocols.get(PROTOCOL).with_seed(seed)
  sp = paper_protocols.prepare(log, proto).split
  if len(sp.valid) == 0 or len(sp.test) == 0:
    raise DataError(f"{spec}: the {PROTOCOL} protocol left no validation or test user")
  windows = t2s.training_windows(sp.train, max_samples=max_samples, seed=seed)
  valid_q, test_q = t2s.eval_queries(sp.valid, sp.train), t2s.eval_queries(sp.test, sp.train)
  return _Setup(spec, datasets.short_name(spec), log, sp, windows, valid_q, test_q,
                t2s.UserQueries.from_queries(valid_q), t2s.UserQueries.from_queries(test_q))


def _retriever_eval(s: _Setup, beam: int, at: int) -> Callable:
  def eval_fn(retriever):
    lists = t2s.retrieval_top_k(retriever, s.valid_users, beam)
    res = t2s.evaluate_lists(lists, s.valid_users, s.valid_q, s.log.num_items, ks=(at,))
    return {"valid_recall": res.summary[f"Recall@{at}"]}
  return eval_fn


def _ranker_eval(s: _Setup, retrieved_valid: np.ndarray, retriever) -> Callable:
  def eval_fn(ranker):
    lists = t2s.two_stage_top_k(retriever, ranker, s.valid_users, retrieved_valid.shape[1],
                                retrieved=retrieved_valid)
    res = t2s.evaluate_lists(lists, s.valid_users, s.valid_q, s.log.num_items, ks=(1,))
    return {"valid_P@1": res.summary["Precision@1"]}
  return eval_fn


def _summary(res, k: int) -> dict:
  return {"P@1": res.summary["Precision@1"], "Recall@K": res.summary[f"Recall@{k}"],
          "HR@K": res.summary[f"HR@{k}"]}


def _ckpt(workdir: Optional[str], name: str, *parts: str) -> Optional[str]:
  return None if workdir is None else os.path.join(workdir, "checkpoints", name, *parts)


def branch_sweep(s: _Setup, opts: Options, seed: int, workdir: Optional[str], cache_dir: Optional[str],
                 log: Callable[[str], None]) -> list[dict]:
  """Figure 1: one retriever per B, Recall@``sweep_recall_at`` with beam ``sweep_beam`` on the test users."""
  from theory import tree_bounds  # pylint: disable=import-outside-toplevel
  rows = []
  n = s.log.num_items
  for b in opts.branch_sweep:
    cfg = dataclasses.replace(opts.t2s, branching=b, seed=seed)
    t0 = time.perf_counter()
    retriever, _ = t2s.train_retriever(cfg, s.split.train, s.windows,
                                       eval_fn=_retriever_eval(s, opts.sweep_beam, opts.sweep_recall_at),
                                       metric="valid_recall", workdir=_ckpt(workdir, s.name, f"sweep-B{b}"))
    lists = t2s.retrieval_top_k(retriever, s.test_users, opts.sweep_beam)
    res = t2s.evaluate_lists(lists, s.test_users, s.test_q, n, ks=(opts.sweep_recall_at,))
    cmd = command(s.spec, seed, dataclasses.replace(opts, branch_sweep=(b,)), cache_dir)
    rows.append({"dataset": s.name, "B": b, "height": retriever.tree.height,
                 f"Recall@{opts.sweep_recall_at}": res.summary[f"Recall@{opts.sweep_recall_at}"],
                 "T = BN/sqrt(B^2-1)": tree_bounds.tree_factor(b, n),
                 "T / N": tree_bounds.tree_factor(b, n) / n, "train s": round(time.perf_counter() - t0, 1),
                 "command": cmd})
    log(f"[{s.name}] B={b}: Recall@{opts.sweep_recall_at}={rows[-1][f'Recall@{opts.sweep_recall_at}']:.4f}")
  return rows


def run_dataset(spec: str, opts: Options, *, seed: int = 0, workdir: Optional[str] = None,
                cache_dir: Optional[str] = None, checkpoints: bool = False,
                log: Callable[[str], None] = print) -> dict:
  """Table 1, the decomposition and (with a sweep) Figure 1 on one dataset; a JSON-able dict."""
  cfg = dataclasses.replace(opts.t2s, seed=seed)
  s = _setup(spec, seed, cache_dir, cfg.max_train_samples)
  ck = workdir if checkpoints else None
  n = s.log.num_items
  cmd = command(spec, seed, dataclasses.replace(opts, branch_sweep=()), cache_dir)
  out: dict[str, Any] = {"dataset": spec, "protocol": paper_protocols.get(PROTOCOL).describe(),
                         "stats": {"items": n, "train rows": len(s.split.train), "windows": len(s.windows),
                                   "valid users": len(s.valid_users.history),
                                   "test users": len(s.test_users.history)},
                         "rows": [], "decomposition": [], "sweep": [], "histories": {}}
  t0 = time.perf_counter()
  k_sel = max(opts.ks)
  retriever, hist = t2s.train_retriever(cfg, s.split.train, s.windows,
                                        eval_fn=_retriever_eval(s, k_sel, k_sel), metric="valid_recall",
                                        workdir=_ckpt(ck, s.name, "retriever"))
  out["histories"]["retriever"] = hist
  out["retriever_seconds"] = time.perf_counter() - t0
  log(f"[{s.name}] retriever ({cfg.scorer}, B={cfg.branching}, H={retriever.tree.height}) in "
      f"{out['retriever_seconds']:.0f} s")
  retrieved = {k: t2s.retrieval_top_k(retriever, s.test_users, k) for k in opts.ks}
  retrieved_valid = {k: t2s.retrieval_top_k(retriever, s.valid_users, k) for k in opts.ks}
  ret_res = {k: t2s.evaluate_lists(retrieved[k], s.test_users, s.test_q, n, ks=(1, k)) for k in opts.ks}

  def ranker(name: str, windows: t2s.Windows, k: int):
    t1 = time.perf_counter()
    c = cfg
    if opts.hts_equal_steps and len(windows) < len(s.windows):
      scale = min(50.0, len(s.windows) / max(len(windows), 1))
      c = dataclasses.replace(cfg, ranker_epochs=max(1, int(round(cfg.ranker_epochs * scale))))
    rk, h = t2s.train_ranker(c, n, windows, name=name,
                             eval_fn=_ranker_eval(s, retrieved_valid[k], retriever), metric="valid_P@1",
                             workdir=_ckpt(ck, s.name, name))
    out["histories"][name] = h
    return rk, time.perf_counter() - t1

  ts, ts_sec = ranker("ts", s.windows, k_sel)
  full = None
  if opts.full_ranker:
    full_lists = t2s.ranker_full_top_k(ts, s.test_users, n, 1)
    full = t2s.evaluate_lists(full_lists, s.test_users, s.test_q, n, ks=(1,))
    out["ranker_alone"] = {"P@1": full.summary["Precision@1"]}
  for k in opts.ks:
    keep = t2s.harmonized_subset(retriever, s.windows, k)
    hts, hts_sec = ranker(f"h-ts-K{k}", s.windows.take(np.flatnonzero(keep)), k)
    ret_row = {"dataset": s.name, "method": "retriever only", "K": k, **_summary(ret_res[k], k),
               "train samples": len(s.windows), "train s": round(out["retriever_seconds"], 1), "command": cmd}
    out["rows"].append(ret_row)
    for method, rk, sec, m in (("TS", ts, ts_sec, len(s.windows)), ("H-TS", hts, hts_sec, int(keep.sum()))):
      lists = t2s.two_stage_top_k(retriever, rk, s.test_users, k, retrieved=retrieved[k])
      res = t2s.evaluate_lists(lists, s.test_users, s.test_q, n, ks=(1, k))
      out["rows"].append({"dataset": s.name, "method": method, "K": k, **_summary(res, k), "train samples": m,
                          "train s": round(sec, 1), "command": cmd})
      dec = t2s.error_decomposition(ret_res[k], res, k, full)
      out["decomposition"].append({"dataset": s.name, "method": method, **dec})
    out["harmonized_fraction_K%d" % k] = float(keep.mean())
    shown = ", ".join(f"{r['method']} P@1={r['P@1']:.4f} R@K={r['Recall@K']:.4f}" for r in out["rows"][-3:])
    log(f"[{s.name}] K={k}: {shown} (H-TS on {keep.mean():.1%} of windows)")
  if opts.branch_sweep:
    out["sweep"] = branch_sweep(s, opts, seed, ck, cache_dir, log)
  return out


# -- tables, figures -------------------------------------------------------------------------------------


def tables(results: dict) -> list[Table]:
  rows = results["rows"]
  out = [Table("Table 1: two-stage Precision@1 and Recall@K, TS vs H-TS (fixed tree retriever)",
               common.table_columns(rows), rows,
               caption="Top-K protocol over grouped test users (truth = their held-out items). "
                       "'retriever only' orders the K beam items by the retriever's leaf score.")]
  dec = [{k: v for k, v in r.items() if not isinstance(v, bool)} | {
      "P_two = P_ret + P~rank (1 - P_ret)": "holds" if r["abs_error"] < 1e-9 else "FAILS"}
         for r in results["decomposition"]]
  if dec:
    out.append(Table("Proposition 4.1: error decomposition (per user and per (user, item) pair)",
                     common.table_columns(dec), dec))
  sweep = results["sweep"]
  if sweep:
    key = next(k for k in sweep[0] if k.startswith("Recall@"))
    beam = results["options"]["sweep_beam"]
    out.append(Table(f"Figure 1: retriever {key} (beam {beam}) vs branching B", common.table_columns(sweep),
                     sweep, caption="T = B N / sqrt(B^2 - 1) is Theorem 4.5's factor (a smaller bound for "
                                    "larger B)."))
  return out


def figures(results: dict, workdir: str) -> list[str]:
  paths = []
  by_ds: dict[str, dict] = {}
  for r in results["rows"]:
    by_ds.setdefault(r["dataset"], {}).setdefault(r["method"], ([], []))
    xs, ys = by_ds[r["dataset"]][r["method"]]
    xs.append(r["K"])
    ys.append(r["P@1"])
  series = {f"{ds} {m}": v for ds, d in by_ds.items() for m, v in d.items()}
  if series:
    paths.append(plots.line_plot(series, os.path.join(workdir, "fig_table1_precision.png"),
                                 xlabel="K retrieved", ylabel="Precision@1",
                                 title="Two-stage Precision@1: TS vs H-TS"))
  if results["sweep"]:
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax2 = ax.twinx()
    for ds in sorted({r["dataset"] for r in results["sweep"]}):
      rs = [r for r in results["sweep"] if r["dataset"] == ds]
      key = next(k for k in rs[0] if k.startswith("Recall@"))
      ax.plot([r["B"] for r in rs], [r[key] for r in rs], marker="o", label=f"{ds} {key}")
      ax2.plot([r["B"] for r in rs], [r["T / N"] for r in rs], linestyle="--", color="gray")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("number of branches B")
    ax.set_ylabel("retriever recall (beam 100)")
    ax2.set_ylabel("bound factor T / N = B / sqrt(B^2 - 1) (dashed)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title("Figure 1: branches vs recall, with Theorem 4.5's factor")
    paths.append(plots.save(fig, os.path.join(workdir, "fig1_branches.png")))
  return paths


def run_all(specs: Sequence[str], opts: Options, workdir: str, *, seed: int = 0,
            cache_dir: Optional[str] = None, checkpoints: bool = False, command_line: Optional[str] = None,
            log: Callable[[str], None] = print) -> tuple[dict, list[str]]:
  os.makedirs(workdir, exist_ok=True)
  results: dict[str, Any] = {"command": command_line, "seed": seed, "options": configs.to_dict(opts),
                             "datasets": {}, "rows": [], "decomposition": [], "sweep": []}
  t0 = time.perf_counter()
  for spec in specs:
    res = run_dataset(spec, opts, seed=seed, workdir=workdir, cache_dir=cache_dir, checkpoints=checkpoints,
                      log=log)
    results["datasets"][spec] = res
    for key in ("rows", "decomposition", "sweep"):
      results[key] += res[key]
  figs = figures(results, workdir)
  results["figures"] = [os.path.basename(p) for p in figs]
  results["wall_seconds"] = time.perf_counter() - t0
  common.write_results(workdir, results)
  return results, figs


# -- the main job's entry ---------------------------------------------------------------------------------


def suite_options(suite_name: str) -> Options:
  """Quick: small MLP retriever and DIN, <= 4k windows, one epoch each, H-TS at equal epochs (a smoke
  run, about a minute on 2 quiet cores for both datasets; its rankers get ~16 steps). Full: the paper's
  sizes (dim 24, DIN 96 / [64, 16] / [200, 80]), more epochs and Figure 1's sweep."""
  if suite_name == "quick":
    return Options(t2s=t2s.TreeTwoStageConfig(
        branching=4, scorer="mlp", mlp_hidden=(32, 16), retriever_negatives=24, retriever_epochs=1,
        ranker_dim=24, ranker_attention=(16,), ranker_mlp=(32, 16), ranker_negatives=20, ranker_epochs=1,
        batch_size=256, max_train_samples=4000), full_ranker=False, hts_equal_steps=False)
  return Options(t2s=t2s.TreeTwoStageConfig(retriever_epochs=4, ranker_epochs=4, max_train_samples=60000),
                 branch_sweep=(2, 4, 8, 16, 32))


def _experiment(ctx: RunContext) -> ExperimentResult:
  opts = suite_options(ctx.suite)
  results, figs = run_all(ctx.datasets, opts, ctx.workdir, seed=ctx.seed, cache_dir=ctx.cache_dir,
                          log=lambda m: None)
  return ExperimentResult(tables=tables(results), figures=figs, results=results)


EXPERIMENT = Experiment(name="tree_two_stage", title="Tree two-stage recommender: TS vs H-TS (paper 004)",
                        run=_experiment, order=40)

_CONFIG = None


def define_flags():
  global _CONFIG  # pylint: disable=global-statement
  from absl import flags  # pylint: disable=g-import-not-at-top
  common.define_data_flags("context_holdout", None, ["context_holdout"])
  flags.DEFINE_list("datasets", None, "Dataset specs (overrides --dataset).")
  flags.DEFINE_bool("checkpoints", True, "Write checkpoints (a re-run with the same workdir resumes).")
  _CONFIG = configs.define(Options())


@common.friendly_errors
def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  fv = flags.FLAGS
  opts = configs.value(_CONFIG)
  specs = fv.datasets or [fv.dataset]
  workdir = fv.workdir or f"runs/tree_two_stage/{'+'.join(s.replace(':', '-') for s in specs)}"
  results, figs = run_all(specs, opts, workdir, seed=fv.seed, cache_dir=fv.cache_dir,
                          checkpoints=fv.checkpoints, command_line=common.this_command(),
                          log=lambda m: print(m, flush=True))
  common.print_tables(tables(results))
  print(f"\nwrote {os.path.join(workdir, 'results.json')} and {len(figs)} figures in "
        f"{results['wall_seconds']:.0f} s")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  define_flags()
  app.run(main)
