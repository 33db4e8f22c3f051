"""Configuration of the tree two-stage recommender (paper 004, Sec. 3.2 and Appendix D.2).

One frozen dataclass holds every hyper-parameter; :meth:`TreeTwoStageConfig.static` is the part that
shapes the compiled functions (everything but the seed and the budgets), on which the learners are
cached, so another seed or epoch count reuses the compiled updates.
"""

from __future__ import annotations

import dataclasses

from jaxrec.train import fit

SCORERS = ("linear", "mlp", "attention")
TREE_INITS = ("random", "cooccurrence")
RANKER_TRAINING = ("ts", "h-ts")

# Appendix D.2: 10 time windows over the last 69 items, newest first (the three newest alone).
WINDOWS = (1, 1, 1, 2, 2, 2, 10, 10, 20, 20)
HISTORY_LEN = sum(WINDOWS)  # 69


@dataclasses.dataclass(frozen=True)
class TreeTwoStageConfig:
  """Hyper-parameters of the retriever (tree + node scorer) and of the DIN ranker.

  Attributes:
    branching: B, children per node of the complete tree.
    tree_init: leaf order of the first tree: ``"random"`` (Appendix D.2, Fig. 1: "we randomly
      initialize the correspondence between leaf nodes and labels") or ``"cooccurrence"`` (Sec. 3.2.1:
      z_i = y_i / ||y_i||, the item's column of the user-item matrix, randomly projected to
      ``cooccurrence_dim`` dimensions, then balanced k-means).
    cooccurrence_dim: dimension of the random projection of the co-occurrence representation.
    rebuild_rounds: times the tree is rebuilt from the learned leaf vectors (balanced k-means on the
      leaf node vectors, TDM/JTM) and the retriever retrained from its current parameters.
    scorer: retriever node scorer, ``"linear"`` (Eq. 7, <x, w_v> with x the mean of the history's item
      vectors), ``"mlp"`` (Eq. 8 on [x ; w_v]) or ``"attention"`` (Eq. 9, target attention over the 10
      time windows, TDM).
    dim: item and node embedding size of the retriever (24 in the paper).
    mlp_hidden: hidden sizes of the retriever MLP (the MLP scorer; after the pooled windows for the
      attention scorer: TDM 128, 64, 32).
    attention_hidden: hidden size of the target-attention unit (TDM: 36).
    retriever_negatives: uniform negatives per tree level (within the level), logQ corrected.
    retriever_epochs, retriever_lr, batch_size: the retriever's budget and Adam step.
    beam_width: K of the beam search used for H-TS's training subset (and the default retrieval).
    ranker_dim: DIN item embedding size (96 in the paper).
    ranker_attention: hidden sizes of DIN's attention unit ([64, 16]).
    ranker_mlp: hidden sizes of DIN's MLP ([200, 80], then 1).
    ranker_negatives: uniform negatives of the ranker's sampled softmax (60).
    ranker_epochs, ranker_lr: the ranker's budget and Adam step.
    max_train_samples: cap on the training windows (a seeded subsample; None: all), to bound CPU time.
    seed: the one seed (tree init, sampling, initialisation).
  """

  branching: int = 4
  tree_init: str = "random"
  cooccurrence_dim: int = 64
  rebuild_rounds: int = 0
  scorer: str = "mlp"
  dim: int = 24
  mlp_hidden: tuple[int, ...] = (128, 64, 32)
  attention_hidden: int = 36
  retriever_negatives: int = 70
  retriever_epochs: int = 2
  retriever_lr: float = 1e-3
  batch_size: int = 256
  beam_width: int = 80
  ranker_dim: int = 96
  ranker_attention: tuple[int, ...] = (64, 16)
  ranker_mlp: tuple[int, ...] = (200, 80)
  ranker_negatives: int = 60
  ranker_epochs: int = 2
  ranker_lr: float = 1e-3
  max_train_samples: int | None = None
  seed: int = 0

  def __post_init__(self):
    fit.check_fields(self, {
        "branching": ("int", 2, False), "tree_init": (TREE_INITS, None, False),
        "cooccurrence_dim": ("int", 1, False), "rebuild_rounds": ("int", 0, False),
        "scorer": (SCORERS, None, False), "dim": ("int", 1, False),
        "attention_hidden": ("int", 1, False), "retriever_negatives": ("int", 1, False),
        "retriever_epochs": ("int", 0, False), "retriever_lr": ("pos", 0.0, False),
        "batch_size": ("int", 1, False), "beam_width": ("int", 1, False), "ranker_dim": ("int", 1, False),
        "ranker_negatives": ("int", 1, False), "ranker_epochs": ("int", 0, False),
        "ranker_lr": ("pos", 0.0, False), "max_train_samples": ("int", 1, True), "seed": ("int", 0, False)})
    for name in ("mlp_hidden", "ranker_attention", "ranker_mlp"):
      v = getattr(self, name)
      if not isinstance(v, tuple) or not v or any(not isinstance(h, int) or h < 1 for h in v):
        raise fit.ConfigError(type(self).__name__, name,
                              f"must be a non-empty tuple of integers >= 1, got {v!r}")

  def static(self) -> "TreeTwoStageConfig":
    """The fields that shape compiled code (seed and budgets reset): the learners' cache key."""
    return dataclasses.replace(self, seed=0, retriever_epochs=0, ranker_epochs=0, max_train_samples=None,
                               rebuild_rounds=0, tree_init="random", beam_width=1)
