# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
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
import os

from experiments import common
from experiments import train as train_binary
from jaxrec.data import synthetic
from jaxrec.eval import suite
from jaxrec.models import nonlearned
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
# ## Split and queries
# Per-user leave-last-out; test queries exclude the user's training and validation items.

# %%
prep = common.prepare(f"synthetic:{PRESET}", "leave_last_out", log=log)
negatives = min(99, prep.num_items // 4)  # the papers' 99, unless the catalog is tiny
protocols = suite.freeze_protocols(suite.standard_protocols(num_negatives=negatives), prep.test_queries,
                                   prep.num_items)
popularity = suite.evaluate_all(*nonlearned.popularity(prep.split.train), prep.test_queries,
                                prep.num_items, protocols)
print("Popularity", suite.flat_row(popularity))

# %% [markdown]
# ## Train SASRec and compare

# %%
config = fit.FitConfig(epochs=EPOCHS, batch_size=256, history_len=20, num_negatives=64,
                       valid_negatives=negatives)
result = train_binary.run("sasrec", prep.spec, config=config, prepared=prep, eval_negatives=negatives)
print("SASRec", suite.flat_row(result["test"]), f"trained in {result['train_seconds']:.1f} s")

# %%
for segment, metrics in result["test"]["full"]["segments"]["activity"].items():
  print(f"{segment:>12s}  users={metrics['count']:5d}  NDCG@10={metrics['NDCG@10']:.4f}")
