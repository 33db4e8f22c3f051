"""Tree retriever: node scorers (Eqs. 7-9) and the per-level sampled softmax (Appendix A, DeFoRec).

:class:`NodeScorer` scores (user, node) pairs; the user is its history (the last 69 items, right-aligned,
padding id ``num_items``), the node a learned vector w_v (``node_emb``, one row per node of the complete
tree, global ids of :mod:`jaxrec.retrieval.tree`):

* ``"linear"``: f_lin(x, v) = <x, w_v> (Eq. 7), x the masked mean of the history's item vectors.
* ``"mlp"``: f_mlp(x, v) = MLP([x ; w_v]) (Eq. 8), ReLU hidden layers ``mlp_hidden``, then 1.
* ``"attention"``: f_ta (Eq. 9, TDM): per history item a_k the weight
  w_k = W2 PReLU(W1 [a_k ; a_k * w_v ; w_v]) (hidden ``attention_hidden``, TDM's 36), the 10 window
  vectors z_j = sum_{k in C_j} w_k a_k (windows [1,1,1,2,2,2,10,10,20,20], newest first; summed as in the
  paper's Eq. 9 and DTR, TDM averages), then MLP([z_1 .. z_10 ; w_v]) (TDM: 128, 64, 32, then 1).

Departure: DeFoRec/TDM may replace each history item by its own ancestor at the scored node's level; here
the history always uses the item vectors (the paper's Eq. 9 does too).

:func:`level_softmax_loss` is the training objective: for every sample and every level l = 1..H one
sampled softmax whose positive is the target leaf's ancestor at level l and whose negatives are
``retriever_negatives`` nodes drawn uniformly (with replacement) among the level's valid nodes, with the
logQ correction log(M q) = log(M / n_l) on the negatives (an unbiased-in-the-limit estimate of the full
per-level softmax, Jean et al. 2015); a negative equal to the positive is masked. The loss is the mean over
levels and samples. Negatives are drawn on the host (:func:`sample_level_negatives`), so the loss is a
pure function of (params, batch) and the learner is cached on the static config.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrec.methods.tree_two_stage.config import WINDOWS, TreeTwoStageConfig
from jaxrec.methods.tree_two_stage.data import window_ids
from jaxrec.models import losses
from jaxrec.retrieval import tree as tree_lib
from jaxrec.train import learner as learner_lib


class MLP(nn.Module):
  """Dense layers ``features`` (the last one linear), activation between them."""

  features: tuple[int, ...]
  activation: str = "relu"

  @nn.compact
  def __call__(self, x):
    for i, f in enumerate(self.features):
      x = nn.Dense(f, name=f"dense_{i}")(x)
      if i < len(self.features) - 1:
        x = nn.PReLU(name=f"prelu_{i}")(x) if self.activation == "prelu" else nn.relu(x)
    return x


class PairUnit(nn.Module):
  """An attention unit on every (candidate, history item) pair without building the [.., C, L, *d] inputs.

  The first layer of ``MLP(features)`` applied to the concatenation of ``blocks`` (names of
  ``"q"``, ``"h"``, ``"q-h"``, ``"q*h"``) is a sum of per-block products: q W_q + h W_h + (q - h) W_d +
  (q * h) W_p = q (W_q + W_d) + h (W_h - W_d) + sum_d q_d h_d W_p[d], the last an einsum that never
  materialises q * h, so memory is O(B C L k) for a first layer of width k, not O(B C L d).
  Inputs: q [B, C, d], h [B, L, d]; output [B, C, L] (the last layer's single unit).
  """

  features: tuple[int, ...]
  blocks: tuple[str, ...]

  @nn.compact
  def __call__(self, q, h):
    d, k = q.shape[-1], self.features[0]
    nb = len(self.blocks)
    w = self.param("w0", nn.initializers.lecun_normal(), (nb * d, k)).reshape(nb, d, k)
    blk = dict(zip(self.blocks, w))
    zero = jnp.zeros((d, k), q.dtype)
    wq = blk.get("q", zero) + blk.get("q-h", zero)
    wh = blk.get("h", zero) - blk.get("q-h", zero)
    x = (jnp.einsum("bcd,dk->bck", q, wq)[:, :, None] + jnp.einsum("bld,dk->blk", h, wh)[:, None]
         + self.param("b0", nn.initializers.zeros, (k,)))
    if "q*h" in blk:
      x = x + jnp.einsum("bcdk,bld->bclk", q[..., None] * blk["q*h"], h)
    x = nn.PReLU(name="prelu_0")(x)
    return MLP(tuple(self.features[1:]), activation="prelu", name="rest")(x)[..., 0]


class NodeScorer(nn.Module):
  """f(x, v) for a batch of users and per-user node ids: ``(history [b, L], mask [b, L], nodes [b, C])
  -> [b, C]``."""

  kind: str
  num_items: int
  num_nodes: int
  dim: int
  mlp_hidden: tuple[int, ...] = (128, 64, 32)
  attention_hidden: int = 36
  windows: tuple[int, ...] = WINDOWS

  def setup(self):
    init = nn.initializers.normal(0.05)
    self.item_emb = nn.Embed(self.num_items + 1, self.dim, embedding_init=init)
    self.node_emb = nn.Embed(self.num_nodes, self.dim, embedding_init=init)
    if self.kind in ("mlp", "attention"):
      self.mlp = MLP(tuple(self.mlp_hidden) + (1,))
    if self.kind == "attention":
      self.att = PairUnit((self.attention_hidden, 1), blocks=("h", "q*h", "q"))

  def user_vector(self, history, mask):
    h = self.item_emb(history) * mask[..., None]
    return h.sum(-2) / jnp.maximum(mask.sum(-1, keepdims=True), 1)

  def __call__(self, history, mask, nodes):
    w = self.node_emb(nodes)  # [b, C, d]
    if self.kind == "linear":
      return jnp.einsum("bd,bcd->bc", self.user_vector(history, mask), w)
    if self.kind == "mlp":
      x = jnp.broadcast_to(self.user_vector(history, mask)[:, None, :], w.shape)
      return self.mlp(jnp.concatenate([x, w], -1))[..., 0]
    h = self.item_emb(history)  # [b, L, d]
    b, c, _ = w.shape
    weight = self.att(w, h) * mask[:, None, :]  # [b, C, L]: W2 PReLU(W1 [a_k ; a_k * w_v ; w_v])
    onehot = jax.nn.one_hot(jnp.asarray(window_ids(self.windows)), len(self.windows), dtype=h.dtype)
    z = jnp.einsum("bcl,bld,lj->bcjd", weight, h, onehot).reshape(b, c, -1)
    return self.mlp(jnp.concatenate([z, w], -1))[..., 0]


def make_scorer(cfg: TreeTwoStageConfig, num_items: int, tree: tree_lib.TreeIndex) -> NodeScorer:
  return NodeScorer(kind=cfg.scorer, num_items=num_items, num_nodes=tree.num_nodes, dim=cfg.dim,
                    mlp_hidden=tuple(cfg.mlp_hidden), attention_hidden=cfg.attention_hidden)


@dataclasses.dataclass(frozen=True)
class BeamScore:
  """``score_fn(params, x, node_ids [C]) -> [C]`` of :func:`jaxrec.retrieval.beam_search.beam_search`
  for one user ``x = {"history": [L], "history_mask": [L]}`` (hashable: a static jit argument)."""

  module: NodeScorer

  def __call__(self, params, x: Mapping[str, jax.Array], node_ids: jax.Array) -> jax.Array:
    return self.module.apply(params, x["history"][None], x["history_mask"][None], node_ids[None])[0]


def init_params(module: NodeScorer, rng: jax.Array, length: int) -> Any:
  hist = jnp.zeros((1, length), jnp.int32)
  return module.init(rng, hist, jnp.ones((1, length), bool), jnp.zeros((1, 1), jnp.int32))


def leaf_vectors(params: Any, tree: tree_lib.TreeIndex) -> np.ndarray:
  """The learned leaf node vector of every item [N, d] (the representation a rebuilt tree clusters)."""
  nodes = np.asarray(params["params"]["node_emb"]["embedding"])
  return nodes[tree.offset(tree.height) + np.asarray(tree.item_to_leaf)]


def with_tree(params: Any, old: tree_lib.TreeIndex, new: tree_lib.TreeIndex) -> Any:
  """Parameters for a rebuilt tree: leaves keep their item's vector, inner nodes the mean of theirs."""
  leaf = leaf_vectors(params, old)
  nodes = tree_lib.node_vectors_from_items(new, jnp.asarray(leaf))
  out = jax.tree.map(lambda x: x, params)
  out["params"]["node_emb"]["embedding"] = nodes.astype(leaf.dtype)
  return out


# -- per-level sampled softmax ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LevelSampler:
  """Host sampler of uniform negatives within each level of a tree (valid nodes only)."""

  valid_ids: np.ndarray  # concatenated sorted global ids of the valid nodes of levels 1..H
  starts: np.ndarray     # [H] start of each level in valid_ids
  counts: np.ndarray     # [H] valid nodes per level

  @classmethod
  def for_tree(cls, tree: tree_lib.TreeIndex) -> "LevelSampler":
    valid = np.asarray(tree.node_valid)
    ids, counts = [], []
    for level in range(1, tree.height + 1):
      lv = np.flatnonzero(valid[tree.offset(level):tree.offset(level) + tree.branching**level])
      ids.append(lv + tree.offset(level))
      counts.append(lv.size)
    counts = np.asarray(counts, np.int64)
    return cls(np.concatenate(ids).astype(np.int32), np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)

  def log_q(self, num_negatives: int) -> np.ndarray:
    """float32 [H, 1 + M]: 0 for the positive, log(M / n_l) for each negative of level l."""
    neg = np.log(num_negatives / self.counts.astype(np.float64))
    out = np.repeat(neg[:, None], 1 + num_negatives, axis=1)
    out[:, 0] = 0.0
    return out.astype(np.float32)


def sample_level_negatives(rng: np.random.Generator, sampler: LevelSampler, positives: np.ndarray,
                           num_negatives: int) -> tuple[np.ndarray, np.ndarray]:
  """``(negatives int32 [b, H, M], valid bool [b, H, M])``: uniform valid nodes of each level, a draw
  equal to the sample's positive at that level masked."""
  b, h = positives.shape
  u = rng.random((b, h, num_negatives))
  j = np.minimum((u * sampler.counts[None, :, None]).astype(np.int64), sampler.counts[None, :, None] - 1)
  neg = sampler.valid_ids[sampler.starts[None, :, None] + j]
  return neg, neg != positives[:, :, None]


def level_softmax_loss(module: NodeScorer, params: Any, batch: Mapping[str, jax.Array]) -> tuple:
  """Mean over samples and levels of the per-level sampled softmax (module docstring).

  batch: ``history`` [b, L], ``history_mask`` [b, L], ``pos_nodes`` [b, H], ``neg_nodes`` [b, H, M],
  ``neg_valid`` [b, H, M], ``log_q`` [H, 1 + M], ``mask`` [b].
  """
  pos, neg = batch["pos_nodes"], batch["neg_nodes"]
  b, h, m = neg.shape
  nodes = jnp.concatenate([pos[..., None], neg], -1).reshape(b, h * (1 + m))
  scores = module.apply(params, batch["history"], batch["history_mask"], nodes).reshape(b, h, 1 + m)
  ok = jnp.concatenate([jnp.ones((b, h, 1), bool), batch["neg_valid"]], -1)
  scores = jnp.where(ok, scores, -1e9)  # finite (a masked draw)
  log_q = jnp.broadcast_to(batch["log_q"][None], scores.shape)
  row_mask = jnp.repeat(batch["mask"], h)
  loss = losses.sampled_softmax(scores.reshape(b * h, 1 + m), row_mask, log_q.reshape(b * h, 1 + m))
  top1 = jnp.mean(jnp.all(~(scores[..., 1:] >= scores[..., :1]), -1), axis=0)  # [H]
  return loss, {"level_acc_last": top1[-1], "level_acc_first": top1[0]}


@functools.lru_cache(maxsize=32)
def retriever_learner(module: NodeScorer, learning_rate: float) -> learner_lib.Learner:
  """``gradient_learner(level_softmax_loss, adam)``, cached on (module, lr): the same update object for
  another seed, budget or tree of the same shapes."""

  def loss_fn(params, batch, rng):
    del rng
    return level_softmax_loss(module, params, batch)

  return learner_lib.gradient_learner(loss_fn, optax.adam(learning_rate))


def retriever_batches(windows, pos_nodes: np.ndarray, sampler: LevelSampler, cfg: TreeTwoStageConfig,
                      seed: int):
  """``batches_fn(epoch)``: shuffled static-shape batches with host-drawn level negatives; the order and
  the negatives depend only on (seed, epoch)."""
  from jaxrec.data import samplers  # pylint: disable=import-outside-toplevel
  log_q = sampler.log_q(cfg.retriever_negatives)
  arrays = {"history": windows.history, "history_mask": windows.mask, "pos_nodes": pos_nodes}

  def batches_fn(epoch: int):
    rng = np.random.default_rng([seed, epoch, 1])
    for batch in samplers.iterate_batches(arrays, cfg.batch_size, rng):
      neg, ok = sample_level_negatives(rng, sampler, batch["pos_nodes"], cfg.retriever_negatives)
      batch.update(neg_nodes=neg, neg_valid=ok, log_q=log_q)
      yield batch

  return batches_fn
