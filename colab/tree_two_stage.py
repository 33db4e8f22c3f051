# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # Tree two-stage recommender: TS vs H-TS (paper 004, NeurIPS 2024)
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxrec/jaxrec/blob/main/colab/tree_two_stage.ipynb)
#
# A tree retriever (items at the leaves of a complete B-ary tree, a node scorer, beam search of width K)
# followed by a DIN ranker that orders the K retrieved items. TS trains the ranker on every training
# window; H-TS ("harmonized") only on the windows whose target the retriever's beam finds, so that the
# ranker is trained on the distribution it is used on (Theorem 4.8). The notebook shows the paper's
# Table 1 (two-stage Precision@1 for K in {40, 80, 120}, with Recall@K), Precision@1 and Recall@K as
# functions of K, the Proposition 4.1 error decomposition
# `P_two = P_ret + P~_rank(K) (1 - P_ret)`, and the paper's Figure 1 (retriever recall vs the number of
# branches B).
#
# **Run time at full length**: 4.5 min on CPU (2 shared cores, load ~13), jaxrec's test machine, 2026-12-07.
# The test suite runs this notebook shortened (`JAXREC_NOTEBOOK_SHORT=1`: a few hundred synthetic users,
# one epoch, small dimensions, K in {10, 20, 40}). Outputs are stripped in git: run it to see them.

# %%
# Install jaxrec from its repository where it is not installed yet (Colab); a GPU or TPU runtime is
# used when the runtime has one (JAX picks it), the CPU otherwise.
import importlib.util
import subprocess
import sys

REPO = "https://github.com/jaxrec/jaxrec"  # a fork: change this line and the badge above
if importlib.util.find_spec("jaxrec") is None:
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"jaxrec @ git+{REPO}"], check=True)

import jax

print(f"JAX {jax.__version__}, backend: {jax.default_backend()} ({jax.devices()[0].device_kind})")

# %%
import dataclasses
import os
import time

import numpy as np

from jaxrec.data import preprocess, synthetic
from jaxrec.eval import paper_protocols
from jaxrec.methods import tree_two_stage as t2s

SHORT = os.environ.get("JAXREC_NOTEBOOK_SHORT") == "1"  # the test suite's shortened run
SEED = 0
# Adam rates of 1e-2 (the paper: 1e-3 with decay) so that a few CPU epochs train both stages well.
if SHORT:  # >= 16 interactions per user, so that most users pass the protocol's filter
  DATA = synthetic.SyntheticConfig(num_users=300, num_items=200, min_interactions=16, max_interactions=60,
                                   name="synthetic-short")
  CONFIG = t2s.TreeTwoStageConfig(
      branching=4, scorer="mlp", dim=8, mlp_hidden=(16,), retriever_negatives=8, retriever_epochs=1,
      retriever_lr=1e-2, ranker_dim=8, ranker_attention=(8,), ranker_mlp=(16,), ranker_negatives=8,
      ranker_epochs=1, ranker_lr=1e-2, batch_size=256, max_train_samples=4000, seed=SEED)
  KS = (10, 20, 40)
  BRANCHES = (2, 4)
else:  # the paper's retriever sizes (dim 24), a smaller DIN (the paper's: 96 / [64, 16] / [200, 80])
  DATA = synthetic.SyntheticConfig(num_users=3000, num_items=1000, num_clusters=20, min_interactions=16,
                                   max_interactions=200, name="synthetic-3k")
  CONFIG = t2s.TreeTwoStageConfig(
      branching=4, scorer="mlp", dim=24, mlp_hidden=(64, 32), retriever_negatives=30, retriever_epochs=3,
      retriever_lr=1e-2, ranker_dim=24, ranker_attention=(16,), ranker_mlp=(64, 32), ranker_negatives=10,
      ranker_epochs=6, ranker_lr=1e-2, batch_size=256, max_train_samples=8000, seed=SEED)
  KS = (40, 80, 120)
  BRANCHES = (2, 4, 8, 16)
SWEEP_BEAM, SWEEP_AT = (40, 10) if SHORT else (100, 20)  # Figure 1: Recall@20 with a beam of 100

