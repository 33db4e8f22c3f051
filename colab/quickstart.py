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
# # jaxrec quickstart
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxrec/jaxrec/blob/main/colab/quickstart.ipynb)
#
# From an interaction log to full-ranking and sampled metrics in a few calls:
# the embedded synthetic data (or ML-100K, or your own files), a leakage-free split,
# a base recommender trained with the functional training core, and the evaluation
# protocols side by side.
#
# **Run time at full length**: 75 s on CPU (2 shared cores, load average ~12), 2026-12-07.
# The test suite runs this notebook shortened (`JAXREC_NOTEBOOK_SHORT=1`: the `tiny` preset, one epoch).
# Outputs are stripped in git: run it to see them.

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

from jaxrec.data import synthetic
from jaxrec.eval import paper_protocols, suite
from jaxrec.models import nonlearned, registry
from jaxrec.train import fit

SHORT = os.environ.get("JAXREC_NOTEBOOK_SHORT") == "1"  # the test suite's shortened run
EPOCHS = 1 if SHORT else 5
PRESET = "tiny" if SHORT else "small"

# %% [markdown]
# ## Data: the embedded generator
# Power-law user activity, clustered items, drifting interests. Swap in
# `jaxrec.data.load_dataset("ml-100k")` or `load_dataset("ml-25m:/path/ratings.csv")`.

# %%
log = synthetic.generate(PRESET, seed=0)
print(log.stats())

# %% [markdown]
# ## A named protocol: split and queries
# `leave-last-out` (TP, SASRec): repeated (user, item) rows dropped (earliest kept), per-user
# leave-last-out with ties in arrival order, test queries excluding the user's training and validation
# items, 99 sampled negatives and full ranking. `paper_protocols.PROTOCOLS` lists the others.

# %%
protocol = paper_protocols.get("leave-last-out")
print(protocol.describe())
prep = paper_protocols.prepare(log, protocol)
negatives = min(99, prep.num_items // 4)  # the papers' 99, unless the catalog is tiny
rankings = suite.freeze_protocols(protocol.replace(num_negatives=negatives).rankings(), prep.test_queries,
                                  prep.num_items)
popularity = suite.evaluate_all(*nonlearned.popularity(prep.split.train), prep.test_queries,
                                prep.num_items, rankings, train_counts=prep.split.train.user_counts())
print("Popularity", suite.flat_row(popularity))

# %% [markdown]
# ## Train SASRec and compare
# `fit.fit` trains any registered model with the functional core (a learner, the loop, keep-best on
# validation); `score_fn(params, queries, items)` is what every evaluator takes.

# %%
spec = registry.get("sasrec")
config = fit.FitConfig(epochs=EPOCHS, batch_size=256, history_len=20, num_negatives=64,
                       valid_negatives=negatives)
logs = [prep.split.train, prep.split.valid, prep.split.test]
hist = fit.history_len_for("sasrec", config)
valid_q = dataclasses.replace(prep.valid_queries, features=fit.query_features(spec, logs, 1, hist))
test_q = dataclasses.replace(prep.test_queries, features=fit.query_features(spec, logs, 2, hist))
fitted = fit.fit("sasrec", prep.split.train, valid_q, config)
sasrec = suite.evaluate_all(fitted.score_fn, fitted.params, test_q, prep.num_items, rankings,
                            train_counts=prep.split.train.user_counts())
print("SASRec", suite.flat_row(sasrec), f"trained in {fitted.train_seconds:.1f} s")

# %%
for segment, metrics in sasrec["full"]["segments"]["activity"].items():
  print(f"{segment:>12s}  users={metrics['count']:5d}  NDCG@10={metrics['NDCG@10']:.4f}")

# %% [markdown]
# ## NDCG@10 by user activity (full ranking)

# %%
import matplotlib.pyplot as plt
import numpy as np

segments = list(sasrec["full"]["segments"]["activity"])
x = np.arange(len(segments))
fig, ax = plt.subplots(figsize=(6, 3))
for offset, (name, result) in zip((-0.2, 0.2), (("Popularity", popularity), ("SASRec", sasrec))):
  values = [result["full"]["segments"]["activity"][s]["NDCG@10"] for s in segments]
  ax.bar(x + offset, values, width=0.4, label=name)
ax.set_xticks(x, segments)
ax.set_xlabel("user activity (training interactions)")
ax.set_ylabel("NDCG@10")
ax.legend()
plt.show()
assert sasrec["full"]["summary"]["num_queries"] > 0
