"""DIN ranker (Zhou et al. 2018) with a sampled softmax (paper 004, Sec. 4.2 and Appendix D.2).

:class:`DIN` scores candidate items against the user's history: the local activation unit weighs every
history item h_k by a_k = MLP_att([q ; h_k ; q - h_k ; q * h_k]) (hidden ``ranker_attention``, [64, 16] in
the paper, then 1), the interest is sum_k a_k h_k over the real (masked) items, without a softmax (as DIN),
and the score is MLP([interest ; q ; interest * q]) (hidden ``ranker_mlp``, [200, 80], then 1).

Departures (reference: RecForest's DIN): PReLU instead of Dice, no batch norm and no dropout (both need
state or an rng at scoring time; the score function stays a pure function of (params, queries, items)).

Training (:func:`ranker_loss`): sampled softmax over the target and ``ranker_negatives`` (60) uniform
items drawn on the host, logQ correction log(M / N) on the negatives, a draw equal to the target masked.
TS trains on every training window; H-TS on the windows whose target the retriever's beam found
(:func:`jaxrec.methods.tree_two_stage.pipeline.harmonized_subset`).

:class:`RankerScore` is the ranker as a :data:`jaxrec.eval.protocols.ScoreFn`
(``score_fn(params, {"history", "history_mask"}, items [C] or [B, C]) -> [B, C]``), so the ranker alone is
evaluated by the existing full-ranking protocol too (P_rank(N) of Corollary 4.2).
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

from jaxrec.methods.tree_two_stage.config import TreeTwoStageConfig
from jaxrec.methods.tree_two_stage.retriever import MLP, PairUnit
from jaxrec.models import losses
from jaxrec.train import learner as learner_lib


class DIN(nn.Module):
  """``(history [B, L], mask [B, L], items [B, C]) -> scores [B, C]``; padding id ``num_items``."""

  num_items: int
  dim: int = 96
  attention: tuple[int, ...] = (64, 16)
  mlp: tuple[int, ...] = (200, 80)

  def setup(self):
    self.item_emb = nn.Embed(self.num_items + 1, self.dim, embedding_init=nn.initializers.normal(0.05))
    self.att = PairUnit(tuple(self.attention) + (1,), blocks=("q", "h", "q-h", "q*h"))
    self.out = MLP(tuple(self.mlp) + (1,), activation="prelu")

  def __call__(self, history, mask, items):
    h = self.item_emb(history)  # [B, L, d]
    q = self.item_emb(items)    # [B, C, d]
    a = self.att(q, h) * mask[:, None, :]  # MLP_att([q ; h ; q - h ; q * h]) per (candidate, item)
    interest = jnp.einsum("bcl,bld->bcd", a, h)
    return self.out(jnp.concatenate([interest, q, interest * q], -1))[..., 0]


def make_ranker(cfg: TreeTwoStageConfig, num_items: int) -> DIN:
  return DIN(num_items=num_items, dim=cfg.ranker_dim, attention=tuple(cfg.ranker_attention),
             mlp=tuple(cfg.ranker_mlp))


def init_params(module: DIN, rng: jax.Array, length: int) -> Any:
  return module.init(rng, jnp.zeros((1, length), jnp.int32), jnp.ones((1, length), bool),
                     jnp.zeros((1, 1), jnp.int32))


@dataclasses.dataclass(frozen=True)
class RankerScore:
  """The ranker as a ScoreFn: ``(params, queries, items [C] | [B, C]) -> [B, C]`` (hashable)."""

  module: DIN

  def __call__(self, params, queries: Mapping[str, jax.Array], items: jax.Array) -> jax.Array:
    hist = queries["history"]
    items = jnp.broadcast_to(items, (hist.shape[0], items.shape[-1])) if items.ndim == 1 else items
    return self.module.apply(params, hist, queries["history_mask"], items)


def ranker_loss(module: DIN, params: Any, batch: Mapping[str, jax.Array]) -> tuple:
  """Sampled softmax of the target against ``negatives`` (batch: history, history_mask, target [b],
  negatives [b, M], log_q [1 + M], mask [b])."""
  items = jnp.concatenate([batch["target"][:, None], batch["negatives"]], 1)
  scores = module.apply(params, batch["history"], batch["history_mask"], items)
  ok = jnp.concatenate([jnp.ones_like(batch["target"][:, None], bool),
                        batch["negatives"] != batch["target"][:, None]], 1)
  aux = losses.ranking_aux(scores, batch["mask"])
  scores = jnp.where(ok, scores, -1e9)  # finite: the loop checks every metric for NaN/Inf
  return losses.sampled_softmax(scores, batch["mask"], batch["log_q"][None]), aux


@functools.lru_cache(maxsize=32)
def ranker_learner(module: DIN, learning_rate: float) -> learner_lib.Learner:
  """``gradient_learner(ranker_loss, adam)`` cached on (module, lr)."""

  def loss_fn(params, batch, rng):
    del rng
    return ranker_loss(module, params, batch)

  return learner_lib.gradient_learner(loss_fn, optax.adam(learning_rate))


def ranker_batches(windows, num_items: int, cfg: TreeTwoStageConfig, seed: int):
  """``batches_fn(epoch)`` over ``windows`` with ``ranker_negatives`` uniform items per sample."""
  from jaxrec.data import samplers  # pylint: disable=import-outside-toplevel
  m = cfg.ranker_negatives
  log_q = np.concatenate([[0.0], np.full(m, np.log(m / num_items))]).astype(np.float32)

  def batches_fn(epoch: int):
    rng = np.random.default_rng([seed, epoch, 2])
    for batch in samplers.iterate_batches(windows.arrays(), cfg.batch_size, rng):
      batch["negatives"] = rng.integers(0, num_items, size=(cfg.batch_size, m), dtype=np.int32)
      batch["log_q"] = log_q
      yield batch

  return batches_fn
