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
# From an interaction log to full-ranking and sampled metrics in a few calls:
# the embedded synthetic data (or ML-100K, or your own files), a leakage-free split,
# a base recommender trained with the functional training core, and the evaluation
# protocols side by side. On Colab, first run `!pip install git+<this repository>`.
#
# `JAXREC_NOTEBOOK_EPOCHS` shortens the run (the test suite sets it to 1).

# %%
import dataclasses
import os

from jaxrec.data import synthetic
from jaxrec.eval import paper_protocols, suite
from jaxrec.models import nonlearned, registry
from jaxrec.train import fit

EPOCHS = int(os.environ.get("JAXREC_NOTEBOOK_EPOCHS", "5"))
PRESET = os.environ.get("JAXREC_NOTEBOOK_PRESET", "small")

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
                                prep.num_items, rankings)
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