# %% [markdown]
# ## Data and the `context-holdout` protocol (Appendix D.2)
# Repeated (user, item) rows dropped, users with <= 15 items dropped, then 10% validation and 10% test
# users (disjoint): the first half of their sequence is context (it also trains), the rest is the ground
# truth. Training samples are sliding windows: 69 earlier items (in 10 time windows) and the target.
# Every held-out user is one query whose truth is the set of their held-out items.

# %%
log = synthetic.generate(DATA, seed=SEED)
log = preprocess.k_core(preprocess.deduplicate(log, keep="first"), user_k=16)
prep = paper_protocols.prepare(log, paper_protocols.get("context-holdout").with_seed(SEED))
split = prep.split
windows = t2s.training_windows(split.train, max_samples=CONFIG.max_train_samples, seed=SEED)
valid_q, test_q = t2s.eval_queries(split.valid, split.train), t2s.eval_queries(split.test, split.train)
valid_users, test_users = t2s.UserQueries.from_queries(valid_q), t2s.UserQueries.from_queries(test_q)
num_items = log.num_items
print(prep.protocol.describe())
print(f"{log.num_users} users, {num_items} items, {len(log)} rows; {len(windows)} training windows; "
      f"{len(valid_users.history)} validation and {len(test_users.history)} test users")

# %% [markdown]
# ## Stage 1: the tree retriever
# A complete B-ary tree over the items (random leaf order, as in Appendix D.2), an MLP node scorer
# (Eq. 8) trained with one sampled softmax per tree level, and a jitted beam search. The epoch kept is
# the one with the best validation Recall@K at the largest K.


# %%
def recall_eval(k):
  """Validation Recall@k of the retriever's beam of width k (the keep-best metric)."""
  def eval_fn(retriever):
    lists = t2s.retrieval_top_k(retriever, valid_users, k)
    return {"valid_recall": t2s.evaluate_lists(lists, valid_users, valid_q, num_items, ks=(k,)).summary[
        f"Recall@{k}"]}
  return eval_fn


t0 = time.perf_counter()
retriever, _ = t2s.train_retriever(CONFIG, split.train, windows, eval_fn=recall_eval(max(KS)),
                                   metric="valid_recall")
print(f"retriever: B={CONFIG.branching}, height {retriever.tree.height}, {retriever.tree.num_leaves} leaves, "
      f"trained in {time.perf_counter() - t0:.0f} s")
retrieved = {k: t2s.retrieval_top_k(retriever, test_users, k) for k in KS}
retrieved_valid = {k: t2s.retrieval_top_k(retriever, valid_users, k) for k in KS}

# %% [markdown]
# ## Stage 2: the DIN ranker, TS and H-TS
# TS: one ranker on every window. H-TS: one ranker per K on the windows whose target the width-K beam
# retrieves. Each ranker keeps its best epoch by the validation two-stage Precision@1. The harmonized
# subset is smaller, so H-TS gets more epochs (scaled by the size ratio, at most 20x) to see as many
# updates as TS.


# %%
def precision_eval(k):
  """Validation two-stage Precision@1 with the width-k beam (the keep-best metric)."""
  def eval_fn(ranker):
    lists = t2s.two_stage_top_k(retriever, ranker, valid_users, k, retrieved=retrieved_valid[k])
    return {"valid_P@1": t2s.evaluate_lists(lists, valid_users, valid_q, num_items, ks=(1,)).summary[
        "Precision@1"]}
  return eval_fn


def train_ranker(name, subset, k):
  scale = min(20.0, len(windows) / max(len(subset), 1))
  cfg = dataclasses.replace(CONFIG, ranker_epochs=max(1, round(CONFIG.ranker_epochs * scale)))
  ranker, _ = t2s.train_ranker(cfg, num_items, subset, name=name, eval_fn=precision_eval(k),
                               metric="valid_P@1")
  return ranker


t0 = time.perf_counter()
ts = train_ranker("ts", windows, max(KS))  # one TS ranker serves every K
rankers = {("TS", k): ts for k in KS}
harmonized = {}
for k in KS:
  keep = t2s.harmonized_subset(retriever, windows, k)
  harmonized[k] = keep.mean()
  rankers[("H-TS", k)] = train_ranker(f"h-ts-K{k}", windows.take(np.flatnonzero(keep)), k)
print(f"rankers trained in {time.perf_counter() - t0:.0f} s; H-TS keeps "
      + ", ".join(f"{100 * harmonized[k]:.0f}% of the windows at K={k}" for k in KS))

