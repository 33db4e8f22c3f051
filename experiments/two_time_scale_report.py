"""Tables and figures of the 2TS experiment (:mod:`experiments.two_time_scale`): Table 1 / 3 rows,
Figures 2-4, the threshold sweep, the embedding movements and the theory check."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from experiments import common, plots
from experiments.registry import Table

# Display names (the binary's rows use them too).
VARIANT_NAMES = {"2ts": "2TS", "2ts-plus": "2TS-Plus", "single-stage": "2TS-SingleStage", "2-gru": "2-GRU",
                 "ccf": "CCF"}
BASELINE_NAMES = {"sumpool": "SumPooling", "gru4rec": "GRU4Rec", "sasrec": "SASRec", "bert4rec": "BERT4Rec",
                  "gcmc": "GCMC", "gcmc-sage": "GCMC-SAGE", "gcmc-gat": "GCMC-GAT", "dynaernn": "dynAERNN",
                  "jodie": "JODIE", "dien": "DIEN", "mimn": "MIMN"}
DEFAULT_BASELINES = ("sumpool", "gru4rec", "sasrec")  # bert4rec by --config.baselines (issue 16, in progress)


def embedding_moves(eq, num_valid: int, test_new: np.ndarray, num_bins: int = 12) -> dict:
  """Fig. 4 over the test interactions: mean ``||phi_{t+1} - phi_t||`` by interactions seen (log bins).

  Groups: active users (``T > t*`` in training), inactive ones (``1 <= T <= t*``) and new users (no
  training interaction: they start from ``psi`` like the inactive, but have nothing behind them). The
  validation rows are consumed (they move the state) but not counted.

  Args:
    eq: :class:`jaxrec.methods.two_time_scale.EvalQueries` of validation then test rows.
    num_valid: the number of validation rows (the first rows of ``eq``).
    test_new: bool ``[num_test]``, whether each test row's user is new.
  """
  seen = eq.seen[num_valid:].astype(np.int64)
  move, active = eq.move[num_valid:], eq.active[num_valid:]
  test_new = np.asarray(test_new, bool)
  edges = np.unique(np.concatenate([[0, 1, 2, 3, 5], np.geomspace(8, max(seen.max(initial=1) + 1, 9),
                                                                     num_bins).astype(np.int64)]))
  edges[-1] = max(edges[-1], seen.max(initial=0) + 1)
  out = {"edges": edges.tolist()}
  for name, sel in (("active", active), ("inactive", ~active & ~test_new), ("new", test_new)):
    b = np.searchsorted(edges, seen[sel], side="right") - 1
    sums = np.bincount(b, weights=move[sel], minlength=len(edges) - 1)
    cnt = np.bincount(b, minlength=len(edges) - 1)
    out[name] = {"mean": np.where(cnt > 0, sums / np.maximum(cnt, 1), np.nan).tolist(),
                 "count": cnt.tolist(), "overall": float(move[sel].mean()) if sel.any() else float("nan"),
                 "first10": float(move[sel & (seen < 10)].mean()) if (sel & (seen < 10)).any()
                 else float("nan")}
  return out


def theory(cfg, res) -> dict:
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


def fmt_row(row: dict) -> str:
  return "  ".join(f"{k}={v:.4f}" for k, v in row.items() if isinstance(v, float) and k != "train s") + (
      f"  ({row['train s']} s)")


def make_figures(res: dict, workdir: str, prefix: str = "") -> list[str]:
  """Figures 2-4 and the threshold sweep of one dataset's results (PNG, written atomically)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  paths = []
  name = res["stats"]["dataset"]
  sampled = res["sampled_name"]
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
    ax.axvline(label_position(labels, chosen_t), ls="--", c="k", lw=1, label=f"t* = {chosen_t}")
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
    for group in ("inactive", "active", "new"):
      if group in mv:
        ax.plot(mid, mv[group]["mean"], "o-", label=f"{group} users")
    ax.set_xscale("log")
    ax.set_xlabel("#interactions seen after training (valid + test); test interactions only")
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


def label_position(labels: Sequence[str], t: float) -> float:
  """x position of count ``t`` on an axis of ``"[lo,hi)"`` bucket labels (interpolated in the bucket)."""
  for i, lab in enumerate(labels):
    lo, hi = lab.strip("[)").split(",")
    lo, hi = float(lo), float(hi)
    if lo <= t < hi:
      return i - 0.5 + (t - lo) / (hi - lo) if np.isfinite(hi) else i
  return len(labels) - 0.5


def tables(results: dict) -> list[Table]:
  rows = results["rows"]
  out = [Table("2TS vs baselines (chronological 70/10/20, test)", common.table_columns(rows), rows,
               caption="Protocol 2ts-chronological (paper 000, Sec. 5): every valid/test interaction is a "
                       "query, repeats kept; sampledN = 1 positive + N negatives drawn uniformly from all "
                       "items but the positive (nothing else excluded); full = full ranking, nothing "
                       "excluded. Columns *-filtered: 2ts-chronological-filtered, the same queries with "
                       "the user's earlier items excluded from the candidates. t*/K, the 2TS stage-2 "
                       "setting and every method's epoch (2TS stages and baselines) chosen on the whole "
                       "validation set, sampled MRR (paper protocol) with the same frozen candidates; "
                       "every method stops after the same patience (epochs without a better validation "
                       "MRR) or its epoch cap or time limit (column stopped; epochs = stage 1 + stage 2). "
                       "The two-stage variants share one stage 1 (the CCF row): their train s includes "
                       "it. train s is wall time including the per-epoch validation.")]
  grid = [r for d in results["datasets"].values() for r in d.get("grid", [])]
  if grid:
    out.append(Table("2TS stage-2 settings (cell start, steps, rates; validation picks one)",
                     common.table_columns(grid), grid,
                     caption="gru: flax's default GRU cell; keep-gate: update-gate bias 3 (keeps ~95% of "
                             "the state at start); residual: h + s*(GRU(h,x) - h), s = 0 at start (the "
                             "identity: stage 2 starts from the CCF scores). one-group: a step per "
                             "group batch; mixed: every step L_in + L_act. theory rates: the active "
                             "group's Adam rate = lr * gamma_act/gamma_in (Implication 2, a lower bound "
                             "of the ratio)."))
  sweep = [{"dataset": spec, **r} for spec, d in results["datasets"].items() for r in d["sweep"]]
  if sweep:
    out.append(Table("2TS threshold sweep (validation picks t*, K)", common.table_columns(sweep), sweep))
  rows_mv = []
  for spec, d in results["datasets"].items():
    mv = d["tts"].get("2ts", {}).get("moves")
    th = d["tts"].get("2ts", {}).get("theory", {})
    if mv:
      rows_mv.append({"dataset": spec, "mean move inactive": mv["inactive"]["overall"],
                      "mean move active": mv["active"]["overall"],
                      "mean move new": mv.get("new", {}).get("overall", float("nan")),
                      "first 10, inactive": mv["inactive"]["first10"],
                      "first 10, active": mv["active"]["first10"],
                      "first 10, new": mv.get("new", {}).get("first10", float("nan")),
                      "Var_m": th.get("var_m"), "t** lower bound": th.get("t_star_star_lower_bound")})
  if rows_mv:
    out.append(Table("Two-time-scale behaviour (Fig. 4, test interactions) and theory",
                     common.table_columns(rows_mv), rows_mv))
  return out


