r"""GCMC, GCMC-SAGE and GCMC-GAT: graph auto-encoders on the training user-item graph (2TS baselines).

The 2TS paper (Section 5, Table 1, Appendix B) compares against GCMC (Berg, Kipf & Welling 2017,
"Graph Convolutional Matrix Completion"), its GraphSAGE variant (Hamilton et al. 2017) and its graph
attention variant (Velickovic et al. 2018), with one change: the loss is a softmax over
``[true item, 10 random items]`` per training interaction instead of GCMC's softmax over ratings.
One module, :class:`GCMC`, with ``aggregator`` in :data:`AGGREGATORS`; :data:`VARIANTS` names the rows.

Graph. The bipartite graph of the *training* log only: nodes are users ``0 .. U-1`` and items
``U .. U+I-1``, one undirected edge per distinct (user, item) pair (a repeated interaction adds no second
edge and no weight: GCMC's adjacency is one entry per pair, and implicit feedback has one edge type).
Each node keeps at most ``max_degree`` neighbours, sampled uniformly without replacement once per fit
(``np.random.default_rng([seed, 0x6C6D])``; a node of smaller degree keeps them all), stored as padded
static-shape lists ``neighbors [N, K]`` + ``mask`` with ``K = min(max_degree, largest degree)``
(:func:`build_graph`). Never a dense adjacency: every aggregation is a masked sum over the padded list.

Node inputs: learned ID embeddings ``x_i = E[i]`` (64 dims, Appendix B), i.e. GCMC's one-hot input times a
weight matrix, factored as ``W_r x_j = W_r E^T onehot_j``.

Encoders (one graph layer, then GCMC's dense layer ``z_i = W_d h_i``, Eq. 4):

* ``"gcmc"`` (Berg et al. Eq. 2-3, one edge type ``r``, accumulation = sum, with the self-connection
  of their code's ``OrdinalMixtureGCN(self_connections=True)``)::

      h_i = relu( W_s x_i + sum_{j in N_i} (1 / c_ij) W x_j ),   c_ij = sqrt(|N_i| |N_j|)  ("symmetric")
                                                                  or |N_i|            ("left")

  with ``|N_i|`` the kept degree. Node dropout (their "dropout of all outgoing messages of a node",
  applied per neighbour slot here, rescaled by ``1 / (1 - p)`` as their ``dropout_sparse``).
* ``"sage"`` (Hamilton et al. Alg. 1 with the mean aggregator, and their code's concat of separate self
  and neighbour transforms)::

      h_i = normalize( relu( [W_s x_i || W_n mean_{j in S(i)} x_j] ) )

  ``S(i)``: ``fan_out`` neighbours drawn uniformly with replacement from the kept list, afresh every step
  from the step's rng. At evaluation, the mean over the whole kept list (the sampled mean's expectation;
  deterministic).
* ``"gat"`` (Velickovic et al. Eq. 1-5, ``H`` heads concatenated, ELU; the neighbourhood includes the
  node itself, Sec. 2.1)::

      e_ij^h = LeakyReLU_0.2( a_s^h . W^h x_i + a_n^h . W^h x_j ),   alpha^h = softmax_{j in N_i + {i}} e^h
      h_i = ||_h ELU( sum_j alpha_ij^h W^h x_j )

  Attention dropout on the neighbours' ``alpha`` (not the self slot). Computed in input space:
  ``a . W x_j = (W a) . x_j`` and ``sum_j alpha_j W x_j = W sum_j alpha_j x_j`` (same numbers, ``K E H``
  instead of ``K E D`` work per node).

Decoder (Berg et al. Eq. 5, one edge type): ``s(u, i) = z_u^T Q z_i``; the loss is the sampled softmax
over the positive and ``num_negatives`` (10) items drawn uniformly among those the user has not
interacted with in training (:func:`jaxrec.train.fit.epoch_batches`), one row per training interaction
(repeats included).

Isolated nodes (users or items without a training interaction, e.g. new users at test): the
neighbourhood is empty, its sum / mean is 0 (mean over ``max(count, 1)``), GAT's softmax has the self
slot only, so the encoding is the self path, never NaN.

Training touches only the batch's neighbourhoods: for each row the user, its positive and negatives are
encoded from their own padded lists (``[B, 2 + N, K]`` gathers), never the whole graph. Evaluation encodes
every node once (deterministic: no dropout, full kept lists) into ``{"user": Z_U Q, "item": Z_I}``, so
:func:`table_score` is one dot product per (query, candidate).

Departures (and why):

* ID embeddings of 64 dims, not one-hot inputs (Appendix B; one-hot is infeasible at ML-25M scale).
* The degree cap and the sampled kept neighbours (static shapes); ``c_ij`` uses kept degrees.
* The self-connection in GCMC (their code's option) and no dropout of the self path: a user without a
  training interaction must still get a score.
* GCMC's dense layer is linear, as in their code (``Dense(act=lambda x: x)``), not ``sigma`` of Eq. 4.
* Ranking loss of Appendix B instead of the softmax over ratings, so no ordinal weight sharing or basis
  decomposition of ``Q`` (one edge type).
* One graph layer for every aggregator (GCMC's depth), so GraphSAGE's two-hop sampling is one hop.

Queries are user ids (:func:`query_features` returns ``{}``): the model is transductive, a test query is
scored from the user's training-graph encoding.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Mapping, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.data.log import InteractionLog
from jaxrec.eval import protocols as protocols_lib
from jaxrec.eval.queries import Queries
from jaxrec.models import losses
from jaxrec.models.common import dot_scores
from jaxrec.train import fit as fit_lib
from jaxrec.train import learner as learner_lib
from jaxrec.train import loop as loop_lib
from jaxrec.train import state as state_lib

Array = jax.Array

AGGREGATORS = ("gcmc", "sage", "gat")
VARIANTS = {"gcmc": "gcmc", "gcmc-sage": "sage", "gcmc-gat": "gat"}
NORMS = ("symmetric", "left")

# Defaults of :func:`fit`'s hyper-parameters; per-aggregator dropout as each paper uses it (GCMC: 0.7 node
# dropout on ML-100K; GraphSAGE: none; GAT: 0.6 on the attention coefficients, transductive setting).
DEFAULTS = {"aggregator": "gcmc", "embed_dim": 64, "hidden_dim": 256, "out_dim": 64, "max_degree": 128,
            "fan_out": 10, "num_heads": 4, "dropout": None, "norm": "symmetric", "num_negatives": 10}
DROPOUT = {"gcmc": 0.7, "sage": 0.0, "gat": 0.6}


# -- the graph ---------------------------------------------------------------------------------------


class Graph(NamedTuple):
  """Padded neighbour lists of the bipartite training graph (users ``0..U-1``, items ``U..U+I-1``).

  Attributes:
    neighbors: int32 ``[N, K]`` neighbour node ids (0 on padding).
    mask: bool ``[N, K]`` real slots.
    coef: float32 ``[N, K]`` GCMC's ``1 / c_ij`` per slot (0 on padding).
    degree: int32 ``[N]`` kept neighbours per node (``<= K``).
  """

  neighbors: Any
  mask: Any
  coef: Any
  degree: Any


def build_graph(log: InteractionLog, max_degree: int, *, seed: int = 0, norm: str = "symmetric") -> Graph:
  """The padded neighbour lists of ``log``'s distinct (user, item) pairs (see the module docstring).

  Args:
    log: the training log (repeated pairs give one edge).
    max_degree: most neighbours kept per node; larger neighbourhoods are subsampled uniformly without
      replacement from ``np.random.default_rng([seed, 0x6C6D])``.
    seed: the run's seed.
    norm: ``"symmetric"`` (``c_ij = sqrt(|N_i| |N_j|)``) or ``"left"`` (``c_ij = |N_i|``), kept degrees.

  Returns:
    A host (numpy) :class:`Graph` with ``K = max(1, min(max_degree, largest degree))`` slots.
  """
  if max_degree < 1:
    raise ValueError(f"build_graph: max_degree must be >= 1, got {max_degree}")
  if norm not in NORMS:
    raise ValueError(f"build_graph: norm must be one of {NORMS}, got {norm!r}")
  num_users, num_items = log.num_users, log.num_items
  n = num_users + num_items
  pairs = np.unique(log.user.astype(np.int64) * num_items + log.item)
  u, i = pairs // num_items, pairs % num_items + num_users
  src, dst = np.concatenate([u, i]), np.concatenate([i, u])
  rng = np.random.default_rng([seed, 0x6C6D])
  order = np.lexsort((rng.random(src.size), src))  # grouped by node, random order within a node
  src, dst = src[order], dst[order]
  full = np.bincount(src, minlength=n)
  pos = np.arange(src.size) - np.repeat(np.cumsum(full) - full, full)
  keep = pos < max_degree
  src, dst, pos = src[keep], dst[keep], pos[keep]
  degree = np.minimum(full, max_degree)
  k = max(1, int(degree.max(initial=0)))
  neighbors = np.zeros((n, k), np.int32)
  mask = np.zeros((n, k), bool)
  coef = np.zeros((n, k), np.float32)
  neighbors[src, pos] = dst
  mask[src, pos] = True
  d = degree.astype(np.float64)
  c = np.sqrt(d[src] * d[dst]) if norm == "symmetric" else d[src]
  coef[src, pos] = 1.0 / c
  return Graph(neighbors=neighbors, mask=mask, coef=coef, degree=degree.astype(np.int32))


def sample_neighbors(rng: Array, graph: Graph, nodes: Array, fan_out: int) -> tuple[Array, Array]:
  """GraphSAGE's fixed-size neighbourhood: ``fan_out`` draws, uniform with replacement from the kept list.

  Returns:
    ``(ids [..., fan_out], mask [..., fan_out])``; an isolated node's mask is all False.
  """
  deg = graph.degree[nodes]
  u = jax.random.uniform(rng, nodes.shape + (fan_out,))
  idx = jnp.minimum(jnp.floor(u * deg[..., None]).astype(jnp.int32), jnp.maximum(deg - 1, 0)[..., None])
  k = graph.neighbors.shape[1]
  ids = graph.neighbors.reshape(-1)[nodes[..., None] * k + idx]
  return ids, jnp.broadcast_to((deg > 0)[..., None], ids.shape)


# -- aggregations (pure; the tests compare them with dense references) --------------------------------


def weighted_sum(x_nbr: Array, weight: Array) -> Array:
  """``sum_k weight[..., k] x_nbr[..., k, :]`` (GCMC's normalised sum when ``weight = mask / c_ij``)."""
  return jnp.einsum("...k,...ke->...e", weight, x_nbr)


def masked_mean(x_nbr: Array, mask: Array) -> Array:
  """Mean of the real slots; 0 for an empty neighbourhood (no NaN)."""
  m = mask.astype(x_nbr.dtype)
  return weighted_sum(x_nbr, m) / jnp.maximum(jnp.sum(m, axis=-1), 1.0)[..., None]


def gat_weights(logit_self: Array, logit_nbr: Array, mask: Array) -> tuple[Array, Array]:
  """Masked softmax over ``{self} + neighbours``: ``(alpha_self [...], alpha_nbr [..., K])``.

  ``logit_*`` are pre-LeakyReLU ``e_ij``; padded slots get weight exactly 0; the self slot is always
  present, so an isolated node gets ``alpha_self = 1``.
  """
  e_self = jax.nn.leaky_relu(logit_self, 0.2)
  e_nbr = jnp.where(mask, jax.nn.leaky_relu(logit_nbr, 0.2), -jnp.inf)
  top = jnp.maximum(e_self, jnp.max(e_nbr, axis=-1))
  p_self = jnp.exp(e_self - top)
  p_nbr = jnp.where(mask, jnp.exp(e_nbr - top[..., None]), 0.0)
  z = p_self + jnp.sum(p_nbr, axis=-1)
  return p_self / z, p_nbr / z[..., None]


# -- the model ---------------------------------------------------------------------------------------


class GCMC(nn.Module):
  """Graph auto-encoder ``s(u, i) = z_u^T Q z_i`` with a ``"gcmc"``, ``"sage"`` or ``"gat"`` encoder.

  Attributes:
    num_users, num_items: index spaces (nodes ``0..U-1`` users, ``U..U+I-1`` items).
    aggregator: one of :data:`AGGREGATORS`.
    embed_dim: ID embedding size (Appendix B: 64).
    hidden_dim: graph layer output (GAT: ``num_heads`` heads of ``hidden_dim // num_heads``).
    out_dim: dense layer output ``z``.
    fan_out: GraphSAGE's sampled neighbours per node and step.
    num_heads: GAT heads.
    dropout: GCMC node dropout / GAT attention dropout on neighbour slots, and dropout before the
      dense layer (as GCMC's one ``dropout`` flag does both).
  """

  num_users: int
  num_items: int
  aggregator: str = "gcmc"
  embed_dim: int = 64
  hidden_dim: int = 256
  out_dim: int = 64
  fan_out: int = 10
  num_heads: int = 4
  dropout: float = 0.0

  def setup(self):
    if self.aggregator not in AGGREGATORS:
      raise ValueError(f"GCMC: aggregator must be one of {AGGREGATORS}, got {self.aggregator!r}")
    self.embed = nn.Embed(self.num_users + self.num_items, self.embed_dim, name="embed")
    dense = functools.partial(nn.Dense, use_bias=False)
    if self.aggregator == "gcmc":
      self.w_self, self.w_nbr = dense(self.hidden_dim, name="w_self"), dense(self.hidden_dim, name="w_nbr")
    elif self.aggregator == "sage":
      half = self.hidden_dim // 2
      self.w_self, self.w_nbr = dense(half, name="w_self"), dense(self.hidden_dim - half, name="w_nbr")
    else:
      if self.hidden_dim % self.num_heads:
        raise ValueError(f"GCMC: hidden_dim {self.hidden_dim} must be a multiple of num_heads {self.num_heads}")
      dh = self.hidden_dim // self.num_heads
      init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=-2, out_axis=-1)
      self.w_heads = self.param("w_heads", init, (self.num_heads, self.embed_dim, dh))
      self.a_self = self.param("a_self", nn.initializers.normal(1 / math.sqrt(dh)), (self.num_heads, dh))
      self.a_nbr = self.param("a_nbr", nn.initializers.normal(1 / math.sqrt(dh)), (self.num_heads, dh))
    self.w_out = dense(self.out_dim, name="w_out")
    self.drop = nn.Dropout(self.dropout)
    self.q = self.param("Q", lambda _, s: jnp.eye(*s), (self.out_dim, self.out_dim))

  def _slot_keep(self, shape, deterministic: bool) -> Optional[Array]:
    """Dropout keep-weights ``bernoulli(1 - p) / (1 - p)`` of neighbour slots (None: no dropout)."""
    if deterministic or self.dropout <= 0:
      return None
    keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.dropout, shape)
    return keep.astype(jnp.float32) / (1.0 - self.dropout)

  def hidden(self, graph: Graph, nodes: Array, deterministic: bool = True) -> Array:
    """The graph layer ``h`` of node ids ``nodes`` (any shape) -> ``[..., hidden_dim]``."""
    x = self.embed(nodes)
    if self.aggregator == "sage" and not deterministic:
      nbr, mask = sample_neighbors(self.make_rng("sample"), graph, nodes, self.fan_out)
    else:
      nbr, mask = graph.neighbors[nodes], graph.mask[nodes]
    x_nbr = self.embed(nbr)
    if self.aggregator == "gcmc":
      w = graph.coef[nodes]  # 1 / c_ij, 0 on padding
      keep = self._slot_keep(mask.shape, deterministic)
      m = weighted_sum(x_nbr, w if keep is None else w * keep)
      return nn.relu(self.w_self(x) + self.w_nbr(m))
    if self.aggregator == "sage":
      keep = self._slot_keep(mask.shape, deterministic)
      m = masked_mean(x_nbr if keep is None else x_nbr * keep[..., None], mask)
      h = nn.relu(jnp.concatenate([self.w_self(x), self.w_nbr(m)], axis=-1))
      return h / jnp.maximum(jnp.linalg.norm(h, axis=-1, keepdims=True), 1e-12)
    # GAT in input space: a . (W x) = (W a) . x and sum_j alpha_j W x_j = W sum_j alpha_j x_j.
    wa_self = jnp.einsum("hed,hd->he", self.w_heads, self.a_self)
    wa_nbr = jnp.einsum("hed,hd->he", self.w_heads, self.a_nbr)
    l_self = x @ wa_self.T                                             # [..., H]
    logit_self = l_self + x @ wa_nbr.T                                 # e_ii
    logit_nbr = l_self[..., None, :] + x_nbr @ wa_nbr.T                # [..., K, H]
    logit_nbr = jnp.swapaxes(logit_nbr, -1, -2)                        # [..., H, K]
    m = jnp.broadcast_to(mask[..., None, :], logit_nbr.shape)
    a_self, a_nbr = gat_weights(logit_self, logit_nbr, m)              # [..., H], [..., H, K]
    keep = self._slot_keep(a_nbr.shape, deterministic)                 # attention dropout, per head
    if keep is not None:
      a_nbr = a_nbr * keep
    agg = a_self[..., None] * x[..., None, :] + jnp.einsum("...hk,...ke->...he", a_nbr, x_nbr)
    out = jnp.einsum("...he,hed->...hd", agg, self.w_heads)
    return nn.elu(out).reshape(out.shape[:-2] + (self.hidden_dim,))

  def encode(self, graph: Graph, nodes: Array, deterministic: bool = True) -> Array:
    """``z = W_d dropout(h)`` of node ids ``nodes`` (any shape) -> ``[..., out_dim]``."""
    h = self.hidden(graph, nodes, deterministic)
    h = self.drop(h, deterministic=deterministic or self.dropout <= 0)
    return self.w_out(h)

  def candidate_scores(self, graph: Graph, users: Array, items: Array, deterministic: bool = True) -> Array:
    """Bilinear scores ``z_u^T Q z_i`` of users ``[B]`` and their candidates ``[B, C]`` -> ``[B, C]``."""
    nodes = jnp.concatenate([users[:, None], self.num_users + items], axis=1)
    z = self.encode(graph, nodes, deterministic)
    return jnp.einsum("bd,de,bce->bc", z[:, 0], self.q, z[:, 1:])

  def __call__(self, graph: Graph, users: Array, items: Array, deterministic: bool = True) -> Array:
    return self.candidate_scores(graph, users, items, deterministic)


