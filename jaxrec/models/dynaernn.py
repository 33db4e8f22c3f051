r"""dynAERNN (Goyal, Chhetri & Canedo 2020, dyngraph2vec, Sec. 3.3) as a 2TS baseline (paper 000, App. B).

dyngraph2vec embeds node ``v`` of a sequence of graph snapshots ``G_1 .. G_T`` from its adjacency rows
over the last ``l`` (lookback) snapshots and trains the embedding to predict the row of the next one.
dynAERNN, as in the authors' code (``palash1992/DynamicGEM``, ``embedding/dynAERNN.py`` and
``embedding/dnn_utils.py``):

* **dense encoder** per lookback step ``tau`` (the code builds ``n_prev_graphs`` separate encoders, no
  weight sharing across steps): ``z_tau = f(... f(A_{t-l+tau}[v] W^{tau}_1 + b^{tau}_1) ...)`` with
  ``n_aeunits = (500, 300)`` and then ``d`` units, ``f`` = LeakyReLU (Keras' slope 0.3);
* **LSTM encoder** over ``z_1 .. z_l``: ``n_lstmunits = (500, d)``, the first layer returns its sequence,
  the last returns its final hidden state, which is the embedding ``y_v`` (Keras LSTM: tanh cell,
  sigmoid gates, Glorot-uniform kernels, orthogonal recurrent kernels, forget bias 1);
* **dense decoder** ``d -> 300 -> 500 -> |V|`` (LeakyReLU on every layer, the output too), giving
  ``\hat A_{t+1}[v]``;
* **loss** (paper Eq. 5; code ``weighted_mse_x`` with ``y_batch = beta`` on nonzeros and ``-1``, squared
  to 1, elsewhere): ``L = mean_v || (\hat A_{t+1}[v] - A_{t+1}[v]) \odot b_v ||^2`` with ``b_{vj} = beta``
  where ``A_{t+1}[v, j] != 0`` and 1 elsewhere, plus ``nu1 ||W||_1 + nu2 ||W||_2^2`` on the dense
  kernels (LSTM unregularised, as in the code);
* **training samples** (``batch_generator_dynaernn``): every (node ``v``, target snapshot ``t``) with
  ``l <= t < T``, input snapshots ``t-l .. t-1``, shuffled; the embedding served is that of the last
  ``l`` snapshots (``model_batch_predictor_dynaernn(graphs[-l:])``).

The 2TS paper's adaptation (App. B), implemented here:

* the training interactions (``logs[0]``), in jaxrec's time order (timestamp, ties in row order,
  :func:`jaxrec.data.order.time_order`), are cut into ``T = 10`` cumulative snapshots with equal
  edge-count increments: snapshot ``s`` holds the first ``floor((s+1) n / T)`` interactions
  (:func:`snapshot_ends`; increments differ by at most one; tied timestamps may straddle a cut);
* after training, a logistic regression on the Hadamard product ``y_u \odot y_i`` (DySAT's evaluation)
  separates training edges from random non-edges; its logit ``w . (y_u \odot y_i) + b`` ranks items.

Departures, and why:

* **Bipartite graph without a dense |V| x |V| adjacency.** The node set is users then items
  (``|V| = U + I``); a user's adjacency row is zero on the user block and an item's on the item block.
  The first encoder layer ``W^{tau}_1`` (``[U + I, 500]``) is stored as its two blocks (``w_in_item``
  read by user rows, ``w_in_user`` by item rows) and only the nonzero block of a row is multiplied,
  which is the same function; deeper layers, the LSTM and the decoder are shared by users and items
  (so ``y_u`` and ``y_i`` live in one space, as the Hadamard link predictor needs). The decoder outputs
  both blocks and the loss covers both (the same-side block has target 0, weight 1), as the literal
  model on ``U + I`` nodes (``same_side_loss=False`` drops it). Snapshot rows are kept sparse (per node:
  its neighbours and the snapshot in which each edge first appears) and turned into dense
  ``[batch, lookback + 1, width]`` rows on device per mini-batch (:func:`dense_rows`).
* **Binary adjacency**: a repeated (user, item) interaction is one edge, present from the snapshot of
  its first occurrence on (the code reads unweighted networkx graphs).
* **Mini-batches**: each step takes user samples and item samples in the proportion of their counts
  (static sizes), and averages the per-sample losses over both; the authors shuffle (node, t) samples
  of one node set. Nodes with no training edge at all are not training samples (their rows are all
  zero); they, and every user/item absent from the training log (new users), are embedded from an
  empty row, which is finite.
* **Sizes**: ``d = 64`` (the 2TS paper's embedding size for every method) instead of the code's 128;
  ``n_aeunits = (500, 300)``, ``n_lstmunits = (500, d)``, ``beta = 5``, ``nu1 = nu2 = 1e-6`` as in the
  code's real-data runs; lookback 3 (the code's default is 2; the paper reports lookbacks 1-10).
* **Link predictor**: instead of scikit-learn's ``LogisticRegression()`` (DySAT) we solve the same
  objective, ``sum_n logloss + (lr_l2 / 2) ||w||^2`` with the intercept unpenalised (scikit-learn's with
  ``C = 1 / lr_l2``), by Newton's method with a line search, jitted (:func:`fit_logistic`). Its data:
  up to ``lr_pairs`` distinct training (user, item) edges (a seeded subset when there are more) and, per
  edge, one item the user never interacted with in training (drawn uniformly, seeded), so the
  classifier sees the ranking task's negatives. DySAT instead draws its edges from the next snapshot.
* **Model selection**: embeddings and the link predictor are recomputed at every validation (at epoch
  end) and the epoch with the best validation metric is kept (jaxrec's shared loop); the authors train a
  fixed number of epochs.

Entry points: :func:`fit` (the 2TS binary's own-trainer contract; returns a
:class:`jaxrec.train.fit.FitResult` whose ``params`` are ``{"user", "item", "w", "b"}`` and whose
``score_fn`` is :class:`HadamardLogitScore`) and :func:`query_features` (``{}``: queries are user ids,
embedded from the last training snapshots, so no query sees an interaction later than the training log).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.data import order as order_lib
from jaxrec.data import samplers
from jaxrec.data.log import InteractionLog
from jaxrec.eval import protocols as protocols_lib
from jaxrec.eval.queries import Queries
from jaxrec.models.common import dot_scores
from jaxrec.train import fit as fit_lib
from jaxrec.train import learner as learner_lib
from jaxrec.train import loop as loop_lib
from jaxrec.train import state as state_lib

Array = jax.Array
NEVER = np.iinfo(np.int32).max  # snapshot index of a padding neighbour: never present
LEAKY_SLOPE = 0.3  # keras.layers.LeakyReLU() default


# -- snapshots ----------------------------------------------------------------------------------------


def snapshot_ends(n: int, num_snapshots: int) -> np.ndarray:
  """``ends[s] = floor((s + 1) n / T)``: snapshot ``s`` is the first ``ends[s]`` interactions in time order.

  Increments ``ends[s] - ends[s-1]`` are ``floor(n / T)`` or ``ceil(n / T)`` (equal within one edge) and
  ``ends[T-1] = n``.
  """
  if num_snapshots < 1:
    raise ValueError(f"num_snapshots must be >= 1, got {num_snapshots}")
  s = np.arange(1, num_snapshots + 1, dtype=np.int64)
  return (s * int(n)) // num_snapshots


def interaction_snapshots(timestamp: np.ndarray, num_snapshots: int) -> np.ndarray:
  """int32 ``[n]``: the first snapshot containing each row (rows in time order, ties in row order)."""
  order = order_lib.time_order(timestamp)
  pos = np.empty(order.size, np.int64)
  pos[order] = np.arange(order.size)
  return np.searchsorted(snapshot_ends(order.size, num_snapshots), pos, side="right").astype(np.int32)


@dataclasses.dataclass(frozen=True)
class SideGraph:
  """One side's sparse adjacency over all snapshots: CSR rows of nodes with their first snapshots.

  Attributes:
    indptr: int64 ``[num_nodes + 1]``.
    neighbors: int32 ``[nnz]`` the other side's node ids (sorted within a row).
    first: int32 ``[nnz]`` the snapshot in which the edge first appears (present in every later one).
    width: size of the other side (the row width).
  """

  indptr: np.ndarray
  neighbors: np.ndarray
  first: np.ndarray
  width: int

  @property
  def num_nodes(self) -> int:
    return int(self.indptr.size - 1)

  @property
  def degree(self) -> np.ndarray:
    return np.diff(self.indptr)

  @property
  def max_degree(self) -> int:
    return int(self.degree.max(initial=0))

  def padded(self, nodes: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``(neighbors [B, width] int32, first [B, width] int32)`` of ``nodes``, padded with (0, NEVER)."""
    nodes = np.asarray(nodes, np.int64)
    start, deg = self.indptr[nodes], self.degree[nodes]
    k = np.arange(width)
    valid = k[None, :] < deg[:, None]
    idx = np.where(valid, start[:, None] + k[None, :], 0)
    if self.neighbors.size == 0:
      return np.zeros(idx.shape, np.int32), np.full(idx.shape, NEVER, np.int32)
    nbr = np.where(valid, self.neighbors[idx], 0).astype(np.int32)
    first = np.where(valid, self.first[idx], NEVER).astype(np.int32)
    return nbr, first


