r"""The TP experiment (paper 001, Sec. 4): plain encoders vs their "-TP" versions, Table 3, Figures 4-7.

    python -m experiments.tp --dataset=ml-100k --workdir=runs/tp/ml-100k \
        --config.encoders="('gru4rec','caser','sasrec')" --config.ablations=true \
        --config.sweep_k="(1,2,3,4,5)" --config.sweep_lam="(0,0.01,0.1,1,10)" --config.seeds=3

Protocol: the named ``"tp-user-holdout"`` (:mod:`jaxrec.eval.paper_protocols`): items with < 5 then
users with < 10 interactions removed, users split 80% existing / 20% new (never trained on), every
user's most recent item is the test item (a new user's earlier items are only the query's input), the
existing users' second most recent item is the validation item (epoch selection, the same sampled
candidates for every model), known items excluded; HR@N and NDCG@N under full ranking and against 100
uniform sampled negatives. Breakdowns (Fig. 5): existing / new users, and within each group the 20% of
users with the most interactions (head) vs the rest (tail), as in the paper's Sec. 4.3.

Rows, per encoder (``--config.encoders``, any registry sequence model; the paper's are GRU4Rec, Caser,
SASRec): the plain encoder (joint training on every window with the same binary cross-entropy, Eq. 2)
and ENCODER-TP (:mod:`jaxrec.methods.tp`); with ``--config.ablations`` also alignment only (lambda = 0),
adversary only (k = 1) and neither (k = 1, lambda = 0: joint training on TP's per-user task batches).
``--config.sweep_k`` / ``--config.sweep_lam`` give Fig. 6 / 7 for ``--config.sweep_encoder``.
``--config.seeds=S`` repeats everything with seeds ``seed .. seed+S-1`` (the split too, as the paper's ten
repetitions) and reports means and standard errors. Speed: each row's epoch time (median over epochs after
the first, validation excluded) and training subsequences per second.

Writes into ``--workdir``: ``results.json`` (rows, per-seed results, configs, histories, the command),
``fig4_topn.png``, ``fig5_head_tail.png``, ``fig6_k.png`` / ``fig7_lambda.png`` (with sweeps).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from experiments import common, configs, plots
from experiments.registry import Experiment, ExperimentResult, RunContext, Table
from jaxrec.eval import protocols as protocols_lib
from jaxrec.methods import tp
from jaxrec.models import registry
from jaxrec.train import fit as fit_lib

MODULE = "experiments.tp"
PROTOCOL = "tp-user-holdout"
SPLIT = "user_holdout_last"
NAMES = {"gru4rec": "GRU4Rec", "caser": "Caser", "sasrec": "SASRec", "sumpool": "SumPooling"}
VARIANTS = ("plain", "tp", "alignment-only", "adversary-only", "neither")
SEGMENTS = tp.GROUPS


@dataclasses.dataclass(frozen=True)
class Options:
  """Everything a run depends on besides the dataset and the seed (each field is a ``--config`` flag).

  Attributes:
    encoders: registry sequence encoders, each trained plain and with TP.
    dim: embedding size of every encoder (the paper tunes it in 10..50).
    tp: the TP hyper-parameters (``--config.tp.FIELD``); its window, negatives, pre-training rate and
      batch size are the plain encoders' too.
    plain_epochs: epochs of the plain encoders (best epoch on validation, early stopping with
      ``tp.patience``).
    ablations: also alignment only, adversary only and neither (see the module docstring).
    sweep_k, sweep_lam: Fig. 6 / Fig. 7 values for ``sweep_encoder`` (empty: no sweep).
    sweep_encoder: the encoder of the sweeps.
    seeds: repetitions (seeds ``seed .. seed + seeds - 1``).
    ks: cut-offs N of Fig. 4.
  """

  encoders: tuple[str, ...] = ("gru4rec", "caser", "sasrec")
  dim: int = 32
  tp: tp.TPConfig = tp.TPConfig()
  plain_epochs: int = 10
  ablations: bool = False
  sweep_k: tuple[int, ...] = ()
  sweep_lam: tuple[float, ...] = ()
  sweep_encoder: str = "sasrec"
  seeds: int = 1
  ks: tuple[int, ...] = (1, 5, 10, 20, 50)

  def __post_init__(self):
    for name in tuple(self.encoders) + (self.sweep_encoder,):
      if name not in registry.names() or registry.get(name).family != "sequence":
        seq = [n for n in registry.names() if registry.get(n).family == "sequence"]
        raise fit_lib.ConfigError("Options", "encoders" if name in self.encoders else "sweep_encoder",
                                  f"must name registry sequence encoders {seq}, got {name!r}")
    fit_lib.check_fields(self, {"dim": ("int", 1, False), "plain_epochs": ("int", 1, False),
                                "seeds": ("int", 1, False), "ablations": ("bool", None, False)})
    if any(k < 1 for k in self.sweep_k):
      raise fit_lib.ConfigError("Options", "sweep_k", f"must be integers >= 1, got {self.sweep_k}")
    if any(lam < 0 for lam in self.sweep_lam):
      raise fit_lib.ConfigError("Options", "sweep_lam", f"must be >= 0, got {self.sweep_lam}")
    if not self.ks or 10 not in self.ks or any(k < 1 for k in self.ks):
      raise fit_lib.ConfigError("Options", "ks", f"must be cut-offs >= 1 including 10, got {self.ks}")

  def hparams(self, encoder: str) -> dict:
    return {"dim": self.dim}

  def variant(self, name: str, **changes) -> tp.TPConfig:
    cfg = dataclasses.replace(self.tp, **changes)
    if name == "alignment-only":
      cfg = dataclasses.replace(cfg, lam=0.0)
    elif name == "adversary-only":
      cfg = dataclasses.replace(cfg, k=1)
    elif name == "neither":
      cfg = dataclasses.replace(cfg, k=1, lam=0.0)
    return cfg


def command(spec: str, seed: int, opts: Options, cache_dir: Optional[str] = None) -> str:
  """``python -m experiments.tp`` reproducing ``opts`` (only non-default ``--config`` fields)."""
  flags = {"dataset": spec, "seed": seed, "cache_dir": cache_dir}
  flags.update({k: (repr(v) if isinstance(v, tuple) else v)
                for k, v in configs.overrides(opts, Options()).items()})
  return common.command_line(MODULE, flags)


# -- data, queries, evaluation ------------------------------------------------------------------------


@dataclasses.dataclass
class _Setup:
  prep: common.Prepared
  logs: list            # train, valid, new users' context, test
  new_users: np.ndarray  # bool [num_users]
  labels_by_user: np.ndarray  # str [num_users]: "existing/head", ...
  test_protocols: dict
  valid_sampled: Any


def _setup(spec: str, seed: int, cache_dir: Optional[str], valid_negatives: int) -> _Setup:
  prep = common.prepare(spec, SPLIT, seed=seed, cache_dir=cache_dir, protocol=PROTOCOL)
  sp = prep.split
  context = sp.info["test_context"]
  _, test_protocols = common.test_rankings(prep)
  n = fit_lib.capped_negatives(prep.valid_queries, prep.num_items, valid_negatives, "validation")
  valid_sampled = protocols_lib.Sampled(num_negatives=n, seed=seed).draw(prep.valid_queries, prep.num_items)
  new = np.zeros(prep.log.num_users, bool)
  new[sp.info["new_users"]] = True
  # Head / tail within each group by the user's interactions before the test item (Sec. 4.3).
  counts = sp.train.user_counts() + sp.valid.user_counts() + context.user_counts()
  return _Setup(prep, [sp.train, sp.valid, context, sp.test], new, tp.group_labels(counts, new),
                test_protocols, valid_sampled)


def _queries(s: _Setup, encoder: str, length: int):
  spec = registry.get(encoder)
  valid_q = dataclasses.replace(s.prep.valid_queries, features=fit_lib.query_features(
      spec, s.logs[:2], 1, length))
  test_q = dataclasses.replace(s.prep.test_queries, features=fit_lib.query_features(spec, s.logs, 3, length))
  return valid_q, test_q


def evaluate(res: tp.TPResult, s: _Setup, test_q, ks: Sequence[int]) -> dict:
  """``{protocol: {"protocol", "summary", "segments": {label: {...}}}}`` (labels of :data:`SEGMENTS`)."""
  return tp.evaluate_groups(res.score_fn, res.params, test_q, s.test_protocols, s.prep.num_items,
                            s.labels_by_user, ks=ks)


def _speed(res: tp.TPResult) -> dict:
  stage = "plain" if "plain" in res.epoch_seconds else "tp"
  secs = res.epoch_seconds.get(stage, [])
  later = secs[1:] or secs
  epoch = float(np.median(later)) if later else float("nan")
  return {"epoch s": epoch, "subseq/s": res.subsequences_per_epoch[stage] / epoch if epoch else float("nan"),
          "epochs": len(secs)}


def _train(variant: str, encoder: str, cfg: tp.TPConfig, s: _Setup, opts: Options, seed: int,
           workdir: Optional[str]):
  length = tp.history_len(encoder, cfg, opts.hparams(encoder))
  valid_q, test_q = _queries(s, encoder, length)
  kw = dict(seed=seed, valid_queries=valid_q, valid_protocol=s.valid_sampled, hparams=opts.hparams(encoder),
            workdir=workdir, run_config={"dataset": s.prep.spec, "protocol": PROTOCOL})
  if variant == "plain":
    res = tp.train_plain(cfg, encoder, s.prep.split.train, opts.plain_epochs, **kw)
  else:
    res = tp.train(cfg, encoder, s.prep.split.train, **kw)
  return res, evaluate(res, s, test_q, opts.ks)


# -- one dataset ----------------------------------------------------------------------------------------


def _flat(results: dict) -> dict:
  """``{"full HR@10": v, ..., "full existing/tail NDCG@10": v, ...}`` of one evaluation."""
  row = {}
  for pname, r in results.items():
    for m in ("HR@10", "NDCG@10"):
      row[f"{pname} {m}"] = float(r["summary"][m])
      for seg in SEGMENTS:
        if seg in r["segments"]:
          row[f"{pname} {seg} {m}"] = float(r["segments"][seg][m])
  return row


def _display(encoder: str, variant: str) -> str:
  base = NAMES.get(encoder, encoder)
  return {"plain": base, "tp": f"{base}-TP"}.get(variant, f"{base}-TP ({variant})")


def run_dataset(spec: str, opts: Options, *, seed: int = 0, workdir: Optional[str] = None,
                cache_dir: Optional[str] = None, checkpoints: bool = False,
                log: Callable[[str], None] = print) -> dict:
  """Every row (and sweep point) on one dataset, over ``opts.seeds`` seeds; a JSON-able dict."""
  variants = ("plain", "tp") + (("alignment-only", "adversary-only", "neither") if opts.ablations else ())
  runs = [(enc, v, {}) for enc in opts.encoders for v in variants]
  runs += [(opts.sweep_encoder, "sweep-k", {"k": k}) for k in opts.sweep_k]
  runs += [(opts.sweep_encoder, "sweep-lam", {"lam": float(lam)}) for lam in opts.sweep_lam]
  per_seed = []
  stats = None
  for rep in range(opts.seeds):
    sd = seed + rep
    s = _setup(spec, sd, cache_dir, opts.tp.valid_negatives)
    stats = stats or {**common.stats_row(s.prep), "new users": int(s.new_users.sum()),
                      "context rows": len(s.logs[2]), "protocol": s.prep.protocol.describe()}
    recs = []
    for enc, v, change in runs:
      cfg = opts.variant(v if not v.startswith("sweep") else "tp", **change)
      key = f"{enc}-{v}" + "".join(f"-{k}{x}" for k, x in change.items())
      wd = os.path.join(workdir, "checkpoints", s.prep.name, f"seed{sd}", key) if (checkpoints and workdir) \
          else None
      t0 = time.perf_counter()
      res, ev = _train("plain" if v == "plain" else "tp", enc, cfg, s, opts, sd, wd)
      rec = {"encoder": enc, "variant": v, "change": change, "seed": sd, "eval": ev, **_speed(res),
             "train s": time.perf_counter() - t0, "config": dataclasses.asdict(cfg),
             "history": res.histories}
      recs.append(rec)
      log(f"[{s.prep.name} seed {sd}] {_display(enc, v)} {change or ''}: "
          f"full NDCG@10={ev['full']['summary']['NDCG@10']:.4f} HR@10={ev['full']['summary']['HR@10']:.4f} "
          f"({rec['train s']:.0f} s)")
    per_seed.append(recs)
  rows, sweeps = [], {"k": [], "lam": []}
  name = stats["dataset"]
  for i, (enc, v, change) in enumerate(runs):
    flats = [_flat(recs[i]["eval"]) for recs in per_seed]
    mean = {k: float(np.mean([f[k] for f in flats])) for k in flats[0]}
    speed = {k: float(np.mean([recs[i][k] for recs in per_seed])) for k in ("epoch s", "subseq/s", "train s")}
    if v.startswith("sweep"):
      sweeps["k" if v == "sweep-k" else "lam"].append({**change, **mean})
      continue
    sub = dataclasses.replace(opts, encoders=(enc,), ablations=False, sweep_k=(), sweep_lam=())
    row = {"dataset": name, "method": _display(enc, v), **mean, **{k: round(x, 3) for k, x in speed.items()}}
    if opts.seeds > 1:
      row.update({f"{k} se": float(np.std([f[k] for f in flats], ddof=1) / np.sqrt(len(flats)))
                  for k in ("full HR@10", "full NDCG@10")})
    row["command"] = command(spec, seed, sub, cache_dir) + ("" if v in ("plain", "tp") else
                                                           " --config.ablations=true")
    rows.append(row)
  topn = {f"{enc}-{v}": {str(k): {m: float(np.mean([recs[i]["eval"]["full"]["summary"][f"{m}@{k}"]
                                                      for recs in per_seed])) for m in ("HR", "NDCG")}
                         for k in opts.ks}
          for i, (enc, v, _) in enumerate(runs) if v in ("plain", "tp")}
  return {"dataset": spec, "stats": stats, "options": configs.to_dict(opts), "rows": rows, "sweeps": sweeps,
          "topn": topn, "per_seed": per_seed}


# -- tables, figures, the whole run ---------------------------------------------------------------------


def tables(results: dict) -> list[Table]:
  rows = results["rows"]
  sampled = sorted({k.split()[0] for r in rows for k in r if k.startswith("sampled")})
  main_cols = (["dataset", "method", "full HR@10", "full NDCG@10"]
               + [f"{p} {m}" for p in sampled for m in ("HR@10", "NDCG@10")]
               + ["full existing NDCG@10", "full new NDCG@10", "full HR@10 se", "full NDCG@10 se",
                  "epoch s", "subseq/s", "train s", "command"])
  seg_cols = ["dataset", "method"] + [f"full {seg} NDCG@10" for seg in SEGMENTS[2:]] + ["command"]
  have = lambda cols: [c for c in cols if any(c in r for r in rows)]
  out = [Table("TP vs plain encoders (Table 3)", have(main_cols), rows,
               caption="Protocol tp-user-holdout: full = full ranking (known items excluded), sampledN = "
               "1 positive + N uniform negatives (100, fewer where a user knows too many items); "
               "existing/new = the 80%/20% users (new never trained "
               "on). epoch s = median epoch time after the first (validation excluded); subseq/s = "
               "training subsequences per second. TP epochs visit each user once (task_sampling=uniform) "
               "unless --config.tp.task_sampling=all."),
         Table("Head / tail users within existing and new users (Fig. 5), full-ranking NDCG@10",
               have(seg_cols), rows)]
  for kind, label in (("k", "inner steps k (Fig. 6)"), ("lam", "lambda (Fig. 7)")):
    pts = [dict(p, dataset=ds) for ds, r in results["datasets"].items() for p in r["sweeps"][kind]]
    if pts:
      cols = ["dataset", kind, "full HR@10", "full NDCG@10", "full existing NDCG@10", "full new NDCG@10"]
      out.append(Table(f"Sweep of {label}", cols, [dict(p, command=results["command"] or "") for p in pts]))
  return out


def figures(res: dict, workdir: str, prefix: str = "") -> list[str]:
  paths = []
  name = res["stats"]["dataset"]
  for metric in ("NDCG", "HR"):
    series = {k: ([int(n) for n in v], [v[n][metric] for n in v]) for k, v in res["topn"].items()}
    paths.append(plots.line_plot(series, os.path.join(workdir, f"{prefix}fig4_topn_{metric.lower()}.png"),
                                 xlabel="N", ylabel=f"{metric}@N (full ranking)",
                                 title=f"Top-N, {name} (Fig. 4)"))
  groups = list(SEGMENTS[2:])
  series = {r["method"]: [r.get(f"full {g} NDCG@10", float("nan")) for g in groups] for r in res["rows"]}
  paths.append(plots.grouped_bars(groups, series, os.path.join(workdir, f"{prefix}fig5_head_tail.png"),
                                  ylabel="NDCG@10 (full ranking)",
                                  title=f"Head / tail users, {name} (Fig. 5)"))
  for kind, fig, label in (("k", "fig6_k", "inner updates k"), ("lam", "fig7_lambda", "lambda")):
    pts = res["sweeps"][kind]
    if pts:
      xs = list(range(len(pts)))
      series = {seg: (xs, [p[f"full {seg} NDCG@10"] for p in pts]) for seg in ("existing", "new")}
      path = plots.line_plot(series, os.path.join(workdir, f"{prefix}{fig}.png"),
                             xlabel=f"{label}: " + ", ".join(str(p[kind]) for p in pts),
                             ylabel="NDCG@10 (full ranking)", title=f"{label}, {name} (Fig. {fig[3]})")
      paths.append(path)
  return paths


def run_all(specs: Sequence[str], opts: Options, workdir: str, *, seed: int = 0,
            cache_dir: Optional[str] = None, checkpoints: bool = False, command_line: Optional[str] = None,
            log: Callable[[str], None] = print) -> tuple[dict, list[str]]:
  """Runs every dataset, writes ``results.json`` and the figures; returns (results, figure paths)."""
  os.makedirs(workdir, exist_ok=True)
  results: dict[str, Any] = {"command": command_line, "seed": seed, "options": configs.to_dict(opts),
                             "datasets": {}, "rows": []}
  figs: list[str] = []
  t0 = time.perf_counter()
  for spec in specs:
    res = run_dataset(spec, opts, seed=seed, workdir=workdir, cache_dir=cache_dir, checkpoints=checkpoints,
                      log=log)
    results["datasets"][spec] = res
    results["rows"] += res["rows"]
    figs += figures(res, workdir, "" if len(specs) == 1 else f"{res['stats']['dataset']}_")
  results["figures"] = [os.path.basename(p) for p in figs]
  results["wall_seconds"] = time.perf_counter() - t0
  common.write_results(workdir, results)
  return results, figs


# -- the main job's entry ------------------------------------------------------------------------------


def suite_options(suite_name: str) -> Options:
  """Quick: GRU4Rec (the fastest to compile), 2 epochs each, plain vs -TP; full: Table 3 for the three
  encoders, the ablations and the k / lambda sweeps (Fig. 6-7) on GRU4Rec."""
  if suite_name == "quick":
    return Options(encoders=("gru4rec",), dim=16, plain_epochs=2, tp=tp.TPConfig(epochs=2, patience=None))
  return Options(encoders=("gru4rec", "caser", "sasrec"), dim=32, plain_epochs=20, ablations=True,
                 tp=tp.TPConfig(epochs=20), sweep_k=(1, 2, 3, 4, 5), sweep_lam=(0.0, 0.01, 0.1, 1.0, 10.0),
                 sweep_encoder="gru4rec")


def _experiment(ctx: RunContext) -> ExperimentResult:
  opts = suite_options(ctx.suite)
  results, figs = run_all(ctx.datasets, opts, ctx.workdir, seed=ctx.seed, cache_dir=ctx.cache_dir,
                          log=lambda m: None)
  return ExperimentResult(tables=tables(results), figures=figs, results=results)


EXPERIMENT = Experiment(name="tp", title="Transferrable parameters for long-tailed users (TP, paper 001)",
                        run=_experiment, order=40)


_CONFIG = None


def define_flags():
  """``--config.*`` (:class:`Options`) plus the shared data flags; defined only when run as a program."""
  global _CONFIG  # pylint: disable=global-statement
  from absl import flags  # pylint: disable=g-import-not-at-top
  common.define_data_flags(SPLIT, None, [SPLIT])
  flags.DEFINE_list("datasets", None, "Dataset specs (overrides --dataset).")
  flags.DEFINE_bool("checkpoints", False, "Checkpoint every training run under WORKDIR/checkpoints (resume).")
  _CONFIG = configs.define(Options())


@common.friendly_errors
def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  fv = flags.FLAGS
  opts = configs.value(_CONFIG)
  specs = fv.datasets or [fv.dataset]
  workdir = fv.workdir or f"runs/tp/{'+'.join(s.replace(':', '-') for s in specs)}"
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