def make_loss_fn(module: GCMC):
  """``loss_fn(params, batch, rng)``: sampled softmax over ``[positive, negatives]`` (Appendix B).

  ``batch``: ``{"user" [B], "positive" [B], "negatives" [B, N], "mask" [B], "graph": Graph}``.
  """

  def loss_fn(params, batch, rng):
    items = jnp.concatenate([batch["positive"][:, None], batch["negatives"]], axis=1).astype(jnp.int32)
    drop, sample = jax.random.split(rng)
    scores = module.apply(params, batch["graph"], batch["user"], items, False,
                          rngs={"dropout": drop, "sample": sample})
    mask = batch.get("mask")
    value = losses.sampled_softmax(scores, mask)
    return value, {"loss": value, **losses.ranking_aux(scores, mask)}

  return loss_fn


@functools.partial(jax.jit, static_argnames=("module", "chunk"))
def encode_tables(module: GCMC, params, graph: Graph, chunk: int = 1024) -> dict:
  """Every node encoded once (deterministic): ``{"user": Z_U Q [U, d], "item": Z_I [I, d]}``."""
  n = module.num_users + module.num_items
  chunk = max(1, min(chunk, n))
  blocks = -(-n // chunk)
  nodes = jnp.minimum(jnp.arange(blocks * chunk, dtype=jnp.int32), n - 1).reshape(blocks, chunk)
  z = jax.lax.map(lambda b: module.apply(params, graph, b, True, method=module.encode), nodes)
  z = z.reshape(blocks * chunk, -1)[:n]
  return {"user": z[:module.num_users] @ params["params"]["Q"], "item": z[module.num_users:]}


def table_score(params, queries: Mapping[str, Array], items: Array) -> Array:
  """ScoreFn over :func:`encode_tables`' tables: ``<(Z_U Q)[user], Z_I[item]>``."""
  return dot_scores(params["user"][queries["user"]], params["item"], items)


# -- the learner: the graph travels in the state, the step gathers the batch's neighbourhoods ------------


class GraphTrainState(NamedTuple):
  """``train``: the :class:`jaxrec.train.state.TrainState`; ``graph``: the device :class:`Graph`."""

  train: Any
  graph: Graph


def _served(state: GraphTrainState) -> dict:
  return {"model": state.train.params, "graph": state.graph}


@functools.lru_cache(maxsize=None)
def _learner_fns(module: GCMC, tx_key: tuple):
  """One (init, update) per (module, optimizer), so another seed or budget reuses the compiled step."""
  name, lr, wd, clip = tx_key
  inner = learner_lib.gradient_learner(
      make_loss_fn(module), state_lib.make_optimizer(name, lr, weight_decay=wd, clip_norm=clip))

  def update(state: GraphTrainState, batch, rng):
    train, metrics = inner.update(state.train, dict(batch, graph=state.graph), rng)
    return state._replace(train=train), metrics

  return inner.init, update


def make_learner(module: GCMC, graph: Graph, tx_key: tuple) -> learner_lib.Learner:
  """A :class:`Learner` whose state is :class:`GraphTrainState` and whose served params are
  ``{"model": params, "graph": graph}``; ``tx_key = (optimizer, learning_rate, weight_decay, clip_norm)``."""
  init_inner, update = _learner_fns(module, tx_key)
  dev_graph = jax.device_put(Graph(*map(jnp.asarray, graph)))

  def init(params, rng):
    return GraphTrainState(train=init_inner(params, rng), graph=dev_graph)

  return learner_lib.Learner(init=init, update=update, params=_served)


# -- the own-trainer contract --------------------------------------------------------------------------


def resolve_hparams(hparams: Mapping[str, Any]) -> dict:
  """:data:`DEFAULTS` overridden by ``hparams`` (a variant name in ``"variant"`` sets the aggregator)."""
  hp = dict(hparams)
  if "variant" in hp:
    variant = hp.pop("variant")
    if variant not in VARIANTS:
      raise ValueError(f"GCMC: variant must be one of {tuple(VARIANTS)}, got {variant!r}")
    hp.setdefault("aggregator", VARIANTS[variant])
  unknown = sorted(set(hp) - set(DEFAULTS))
  if unknown:
    raise ValueError(f"GCMC: unknown hyper-parameters {unknown}; known {sorted(DEFAULTS)}")
  hp = dict(DEFAULTS, **hp)
  if hp["aggregator"] not in AGGREGATORS:
    raise ValueError(f"GCMC: aggregator must be one of {AGGREGATORS}, got {hp['aggregator']!r}")
  if hp["dropout"] is None:
    hp["dropout"] = DROPOUT[hp["aggregator"]]
  return hp


def make_module(num_users: int, num_items: int, hp: Mapping[str, Any]) -> GCMC:
  return GCMC(num_users, num_items, aggregator=hp["aggregator"], embed_dim=hp["embed_dim"],
              hidden_dim=hp["hidden_dim"], out_dim=hp["out_dim"], fan_out=hp["fan_out"],
              num_heads=hp["num_heads"], dropout=float(hp["dropout"]))


def fit(logs: list[InteractionLog], valid_queries: Optional[Queries], config: fit_lib.FitConfig, *,
        seed: int = 0, workdir: Optional[str] = None,
        valid_protocol: Optional[protocols_lib.Protocol] = None, **hparams) -> fit_lib.FitResult:
  """Trains on ``logs[0]`` only (graph and examples), keeping the best epoch on ``valid_queries``.

  ``config``: epochs, batch_size, optimizer settings, metric, patience, time_limit, eval_every,
  valid_negatives; ``config.num_negatives`` is replaced by ``hparams["num_negatives"]`` (10, Appendix B).
  ``hparams``: :data:`DEFAULTS` (``aggregator`` or ``variant``, sizes, ``max_degree``, ``fan_out``,
  ``num_heads``, ``dropout``, ``norm``). Returns a :class:`FitResult` whose ``params`` are the encoded
  tables of the best state and ``score_fn`` :func:`table_score` (queries need only ``"user"``).
  """
  train = logs[0]
  hp = resolve_hparams(hparams)
  run_config = {"model": f"gcmc/{hp['aggregator']}",
                "fit": {k: v for k, v in dataclasses.asdict(config).items() if k != "progress"},
                "hparams": hp, "seed": seed}
  config = dataclasses.replace(config, num_negatives=int(hp["num_negatives"]))
  graph = build_graph(train, int(hp["max_degree"]), seed=seed, norm=hp["norm"])
  module = make_module(train.num_users, train.num_items, hp)
  examples = {"user": train.user.astype(np.int32), "positive": train.item.astype(np.int32)}
  known = train.user_item_csr()
  init_rng, loop_rng = jax.random.split(jax.random.PRNGKey(seed))
  dev_graph = Graph(*map(jnp.asarray, graph))
  params = module.init({"params": init_rng}, dev_graph, jnp.zeros((1,), jnp.int32),
                       jnp.zeros((1, 1), jnp.int32))
  learner = make_learner(module, graph, (config.optimizer, config.learning_rate, config.weight_decay,
                                         config.clip_norm))
  state = learner.init(params, init_rng)

  protocol, valid_negatives = fit_lib.validation_protocol(valid_queries, train.num_items, config, seed,
                                                          valid_protocol)
  eval_fn = None
  if protocol is not None:
    def eval_fn(served):
      tables = encode_tables(module, served["model"], served["graph"])
      return fit_lib.validation_metrics(table_score, tables, valid_queries, protocol, train.num_items)

  steps_per_epoch = -(-len(train) // config.batch_size)
  t0 = time.time()
  best, history = loop_lib.train(
      fit_lib.loop_config(config, steps_per_epoch, eval_fn is not None), learner, state,
      lambda epoch: fit_lib.epoch_batches(examples, known, train.num_items, config, seed, epoch),
      eval_fn, workdir, rng=loop_rng, run_config=run_config)
  segments, seconds = fit_lib.train_timing(workdir, int(best.train.step), time.time() - t0)
  tables = jax.device_get(encode_tables(module, best.train.params, best.graph))
  return fit_lib.FitResult(params=tables, score_fn=table_score, history=history, train_seconds=seconds,
                           best_step=int(best.train.step), train_segments=segments,
                           valid_negatives=valid_negatives)


def query_features(fitted: fit_lib.FitResult, logs: list[InteractionLog], which: int) -> dict[str, np.ndarray]:
  """No features: queries are scored from the user id (a transductive encoder of the training graph)."""
  del fitted, logs, which
  return {}
