"""Tree two-stage recommender: tree retriever + DIN ranker, TS vs H-TS (paper 004, Secs. 3-4, App. D).

* :mod:`.config`: :class:`TreeTwoStageConfig` (tree, scorer, ranker, budgets).
* :mod:`.data`: Appendix D.2's training windows (69 context + 1 target), grouped evaluation queries,
  the co-occurrence item representation of Sec. 3.2.1, the 10 time windows.
* :mod:`.retriever`: node scorers (linear Eq. 7, MLP Eq. 8, target attention Eq. 9) and the per-level
  sampled softmax with logQ (DeFoRec), a cached ``gradient_learner``.
* :mod:`.ranker`: DIN with a sampled softmax, a cached ``gradient_learner``; a ScoreFn.
* :mod:`.pipeline`: retriever / ranker training (``stages.run_stages``), jitted beam-search retrieval,
  H-TS's harmonized subset, the two-stage top-K contract, Proposition 4.1's decomposition.

Usage::

    from jaxrec.methods import tree_two_stage as t2s
    cfg = t2s.TreeTwoStageConfig(branching=4, scorer="mlp")
    windows = t2s.training_windows(split.train)
    retriever, _ = t2s.train_retriever(cfg, split.train, windows)
    keep = t2s.harmonized_subset(retriever, windows, beam_width=80)           # H-TS
    ranker, _ = t2s.train_ranker(cfg, log.num_items, windows.take(np.flatnonzero(keep)))
    users = t2s.UserQueries.from_queries(test_queries)                        # t2s.eval_queries(...)
    lists = t2s.two_stage_top_k(retriever, ranker, users, beam_width=80)      # [U, 80] item ids
    result = t2s.evaluate_lists(lists, users, test_queries, log.num_items)    # Precision@1, Recall@K
"""

from jaxrec.methods.tree_two_stage.config import (
    HISTORY_LEN, RANKER_TRAINING, SCORERS, TREE_INITS, WINDOWS, TreeTwoStageConfig)
from jaxrec.methods.tree_two_stage.data import (
    Windows, cooccurrence_representation, eval_queries, training_windows, window_ids)
from jaxrec.methods.tree_two_stage.pipeline import (
    Ranker, Retriever, UserQueries, error_decomposition, evaluate_lists, harmonized_subset, initial_tree,
    order_lists, ranker_full_top_k, ranker_scores, retrieval_top_k, retrieve, train_ranker, train_retriever,
    two_stage_top_k)
from jaxrec.methods.tree_two_stage.ranker import DIN, RankerScore, ranker_loss
from jaxrec.methods.tree_two_stage.retriever import (
    BeamScore, LevelSampler, NodeScorer, level_softmax_loss, sample_level_negatives)

__all__ = ["BeamScore", "DIN", "HISTORY_LEN", "LevelSampler", "NodeScorer", "RANKER_TRAINING", "Ranker",
           "RankerScore", "Retriever", "SCORERS", "TREE_INITS", "TreeTwoStageConfig", "UserQueries",
           "WINDOWS", "Windows", "cooccurrence_representation", "error_decomposition", "eval_queries",
           "evaluate_lists", "harmonized_subset", "initial_tree", "level_softmax_loss", "order_lists",
           "ranker_full_top_k", "ranker_loss", "ranker_scores", "retrieval_top_k", "retrieve",
           "sample_level_negatives", "train_ranker", "train_retriever", "training_windows", "two_stage_top_k",
           "window_ids"]