# %% [markdown]
# ## Table 1: two-stage Precision@1 and Recall@K
# Top-K protocol over the test users: the list is the K retrieved items in the ranker's order (the
# user's context items moved to the end); Precision@1 = the first item is one of the user's held-out
# items (the paper's "top-1 classification accuracy"), Recall@K = the share of the held-out items in the
# list. "retriever only" orders the beam by the retriever's own leaf scores. Recall@K is the same for the
# three rows of a K: the ranker only reorders what the retriever found.

# %%
RANK_KS = tuple(sorted({1, 5, 10, 20} | set(KS)))
results = {}
for k in KS:
  results[("retriever only", k)] = t2s.evaluate_lists(retrieved[k], test_users, test_q, num_items,
                                                      ks=tuple(n for n in RANK_KS if n <= k))
  for method in ("TS", "H-TS"):
    lists = t2s.two_stage_top_k(retriever, rankers[(method, k)], test_users, k, retrieved=retrieved[k])
    results[(method, k)] = t2s.evaluate_lists(lists, test_users, test_q, num_items,
                                              ks=tuple(n for n in RANK_KS if n <= k))
METHODS = ("retriever only", "TS", "H-TS")
print(f"{'method':>15s} " + " ".join(f"{'P@1 K=' + str(k):>10s} {'Recall@' + str(k):>10s}" for k in KS))
for method in METHODS:
  print(f"{method:>15s} " + " ".join(f"{results[(method, k)].summary['Precision@1']:10.4f} "
                                     f"{results[(method, k)].summary[f'Recall@{k}']:10.4f}" for k in KS))

# %% [markdown]
# ### Table 1 as a figure: Precision@1 and Recall@K vs K
# Left: the paper reports H-TS above TS at every K (by 0.4 to 0.7 points on Mind and Movie), both falling
# as K grows (more candidates to confuse the ranker). In our full-length run TS is above H-TS at every K
# (by 3 to 11 points) and its Precision@1 rises slightly with K: the paper's claim does not reproduce
# here. The harmonized subset keeps only a third to a half of the windows; H-TS gets as many updates as
# TS but sees fewer distinct samples, the trade-off the paper itself points out. One seed and ~250 test
# users: a point of Precision@1 is about 2.5 users. Right: Recall@K rises with K and is shared by all
# three orderings.

# %%
import matplotlib.pyplot as plt

fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
for method, style in zip(METHODS, (":", "-", "--")):
  axes[0].plot(KS, [results[(method, k)].summary["Precision@1"] for k in KS], style, marker="o", label=method)
  axes[1].plot(KS, [results[(method, k)].summary[f"Recall@{k}"] for k in KS], style, marker="o", label=method)
for ax, ylabel in zip(axes, ("two-stage Precision@1", "Recall@K (retrieved set)")):
  ax.set_xticks(KS)
  ax.set_xlabel("K retrieved")
  ax.set_ylabel(ylabel)
  ax.legend(fontsize=8)
fig.suptitle("Table 1: TS vs H-TS with a fixed tree retriever")
plt.show()

# %% [markdown]
# ### Recall@n within the K-item list (largest K)
# How well each ordering puts held-out items at the top of the same K retrieved items: at n = K the
# three curves meet (the retrieved set's recall). A ranker earns its place when its curve lies above the
# retriever's own order (dotted).

# %%
k = max(KS)
fig, ax = plt.subplots(figsize=(6, 3.2))
for method, style in zip(METHODS, (":", "-", "--")):
  ax.plot(RANK_KS, [results[(method, k)].summary[f"Recall@{n}"] for n in RANK_KS], style, marker="o",
          label=method)
ax.set_xscale("log")
ax.set_xticks(RANK_KS, [str(n) for n in RANK_KS])
ax.set_xlabel(f"n (first n of the K={k} list)")
ax.set_ylabel("Recall@n")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## Proposition 4.1: the two-stage error decomposition
# `P_two = P_ret + P~_rank(K) (1 - P_ret)`: the two-stage error is the retrieval error (the beam misses
# every held-out item) plus the ranker's error among the users whose beam holds one. Since the ranker's
# first item is always one of the K retrieved, the identity holds exactly on measured lists (the column
# `abs_error`, `|P_two - predicted|`, checks the lists' consistency). With the TS ranker alone over the
# whole catalogue (`P_rank(N)`, for both rows), Corollary 4.2: the two-stage model beats it iff `P_ret <= (P_rank(N) - P~_rank) /
# (1 - P~_rank)`. In our full-length run the beam misses every held-out item for only 1-4% of the users,
# so the two-stage error is almost all the ranker's; TS beats its ranker alone over all items at every K.