def snapshot_graphs(log: InteractionLog, num_snapshots: int) -> tuple[SideGraph, SideGraph]:
  """``(user side, item side)``: each distinct (user, item) edge with the snapshot of its first row."""
  snap = interaction_snapshots(log.timestamp, num_snapshots)
  key = log.user.astype(np.int64) * log.num_items + log.item
  order = np.lexsort((snap, key))  # by edge, earliest snapshot first
  key_s = key[order]
  head = np.ones(key_s.size, bool)
  head[1:] = key_s[1:] != key_s[:-1]
  ekey, efirst = key_s[head], snap[order][head]  # distinct edges sorted by (user, item)
  eu, ei = (ekey // log.num_items).astype(np.int64), (ekey % log.num_items).astype(np.int64)

  def side(src, dst, n_src, width):
    o = np.lexsort((dst, src))
    indptr = np.zeros(n_src + 1, np.int64)
    np.cumsum(np.bincount(src, minlength=n_src), out=indptr[1:])
    return SideGraph(indptr, dst[o].astype(np.int32), efirst[o].astype(np.int32), int(width))

  return side(eu, ei, log.num_users, log.num_items), side(ei, eu, log.num_items, log.num_users)


def dense_rows(neighbors: Array, first: Array, start: Array, num_steps: int, width: int) -> Array:
  """Dense adjacency rows ``x[b, j, n] = 1`` iff node ``b`` has neighbour ``n`` in snapshot ``start[b] + j``.

  Args:
    neighbors: int ``[B, D]`` neighbour ids (padding: any id with ``first = NEVER``).
    first: int ``[B, D]`` first snapshot of each edge.
    start: int ``[B]`` first snapshot of the window.
    num_steps: snapshots per window (static).
    width: row width (static).

  Returns:
    float32 ``[B, num_steps, width]``.
  """
  b, d = neighbors.shape
  steps = start[:, None] + jnp.arange(num_steps)[None, :]  # [B, S]
  present = (first[:, None, :] <= steps[:, :, None]).astype(jnp.float32)  # [B, S, D]
  rows = jnp.broadcast_to(jnp.arange(b)[:, None, None], present.shape)
  cols = jnp.broadcast_to(jnp.arange(num_steps)[None, :, None], present.shape)
  nbr = jnp.broadcast_to(neighbors[:, None, :], present.shape)
  return jnp.zeros((b, num_steps, width), jnp.float32).at[rows, cols, nbr].max(present)


# -- the network --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Arch:
  """Static shape and loss settings (hashable: one compiled step per architecture).

  Attributes:
    num_users, num_items: the two node sets (``|V| = num_users + num_items``).
    embed_dim: ``d``.
    ae_units: encoder hidden units before the ``d``-unit layer (the decoder mirrors them).
    lstm_units: LSTM layers' units; the last is ``d``.
    lookback: snapshots per input window ``l``.
    num_snapshots: ``T``.
    beta: weight of nonzero entries in the reconstruction.
    nu1, nu2: L1 and L2 penalties on the dense kernels.
    same_side_loss: include the (all-zero) same-side block of a row in the loss.
  """

  num_users: int
  num_items: int
  embed_dim: int = 64
  ae_units: tuple[int, ...] = (500, 300)
  lstm_units: tuple[int, ...] = (500, 64)
  lookback: int = 3
  num_snapshots: int = 10
  beta: float = 5.0
  nu1: float = 1e-6
  nu2: float = 1e-6
  same_side_loss: bool = True

  def __post_init__(self):
    if self.lstm_units[-1] != self.embed_dim:
      raise ValueError(f"lstm_units must end with embed_dim={self.embed_dim}, got {self.lstm_units}")
    if not 1 <= self.lookback < self.num_snapshots:
      raise ValueError(f"need 1 <= lookback < num_snapshots, got {self.lookback}, {self.num_snapshots}")


def _glorot(rng, shape, fan_in, fan_out):
  lim = math.sqrt(6.0 / (fan_in + fan_out))
  return jax.random.uniform(rng, shape, jnp.float32, -lim, lim)


def init_params(rng: Array, arch: Arch) -> dict:
  """Keras' initialisers: Glorot-uniform kernels (of the literal ``[U + I, .]`` / ``[., U + I]`` matrices
  for the block-stored first and last layers), zero biases, orthogonal recurrent kernels, forget bias 1."""
  nv, l = arch.num_users + arch.num_items, arch.lookback
  keys = iter(jax.random.split(rng, 64))
  h1 = arch.ae_units[0] if arch.ae_units else arch.embed_dim
  enc_dims = list(arch.ae_units) + [arch.embed_dim]
  enc = {"w_in_user": _glorot(next(keys), (l, arch.num_users, h1), nv, h1),
         "w_in_item": _glorot(next(keys), (l, arch.num_items, h1), nv, h1),
         "b_in": jnp.zeros((l, h1)), "hidden": []}
  for a, b in zip(enc_dims[:-1], enc_dims[1:]):
    enc["hidden"].append({"w": _glorot(next(keys), (l, a, b), a, b), "b": jnp.zeros((l, b))})
  lstm, a = [], arch.embed_dim
  orth = jax.nn.initializers.orthogonal()
  for h in arch.lstm_units:
    bias = jnp.zeros((4 * h,)).at[h:2 * h].set(1.0)  # gates i, f, c, o (Keras); unit_forget_bias
    lstm.append({"wx": _glorot(next(keys), (a, 4 * h), a, 4 * h), "wh": orth(next(keys), (h, 4 * h)),
                 "b": bias})
    a = h
  dec_dims = [arch.embed_dim] + list(arch.ae_units[::-1])
  dec = {"hidden": [], "w_out_user": _glorot(next(keys), (dec_dims[-1], arch.num_users), dec_dims[-1], nv),
         "w_out_item": _glorot(next(keys), (dec_dims[-1], arch.num_items), dec_dims[-1], nv),
         "b_out_user": jnp.zeros((arch.num_users,)), "b_out_item": jnp.zeros((arch.num_items,))}
  for a, b in zip(dec_dims[:-1], dec_dims[1:]):
    dec["hidden"].append({"w": _glorot(next(keys), (a, b), a, b), "b": jnp.zeros((b,))})
  return {"enc": enc, "lstm": lstm, "dec": dec}


def _act(x):
  return jax.nn.leaky_relu(x, LEAKY_SLOPE)


def _lstm_layer(p, xs):
  """Keras LSTM over ``xs [B, S, a]``: returns the hidden states ``[B, S, h]``."""
  h_dim = p["wh"].shape[0]
  zeros = jnp.zeros((xs.shape[0], h_dim), xs.dtype)

  def step(carry, x):
    h, c = carry
    g = x @ p["wx"] + h @ p["wh"] + p["b"]
    i, f, cc, o = jnp.split(g, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(cc)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (h, c), h

  _, hs = jax.lax.scan(step, (zeros, zeros), jnp.swapaxes(xs, 0, 1))
  return jnp.swapaxes(hs, 0, 1)


def embed(params: dict, x: Array, side: str) -> Array:
  """Embeddings ``y [B, d]`` of nodes of ``side`` ("user"/"item") from their rows ``x [B, l, width]``."""
  enc = params["enc"]
  w_in = enc["w_in_item"] if side == "user" else enc["w_in_user"]  # a user's row is over items
  z = _act(jnp.einsum("blw,lwh->blh", x, w_in) + enc["b_in"][None])
  for layer in enc["hidden"]:
    z = _act(jnp.einsum("bla,lah->blh", z, layer["w"]) + layer["b"][None])
  for layer in params["lstm"]:
    z = _lstm_layer(layer, z)
  return z[:, -1]


def decode(params: dict, y: Array) -> tuple[Array, Array]:
  """``(\\hat A over users [B, U], \\hat A over items [B, I])``: the next snapshot's row."""
  dec = params["dec"]
  h = y
  for layer in dec["hidden"]:
    h = _act(h @ layer["w"] + layer["b"])
  return (_act(h @ dec["w_out_user"] + dec["b_out_user"]), _act(h @ dec["w_out_item"] + dec["b_out_item"]))


def weighted_reconstruction(pred: Array, target: Array, beta: float) -> Array:
  """``sum_j ((pred_j - target_j) b_j)^2`` per row, ``b_j = beta`` on nonzero targets, 1 elsewhere."""
  b = jnp.where(target != 0, beta, 1.0)
  return jnp.sum(jnp.square((pred - target) * b), axis=-1)


def _regulariser(params: dict, nu1: float, nu2: float) -> Array:
  kernels = [params["enc"]["w_in_user"], params["enc"]["w_in_item"], params["dec"]["w_out_user"],
             params["dec"]["w_out_item"]]
  kernels += [l["w"] for l in params["enc"]["hidden"]] + [l["w"] for l in params["dec"]["hidden"]]
  return sum(nu1 * jnp.sum(jnp.abs(w)) + nu2 * jnp.sum(jnp.square(w)) for w in kernels)


def side_losses(arch: Arch, params: dict, batch: Mapping[str, Array], side: str) -> Array:
  """Per-sample reconstruction losses ``[B]`` of one side's part of a training batch."""
  p = "u_" if side == "user" else "i_"
  width = arch.num_items if side == "user" else arch.num_users
  l = arch.lookback
  x = dense_rows(batch[p + "neighbors"], batch[p + "first"], batch[p + "target"] - l, l + 1, width)
  y = embed(params, x[:, :l], side)
  pred_user, pred_item = decode(params, y)
  own, other = (pred_item, pred_user) if side == "user" else (pred_user, pred_item)
  loss = weighted_reconstruction(own, x[:, l], arch.beta)
  if arch.same_side_loss:
    loss = loss + jnp.sum(jnp.square(other), axis=-1)  # target 0, weight 1
  return loss


def loss_fn(arch: Arch, params: dict, batch: Mapping[str, Array], rng: Array = None):
  """dyngraph2vec's loss: the mean weighted reconstruction over the batch's real samples + L1/L2."""
  del rng
  lu, li = side_losses(arch, params, batch, "user"), side_losses(arch, params, batch, "item")
  mu, mi = batch["u_mask"].astype(jnp.float32), batch["i_mask"].astype(jnp.float32)
  n = jnp.maximum(mu.sum() + mi.sum(), 1.0)
  recon = (jnp.sum(lu * mu) + jnp.sum(li * mi)) / n
  reg = _regulariser(params, arch.nu1, arch.nu2)
  return recon + reg, {"reconstruction": recon, "regulariser": reg}


# -- the link predictor -------------------------------------------------------------------------------


def hadamard_features(user_emb: Array, item_emb: Array, users: Array, items: Array) -> Array:
  """``[n, d]``: ``user_emb[users] * item_emb[items]`` (DySAT's Hadamard edge operator)."""
  return jnp.take(user_emb, users, axis=0) * jnp.take(item_emb, items, axis=0)


def logistic_objective(theta: Array, x: Array, y: Array, weight: Array, l2: float) -> Array:
  """``sum_n weight_n (softplus(z_n) - y_n z_n) + l2/2 ||w||^2``, ``z = x w + b``, ``theta = [w; b]``."""
  z = x @ theta[:-1] + theta[-1]
  return jnp.sum(weight * (jax.nn.softplus(z) - y * z)) + 0.5 * l2 * jnp.sum(jnp.square(theta[:-1]))


@functools.partial(jax.jit, static_argnames=("iters",))
def fit_logistic(x: Array, y: Array, weight: Array, l2: float = 1.0, iters: int = 25) -> tuple[Array, Array]:
  """L2-regularised logistic regression by Newton's method (scikit-learn's objective with ``C = 1/l2``).

  Each iteration solves ``H delta = g`` (``H`` the exact Hessian, the intercept unpenalised, ``1e-6``
  added on the diagonal) and takes the step ``alpha delta`` with the best objective among
  ``alpha in {0, 2^0, ..., 2^-9}`` (never increasing the objective).

  Returns:
    ``(w [d], b [])``.
  """
  n, d = x.shape
  xa = jnp.concatenate([x, jnp.ones((n, 1), x.dtype)], axis=1)
  pen = jnp.concatenate([jnp.full((d,), l2, x.dtype), jnp.zeros((1,), x.dtype)])
  alphas = jnp.concatenate([jnp.zeros((1,)), 2.0 ** -jnp.arange(10.0)])
  obj = lambda th: logistic_objective(th, x, y, weight, l2)

  def body(_, theta):
    p = jax.nn.sigmoid(xa @ theta)
    g = xa.T @ (weight * (p - y)) + pen * theta
    h = (xa * (weight * p * (1 - p))[:, None]).T @ xa + jnp.diag(pen + 1e-6)
    delta = jnp.linalg.solve(h, g)
    vals = jax.vmap(lambda a: obj(theta - a * delta))(alphas)
    return theta - alphas[jnp.argmin(vals)] * delta

  theta = jax.lax.fori_loop(0, iters, body, jnp.zeros((d + 1,), x.dtype))
  return theta[:-1], theta[-1]


@dataclasses.dataclass(frozen=True)
class HadamardLogitScore:
  """``s(u, i) = w . (y_u \\odot y_i) + b`` (the link predictor's logit) over ``{"user", "item", "w", "b"}``."""

  def __call__(self, params, queries: Mapping[str, Array], items: Array) -> Array:
    u = jnp.take(params["user"], queries["user"], axis=0) * params["w"][None, :]
    return dot_scores(u, params["item"], items) + params["b"]


# -- the contract -------------------------------------------------------------------------------------

_HPARAM_RULES = {
    "embed_dim": ("int", 1, False), "lookback": ("int", 1, False), "num_snapshots": ("int", 2, False),
    "beta": ("pos", 0, False), "nu1": ("float", 0, False), "nu2": ("float", 0, False),
    "same_side_loss": ("bool", None, False), "lr_pairs": ("int", 1, False), "lr_l2": ("float", 0, False),
    "lr_iters": ("int", 1, False), "eval_batch_size": ("int", 1, False),
}


@dataclasses.dataclass(frozen=True)
class HParams:
  """dynAERNN's hyper-parameters (``fit(**hparams)``); see the module docstring for their origin.

  Attributes:
    embed_dim, ae_units, lstm_units (None: ``(500, embed_dim)``), lookback, num_snapshots, beta, nu1,
      nu2, same_side_loss: :class:`Arch`.
    lr_pairs: most training edges (each with one sampled non-edge) the link predictor is fitted on.
    lr_l2: its L2 penalty (scikit-learn's ``1 / C``).
    lr_iters: Newton iterations.
    eval_batch_size: nodes per embedding call.
  """

  embed_dim: int = 64
  ae_units: tuple[int, ...] = (500, 300)
  lstm_units: Optional[tuple[int, ...]] = None
  lookback: int = 3
  num_snapshots: int = 10
  beta: float = 5.0
  nu1: float = 1e-6
  nu2: float = 1e-6
  same_side_loss: bool = True
  lr_pairs: int = 200_000
  lr_l2: float = 1.0
  lr_iters: int = 25
  eval_batch_size: int = 512

  def __post_init__(self):
    fit_lib.check_fields(self, _HPARAM_RULES)
    object.__setattr__(self, "ae_units", tuple(int(u) for u in self.ae_units))
    lstm = (500, self.embed_dim) if self.lstm_units is None else tuple(int(u) for u in self.lstm_units)
    object.__setattr__(self, "lstm_units", lstm)

  def arch(self, num_users: int, num_items: int) -> Arch:
    return Arch(num_users, num_items, self.embed_dim, self.ae_units, self.lstm_units, self.lookback,
                self.num_snapshots, float(self.beta), float(self.nu1), float(self.nu2), self.same_side_loss)


@dataclasses.dataclass(frozen=True)
class TrainingData:
  """Host arrays of one training log: the two side graphs and their (node, target snapshot) samples."""

  users: SideGraph
  items: SideGraph
  user_samples: np.ndarray  # int64 [Mu, 2]: (node, target snapshot)
  item_samples: np.ndarray


def training_data(train: InteractionLog, arch: Arch) -> TrainingData:
  """Side graphs and samples: every node with a training edge, every target ``t`` in ``[l, T)``."""
  users, items = snapshot_graphs(train, arch.num_snapshots)
  targets = np.arange(arch.lookback, arch.num_snapshots)

  def samples(g):
    nodes = np.flatnonzero(g.degree > 0)
    return np.stack([np.repeat(nodes, targets.size), np.tile(targets, nodes.size)], axis=1)

  return TrainingData(users, items, samples(users), samples(items))


def _side_batch(g: SideGraph, samples: np.ndarray, idx: np.ndarray, size: int, prefix: str) -> dict:
  k = idx.size
  nodes = np.zeros(size, np.int64)
  target = np.full(size, 0, np.int64)
  nodes[:k], target[:k] = samples[idx, 0], samples[idx, 1]
  nbr, first = g.padded(nodes, max(g.max_degree, 1))
  target[k:] = samples[0, 1] if samples.size else 1  # any valid window for padding rows
  return {prefix + "neighbors": nbr, prefix + "first": first, prefix + "target": target.astype(np.int32),
          prefix + "mask": np.arange(size) < k}


def epoch_batches(data: TrainingData, batch_size: int, seed: int, epoch: int):
  """Shuffled static-shape batches: each holds ``Bu`` user and ``Bi`` item samples (proportional counts)."""
  rng = np.random.default_rng([seed, epoch])
  mu, mi = len(data.user_samples), len(data.item_samples)
  steps = max(1, -(-(mu + mi) // batch_size))
  bu, bi = max(1, -(-mu // steps)), max(1, -(-mi // steps))
  pu, pi = rng.permutation(mu), rng.permutation(mi)
  for s in range(steps):
    yield {**_side_batch(data.users, data.user_samples, pu[s * bu:(s + 1) * bu], bu, "u_"),
           **_side_batch(data.items, data.item_samples, pi[s * bi:(s + 1) * bi], bi, "i_")}


@functools.partial(jax.jit, static_argnames=("side", "lookback", "width"))
def _embed_batch(params, neighbors, first, start, side: str, lookback: int, width: int):
  return embed(params, dense_rows(neighbors, first, start, lookback, width), side)


def node_embeddings(params: dict, arch: Arch, data: TrainingData, batch_size: int = 512) -> tuple[Array, Array]:
  """``(user [U, d], item [I, d])``: every node embedded from its rows in the last ``l`` snapshots."""
  out = []
  for g, side in ((data.users, "user"), (data.items, "item")):
    width, d = max(g.max_degree, 1), []
    for lo in range(0, g.num_nodes, batch_size):
      nodes = np.arange(lo, lo + batch_size) % max(g.num_nodes, 1)  # static shape: wrap-around padding
      nbr, first = g.padded(nodes, width)
      start = np.full(batch_size, arch.num_snapshots - arch.lookback, np.int32)
      d.append(_embed_batch(params, nbr, first, start, side, arch.lookback, g.width))
    emb = jnp.concatenate(d)[:g.num_nodes] if d else jnp.zeros((0, arch.embed_dim))
    out.append(emb)
  return out[0], out[1]


@dataclasses.dataclass(frozen=True)
class LinkData:
  """The link predictor's training pairs: ``users``, ``items``, labels ``y`` (1 edge, 0 non-edge)."""

  users: np.ndarray
  items: np.ndarray
  y: np.ndarray


def link_data(train: InteractionLog, max_pairs: int, seed: int) -> LinkData:
  """Up to ``max_pairs`` distinct training edges (seeded subset) and one never-interacted item per edge
  (none for a user who interacted with every item)."""
  known = train.user_item_csr()
  indptr, items = known
  users = np.repeat(np.arange(train.num_users), np.diff(indptr))
  rng = np.random.default_rng([seed, 7919])
  if users.size > max_pairs:
    keep = np.sort(rng.choice(users.size, max_pairs, replace=False))
    users, items = users[keep], items[keep]
  neg_users = users[np.diff(indptr)[users] < train.num_items]  # a user who knows every item has none
  neg = samplers.sample_negatives(rng, neg_users, 1, train.num_items, known)[:, 0]
  return LinkData(np.concatenate([users, neg_users]).astype(np.int32),
                  np.concatenate([items, neg]).astype(np.int32),
                  np.concatenate([np.ones(users.size), np.zeros(neg_users.size)]).astype(np.float32))


def scoring_params(net_params: dict, arch: Arch, data: TrainingData, link: LinkData, hp: HParams) -> dict:
  """``{"user", "item", "w", "b"}``: the embeddings and the link predictor fitted on them."""
  ue, ie = node_embeddings(net_params, arch, data, hp.eval_batch_size)
  x = hadamard_features(ue, ie, jnp.asarray(link.users), jnp.asarray(link.items))
  w, b = fit_logistic(x, jnp.asarray(link.y), jnp.ones_like(jnp.asarray(link.y)), hp.lr_l2, hp.lr_iters)
  return {"user": ue, "item": ie, "w": w, "b": b}


@functools.lru_cache(maxsize=None)
def _learner(arch: Arch, tx_key: tuple) -> learner_lib.Learner:
  name, lr, wd, clip = tx_key
  tx = state_lib.make_optimizer(name, lr, weight_decay=wd, clip_norm=clip)
  return learner_lib.gradient_learner(functools.partial(loss_fn, arch), tx)


def fit(logs: list[InteractionLog], valid_queries: Optional[Queries], config: fit_lib.FitConfig, *,
        seed: int = 0, workdir: Optional[str] = None,
        valid_protocol: Optional[protocols_lib.Protocol] = None, **hparams) -> fit_lib.FitResult:
  """Trains dynAERNN on ``logs[0]`` (never reads ``logs[1:]``), keeping the best epoch on ``valid_queries``.

  ``config``: ``epochs``, ``batch_size`` (user + item samples per step), ``learning_rate``, ``optimizer``,
  ``weight_decay``, ``clip_norm``, ``metric``, ``patience``, ``time_limit``, ``valid_negatives``,
  ``progress``. ``hparams``: :class:`HParams` fields. At every validation the embeddings and the link
  predictor are recomputed from the current network; the returned ``params`` are those of the best one.
  """
  hp = HParams(**hparams)
  train = logs[0]
  arch = hp.arch(train.num_users, train.num_items)
  data = training_data(train, arch)
  link = link_data(train, hp.lr_pairs, seed)
  rng = jax.random.PRNGKey(seed)
  init_rng, loop_rng = jax.random.split(rng)
  tx_key = (config.optimizer, config.learning_rate, config.weight_decay, config.clip_norm)
  learner = _learner(arch, tx_key)
  state = learner.init(init_params(init_rng, arch), init_rng)
  score_fn = HadamardLogitScore()

  protocol, valid_negatives = fit_lib.validation_protocol(valid_queries, train.num_items, config, seed,
                                                          valid_protocol)
  eval_fn = None
  if protocol is not None:
    vq = dataclasses.replace(valid_queries, features={})

    def eval_fn(net_params):
      sp = scoring_params(net_params, arch, data, link, hp)
      return fit_lib.validation_metrics(score_fn, sp, vq, protocol, train.num_items)

  mu, mi = len(data.user_samples), len(data.item_samples)
  steps_per_epoch = max(1, -(-(mu + mi) // config.batch_size))
  run_config = {"model": "dynaernn", "fit": {k: v for k, v in dataclasses.asdict(config).items()
                                             if k != "progress"},
                "hparams": dataclasses.asdict(hp), "seed": seed}
  t0 = time.time()
  best, history = loop_lib.train(fit_lib.loop_config(config, steps_per_epoch, eval_fn is not None), learner,
                                 state, lambda epoch: epoch_batches(data, config.batch_size, seed, epoch),
                                 eval_fn, workdir, rng=loop_rng, run_config=run_config)
  segments, seconds = fit_lib.train_timing(workdir, int(best.step), time.time() - t0)
  params = scoring_params(learner.params(best), arch, data, link, hp)
  return fit_lib.FitResult(params=params, score_fn=score_fn, history=history, train_seconds=seconds,
                           best_step=int(best.step), train_segments=segments,
                           valid_negatives=valid_negatives)


def query_features(fitted: fit_lib.FitResult, logs: Sequence[InteractionLog], which: int) -> dict[str, np.ndarray]:
  """``{}``: a query is its user id; embeddings come from the training log's last snapshots only."""
  del fitted, logs, which
  return {}
