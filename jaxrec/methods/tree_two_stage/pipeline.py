"""Training (retriever, then TS / H-TS rankers) and the two-stage prediction (paper 004, Secs. 3.2, 4.2).

* :func:`initial_tree`, :func:`train_retriever`: the tree (random leaves or co-occurrence k-means,
  optionally rebuilt from the learned leaf vectors), then the node scorer trained with the per-level
  sampled softmax, each round one stage of :func:`jaxrec.train.stages.run_stages` (``gradient_learner``,
  ``loop.train``: checkpoints, resume, keep-best on the validation retrieval recall when given).
* :func:`retrieve`: jitted, vmapped beam search of width K (static shapes) over padded query batches.
* :func:`harmonized_subset`: H-TS's training set, exactly the training windows whose target the beam
  retrieves (Sec. 4.2: "using a subset of training data successfully retrieved by the retriever").
* :func:`train_ranker`: DIN on a set of windows (all: TS; the harmonized subset: H-TS).
* :func:`two_stage_top_k`: the retrieval/ranking contract, a function returning the top-K item ids per
  query: the K retrieved items ordered by the ranker (the first is h(x) of Sec. 3.2.2). The user's known
  (context) items are moved behind the others in every list (the retriever's beam does not see them;
  departure: the paper does not say whether context items are filtered).
* :func:`error_decomposition`: Proposition 4.1's terms measured on the returned lists.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.data.log import InteractionLog
from jaxrec.eval import protocols as protocols_lib
from jaxrec.eval.queries import Queries
from jaxrec.methods.tree_two_stage import data as data_lib
from jaxrec.methods.tree_two_stage import ranker as ranker_lib
from jaxrec.methods.tree_two_stage import retriever as retriever_lib
from jaxrec.methods.tree_two_stage.config import HISTORY_LEN, TreeTwoStageConfig
from jaxrec.retrieval import beam_search as bs
from jaxrec.retrieval import tree as tree_lib
from jaxrec.train import loop as loop_lib
from jaxrec.train import stages


@dataclasses.dataclass(frozen=True)
class Retriever:
  """A trained tree retriever: its scorer module, parameters and tree."""

  module: retriever_lib.NodeScorer
  params: Any
  tree: tree_lib.TreeIndex


@dataclasses.dataclass(frozen=True)
class Ranker:
  module: ranker_lib.DIN
  params: Any

  @property
  def score_fn(self) -> ranker_lib.RankerScore:
    return ranker_lib.RankerScore(self.module)


def initial_tree(cfg: TreeTwoStageConfig, train: InteractionLog) -> tree_lib.TreeIndex:
  """The first tree: random leaf order (Appendix D.2) or balanced k-means on co-occurrence (Sec. 3.2.1)."""
  if cfg.tree_init == "random":
    return tree_lib.from_item_order(np.random.default_rng([cfg.seed, 7]).permutation(train.num_items),
                                    cfg.branching)
  z = data_lib.cooccurrence_representation(train, cfg.cooccurrence_dim, seed=cfg.seed)
  return tree_lib.build_balanced_kmeans(z, cfg.branching, seed=cfg.seed)


# -- retrieval ------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("score_fn", "beam_width"))
def _beam(score_fn, params, tree, history, mask, beam_width: int):
  res = bs.batched_beam_search(score_fn, params, tree, {"history": history, "history_mask": mask}, beam_width)
  return res.items, res.scores


def retrieve(retriever: Retriever, history: np.ndarray, mask: np.ndarray, beam_width: int,
             batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """``(items int32 [Q, K], leaf scores [Q, K])`` of the beam search for every history (-1: empty slot).

  Batches of ``batch_size`` rows (the last one, or a smaller input, padded with its first row), one
  compiled function per (scorer, K): new parameters or another tree of the same shapes do not recompile."""
  q = history.shape[0]
  bsz = int(batch_size)  # one shape for every call (validation, test, training windows): one compile
  score_fn = retriever_lib.BeamScore(retriever.module)
  out_i, out_s = [], []
  for s in range(0, q, bsz):
    idx = np.arange(s, s + bsz)
    idx = np.where(idx < q, idx, s)
    out = _beam(score_fn, retriever.params, retriever.tree, history[idx], mask[idx], beam_width=beam_width)
    out_i.append(out[0])
    out_s.append(out[1])
  items = np.concatenate([np.asarray(x) for x in jax.device_get(out_i)])[:q]
  scores = np.concatenate([np.asarray(x) for x in jax.device_get(out_s)])[:q]
  return items, scores


def harmonized_subset(retriever: Retriever, windows: data_lib.Windows, beam_width: int) -> np.ndarray:
  """bool [S]: whether the beam of width K retrieves the window's target (H-TS keeps these)."""
  items, _ = retrieve(retriever, windows.history, windows.mask, beam_width)
  return (items == windows.target[:, None]).any(1)