# %%
ranker_alone = t2s.evaluate_lists(t2s.ranker_full_top_k(rankers[("TS", max(KS))], test_users, num_items, 1),
                                  test_users, test_q, num_items, ks=(1,))
decomposition = {(m, k): t2s.error_decomposition(results[("retriever only", k)], results[(m, k)], k,
                                                  ranker_alone)
                 for m in ("TS", "H-TS") for k in KS}
cols = ("P_retrieve", "P_rank_given_retrieved", "P_two_stage", "abs_error", "P_rank_full",
        "corollary_threshold")
print(f"{'method':>6s} {'K':>4s} " + " ".join(f"{c:>22s}" for c in cols) + "  beats ranker alone")
for (m, k), d in decomposition.items():
  print(f"{m:>6s} {k:4d} " + " ".join(f"{d[c]:22.4f}" for c in cols) + f"  {d['two_stage_beats_ranker']}")

# %% [markdown]
# ## Figure 1: retriever recall vs the number of branches B
# One retriever per B (same embedding size, budget and keep-best rule as the retriever above, which is
# reused for its own B), Recall@20 of a beam of 100 on the test users (the short run: Recall@10 with a
# beam of 40). The paper (Mind, Movie) finds recall rising with B; Theorem 4.5's bound has the factor
# `T = B N / sqrt(B^2 - 1)` (dashed, as T / N), which falls toward N as B grows. Our retrievers get a
# small fixed budget and no per-B grid search (the paper tunes weight decay and negatives per B), so the
# curve here need not rise; in our full-length run it moves between 0.16 and 0.19 without a trend in B.

# %%
sweep = {}
for b in BRANCHES:
  r = retriever if b == CONFIG.branching else t2s.train_retriever(
      dataclasses.replace(CONFIG, branching=b), split.train, windows, eval_fn=recall_eval(max(KS)),
      metric="valid_recall")[0]
  lists = t2s.retrieval_top_k(r, test_users, SWEEP_BEAM)
  sweep[b] = t2s.evaluate_lists(lists, test_users, test_q, num_items, ks=(SWEEP_AT,)).summary[
      f"Recall@{SWEEP_AT}"]
  print(f"B={b:3d} (height {r.tree.height}): Recall@{SWEEP_AT} = {sweep[b]:.4f}")
fig, ax = plt.subplots(figsize=(6, 3.2))
ax.plot(BRANCHES, [sweep[b] for b in BRANCHES], marker="o", label=f"Recall@{SWEEP_AT} (beam {SWEEP_BEAM})")
ax.set_xscale("log", base=2)
ax.set_xticks(BRANCHES, [str(b) for b in BRANCHES])
ax.set_xlabel("number of branches B")
ax.set_ylabel(f"retriever Recall@{SWEEP_AT}")
ax2 = ax.twinx()
ax2.plot(BRANCHES, [b / np.sqrt(b * b - 1) for b in BRANCHES], "--", color="gray")
ax2.set_ylabel("T / N = B / sqrt(B^2 - 1) (dashed)")
ax.legend(fontsize=8)
ax.set_title("Figure 1: branches vs retriever recall")
plt.show()

# %% [markdown]
# ## Sanity checks
# Every method has a row for every K, metrics are probabilities, the ranker only reorders the retrieved
# set, and Proposition 4.1 holds on the lists; not that H-TS beats TS.

# %%
for (method, k), res in results.items():
  for m, v in res.summary.items():
    if m != "num_queries":
      assert 0.0 <= v <= 1.0, (method, k, m, v)
  assert res.summary["num_queries"] == len(test_users.history)
  assert np.isclose(res.summary[f"Recall@{k}"], results[("retriever only", k)].summary[f"Recall@{k}"])
assert {(m, k) for m in METHODS for k in KS} == set(results)
assert all(d["abs_error"] < 1e-9 for d in decomposition.values())
assert all(0.0 <= v <= 1.0 for v in sweep.values()) and set(sweep) == set(BRANCHES)
print("all checks passed")