# -- training ------------------------------------------------------------------------------------------


def _loop_config(epochs: int, metric: Optional[str], steps: int) -> loop_lib.LoopConfig:
  return loop_lib.LoopConfig(num_epochs=epochs, log_every=max(1, min(100, steps)), metric=metric,
                             progress=False, prefetch=2)


def train_retriever(cfg: TreeTwoStageConfig, train: InteractionLog, windows: data_lib.Windows, *,
                    eval_fn: Optional[Callable[[Retriever], dict]] = None, metric: Optional[str] = None,
                    workdir: Optional[str] = None) -> tuple[Retriever, dict]:
  """Trains the node scorer on ``windows`` (one stage per tree; ``rebuild_rounds`` rebuilds).

  ``eval_fn(retriever) -> {name: value}`` (e.g. validation recall) drives keep-best with ``metric``.
  Returns the retriever and ``{stage name: history}``.
  """
  tree = initial_tree(cfg, train)
  module = retriever_lib.make_scorer(cfg, train.num_items, tree)
  rng = jax.random.PRNGKey(cfg.seed)
  params = retriever_lib.init_params(module, jax.random.fold_in(rng, 0), windows.history.shape[1])
  learner = retriever_lib.retriever_learner(module, cfg.retriever_lr)
  steps = -(-len(windows) // cfg.batch_size)
  histories = {}
  for rnd in range(1 + cfg.rebuild_rounds):
    if rnd:
      new = tree_lib.build_balanced_kmeans(retriever_lib.leaf_vectors(params, tree), cfg.branching,
                                           seed=cfg.seed + rnd)
      params, tree = retriever_lib.with_tree(params, tree, new), new
    pos = np.asarray(tree_lib.item_ancestors(tree, jnp.asarray(windows.target)))
    sampler = retriever_lib.LevelSampler.for_tree(tree)
    tree_now = tree
    fn = None if eval_fn is None else (lambda p, t=tree_now: eval_fn(Retriever(module, p, t)))
    stage = stages.Stage(
        name=f"retriever{rnd}", learner=learner,
        batches_fn=retriever_lib.retriever_batches(windows, pos, sampler, cfg, cfg.seed + 1000 * rnd),
        config=_loop_config(cfg.retriever_epochs, metric if eval_fn else None, steps), eval_fn=fn,
        run_config={"config": dataclasses.asdict(cfg), "round": rnd, "samples": len(windows)})
    params, hist = stages.run_stages([stage], params, rng=jax.random.fold_in(rng, 1 + rnd), workdir=workdir)
    histories.update(hist)
  return Retriever(module, params, tree), histories


def train_ranker(cfg: TreeTwoStageConfig, num_items: int, windows: data_lib.Windows, *, name: str = "ranker",
                 eval_fn: Optional[Callable[[Ranker], dict]] = None, metric: Optional[str] = None,
                 workdir: Optional[str] = None) -> tuple[Ranker, list]:
  """Trains DIN on ``windows`` (all windows: TS; :func:`harmonized_subset`'s: H-TS)."""
  module = ranker_lib.make_ranker(cfg, num_items)
  rng = jax.random.PRNGKey(cfg.seed + 1)
  params = ranker_lib.init_params(module, jax.random.fold_in(rng, 0), windows.history.shape[1])
  fn = None if eval_fn is None else (lambda p: eval_fn(Ranker(module, p)))
  stage = stages.Stage(
      name=name, learner=ranker_lib.ranker_learner(module, cfg.ranker_lr),
      batches_fn=ranker_lib.ranker_batches(windows, num_items, cfg, cfg.seed + 1),
      config=_loop_config(cfg.ranker_epochs, metric if eval_fn else None, -(-len(windows) // cfg.batch_size)),
      eval_fn=fn, run_config={"config": dataclasses.asdict(cfg), "samples": len(windows), "name": name})
  params, hist = stages.run_stages([stage], params, rng=jax.random.fold_in(rng, 1), workdir=workdir)
  return Ranker(module, params), hist[name]


# -- two-stage prediction --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class UserQueries:
  """One row per evaluated user of grouped queries: ``history``/``mask`` [U, L], ``known`` [U, W]
  (-1 padded), ``rows`` [Q] the user row of every query row (to spread per-user lists over queries)."""

  history: np.ndarray
  mask: np.ndarray
  known: np.ndarray
  rows: np.ndarray

  @classmethod
  def from_queries(cls, queries: Queries) -> "UserQueries":
    key = queries.group if queries.group is not None else np.arange(len(queries))
    _, first, rows = np.unique(key, return_index=True, return_inverse=True)
    return cls(queries.features["history"][first], queries.features["history_mask"][first],
               queries.exclusion_matrix(first), rows.reshape(-1))


def order_lists(items: np.ndarray, scores: np.ndarray, known: np.ndarray) -> np.ndarray:
  """Rows of ``items`` sorted by ``scores`` (descending, ties to the earlier slot), the user's known items
  behind the others and empty slots (-1) last."""
  is_known = np.zeros(items.shape, bool)
  for j in range(known.shape[1]):  # W known columns (not items or queries): vectorised over both
    is_known |= (items == known[:, j:j + 1]) & (known[:, j:j + 1] >= 0)
  tier = np.where(items < 0, 2, np.where(is_known, 1, 0))
  s = np.where(np.isfinite(scores), scores, -np.inf)
  order = np.lexsort((np.broadcast_to(np.arange(items.shape[1]), items.shape), -s, tier), axis=-1)
  return np.take_along_axis(items, order, axis=1)


@functools.partial(jax.jit, static_argnames=("score_fn",))
def _rank_scores(score_fn, params, history, mask, items):
  return score_fn(params, {"history": history, "history_mask": mask}, jnp.maximum(items, 0))


def ranker_scores(ranker: Ranker, history: np.ndarray, mask: np.ndarray, items: np.ndarray,
                  batch_size: int = 64) -> np.ndarray:
  """float [U, K]: the ranker's scores of per-user candidate lists (-1 entries scored as item 0)."""
  u = history.shape[0]
  bsz = int(batch_size)
  out = []
  for s in range(0, u, bsz):
    idx = np.arange(s, s + bsz)
    idx = np.where(idx < u, idx, s)
    out.append(_rank_scores(ranker.score_fn, ranker.params, history[idx], mask[idx], items[idx]))
  return np.concatenate([np.asarray(x) for x in jax.device_get(out)])[:u]


def retrieval_top_k(retriever: Retriever, users: UserQueries, beam_width: int) -> np.ndarray:
  """int [U, K]: the beam's K items in the retriever's leaf-score order (known items behind)."""
  items, scores = retrieve(retriever, users.history, users.mask, beam_width)
  return order_lists(items, scores, users.known)


def two_stage_top_k(retriever: Retriever, ranker: Ranker, users: UserQueries, beam_width: int,
                    retrieved: Optional[np.ndarray] = None) -> np.ndarray:
  """The two-stage contract: int [U, K], the retrieved K items ordered by the ranker (h(x) first).

  ``retrieved`` reuses a :func:`retrieval_top_k` result of the same width."""
  if retrieved is None:
    retrieved = retrieval_top_k(retriever, users, beam_width)
  scores = ranker_scores(ranker, users.history, users.mask, retrieved)
  return order_lists(retrieved, np.where(retrieved >= 0, scores, -np.inf), users.known)


def ranker_full_top_k(ranker: Ranker, users: UserQueries, num_items: int, k: int,
                      chunk: int = 512, batch_size: int = 32) -> np.ndarray:
  """int [U, k]: the ranker alone over the whole catalogue (known items excluded), for P_rank(N)."""
  u = users.history.shape[0]
  best = np.zeros((u, 0), np.int64)
  best_s = np.zeros((u, 0))
  for start in range(0, num_items, chunk):
    ids = np.arange(start, min(start + chunk, num_items))
    ids = np.concatenate([ids, np.full(chunk - ids.size, -1)])
    cand = np.broadcast_to(ids, (u, chunk))
    s = ranker_scores(ranker, users.history, users.mask, cand, batch_size)
    s = np.where(cand >= 0, s, -np.inf)
    for j in range(users.known.shape[1]):
      s = np.where((cand == users.known[:, j:j + 1]) & (users.known[:, j:j + 1] >= 0), -np.inf, s)
    allc = np.concatenate([best, cand], 1)
    alls = np.concatenate([best_s, s], 1)
    top = np.argsort(-alls, axis=1, kind="stable")[:, :k]
    best, best_s = np.take_along_axis(allc, top, 1), np.take_along_axis(alls, top, 1)
  return best


def evaluate_lists(lists: np.ndarray, users: UserQueries, queries: Queries, num_items: int,
                   ks=(1, 5, 10, 20, 40, 80, 120)) -> protocols_lib.EvalResult:
  """:func:`jaxrec.eval.protocols.evaluate_top_k` of per-user lists spread over the query rows."""
  return protocols_lib.evaluate_top_k(lists[users.rows], queries, num_items, ks=ks)


def error_decomposition(retrieved: protocols_lib.EvalResult, two_stage: protocols_lib.EvalResult,
                        beam_width: int, full_ranker: Optional[protocols_lib.EvalResult] = None) -> dict:
  """Proposition 4.1 on measured lists (per group: y is the user's ground-truth set, "y in B(x)" that the
  K retrieved items hold one of them, h(x) the ranker's first item).

  P_two = P(h(x) not in y), P_ret = P(y not in B(x)), P~_rank(K) = P(h(x) not in y | y in B(x)), and the
  prediction P_ret + P~_rank (1 - P_ret); with ``full_ranker`` (the ranker alone over all items) also
  Corollary 4.2: P_two <= P_rank(N) iff P_ret <= (P_rank(N) - P~_rank) / (1 - P~_rank). The ``pair_``
  entries are the same terms per (user, ground-truth item) pair. Since h(x) is one of the K retrieved
  items, the identity holds exactly for both readings: the measured and predicted P_two agree up to
  rounding, a check of the lists' consistency (h(x) in B(x)) rather than of a model.
  """
  in_b = retrieved.per_query[f"HR@{beam_width}"] > 0
  hit1 = two_stage.per_query["HR@1"] > 0
  p_ret = float(1 - in_b.mean())
  p_rank = float(1 - hit1[in_b].mean()) if in_b.any() else float("nan")
  p_two = float(1 - hit1.mean())
  out = {"K": beam_width, "P_retrieve": p_ret, "P_rank_given_retrieved": p_rank, "P_two_stage": p_two,
         "P_two_stage_predicted": p_ret + p_rank * (1 - p_ret),
         "retrieved_users": int(in_b.sum()), "users": int(in_b.size)}
  out["abs_error"] = abs(out["P_two_stage"] - out["P_two_stage_predicted"])
  # The same terms per (user, ground-truth item) pair, y a single item (the paper's i.i.d. (x, y) pairs).
  pair_in = retrieved.ranks <= beam_width
  pair_hit = two_stage.ranks == 1
  q_ret = float(1 - pair_in.mean())
  q_rank = float(1 - pair_hit[pair_in].mean()) if pair_in.any() else float("nan")
  out.update(pair_P_retrieve=q_ret, pair_P_rank_given_retrieved=q_rank,
             pair_P_two_stage=float(1 - pair_hit.mean()),
             pair_P_two_stage_predicted=q_ret + q_rank * (1 - q_ret))
  if full_ranker is not None:
    p_n = float(1 - (full_ranker.per_query["HR@1"] > 0).mean())
    thr = (p_n - p_rank) / (1 - p_rank) if p_rank < 1 else float("-inf")
    tol = 1e-12  # both sides of the iff are equalities in the boundary case (P_two = P_rank(N))
    out.update(P_rank_full=p_n, corollary_threshold=thr, two_stage_beats_ranker=p_two <= p_n + tol,
               corollary_condition=p_ret <= thr + tol)
  return out


__all__ = ["HISTORY_LEN", "Ranker", "Retriever", "UserQueries", "error_decomposition", "evaluate_lists",
           "harmonized_subset", "initial_tree", "order_lists", "ranker_full_top_k", "ranker_scores",
           "retrieval_top_k", "retrieve", "train_ranker", "train_retriever", "two_stage_top_k"]
