r"""JODIE (Kumar, Zhang & Leskovec, KDD 2019) as the 2TS paper adapts it, with its own training loop.

"Predicting Dynamic Embedding Trajectory in Temporal Interaction Networks"; the authors' PyTorch code is
``srijankr/jodie`` (``jodie.py``, ``library_models.py``, ``library_data.py``,
``evaluate_interaction_prediction.py``), which this module follows where the paper is silent.

Model. Every user ``u`` and item ``i`` has a dynamic embedding (``dim``, L2-normalised) and a static one.
An interaction ``(u, i, t)`` updates both dynamic embeddings with two coupled RNNs (Eq. 1-2)::

    u(t) = normalize(tanh(W1 u(t-) + W2 i(t-) + W4 dt_u + b))     # user RNN (an Elman cell)
    i(t) = normalize(tanh(V1 i(t-) + V2 u(t-) + V4 dt_i + b'))    # item RNN

(the paper's ``sigma`` is the authors' ``nn.RNNCell``, i.e. tanh, followed by ``F.normalize``;
``W3 f``, the interaction features, is absent: our logs have none). Before the interaction the user's
embedding is projected to the interaction time (Eq. 3, the embedding trajectory)::

    u_hat(t) = (1 + w) * u(t-),   w = W_p Delta,   Delta = dt_u / sigma_u

and the embedding of the item the user will interact with is predicted (Eq. 4) from the projected user,
the user's static embedding, and the dynamic and static embeddings of the user's previous item ``p``::

    j_tilde = W [u_hat ; p(t-) ; p_bar ; u_bar] + B     (the authors' ``prediction_layer``)

A user's first interaction has the "none" previous item (the authors' extra item ``num_items``: its
dynamic embedding stays at the learned initial embedding, its static embedding is learned). Every
dynamic embedding starts at one learned initial vector per side (``user_init`` / ``item_init``, the
authors' ``initial_user_embedding``). Ranking (the authors' evaluation): ``score(c) = -|| j_tilde -
[c(t-) ; c_bar] ||_2`` over the candidates' dynamic + static embeddings.

2TS paper changes (Appendix B): (1) static embeddings are learned ``static_dim = 64`` vectors instead of
one-hot rows; (2) item features through a learned table: an item's static part is ``c_bar = [e_c ;
f_c E]`` with ``E`` a ``[num_features, feat_dim]`` table, i.e. an embedding bag over multi-hot
categorical columns (ML-100K's 19 genre flags; its two numeric columns, standardised release year and
its missing flag, get a learned direction each), only when the log has ``item_features``
(``use_features``); (3) a triplet (margin) loss with random negatives instead of the MSE::

    L_pred = mean_n relu(margin + ||j_tilde - [i(t-) ; i_bar]|| - ||j_tilde - [n(t-) ; n_bar]||)

with ``num_negatives`` items ``n`` drawn uniformly from all items (a draw equal to the positive is
dropped). As in the authors' MSE, the dynamic parts of the target and the negatives are constants
(``stop_gradient``: the authors ``detach()`` the target); the static parts are not, or the learned
static item embeddings would only learn as inputs. The authors' temporal smoothness regularisers are
kept, weight ``smoothness`` (1 as theirs): ``mean_d (u(t) - u(t-))^2 + mean_d (i(t) - i(t-))^2`` with
the previous embeddings constant (``detach()``), which keeps trajectories from jumping. Their
state-change loss needs state labels, which our logs do not have: dropped.

Time deltas (the authors' ``load_network``): ``dt_u`` is the time since the user's previous interaction
(since the first training timestamp for a first interaction), ``dt_i`` likewise for the item. The RNN
inputs are standardised, ``(dt - mean) / std`` (the authors' ``sklearn.preprocessing.scale(dt + 1)``;
the ``+ 1`` cancels), with the mean and standard deviation of the *training* deltas (the authors use
the whole data set's, test included). The projection's ``Delta = dt_u / std_u`` is scaled but not
centred and ``w = W_p Delta`` has no bias, as Eq. 3 writes it, so ``u_hat = u(t-)`` at ``dt = 0`` and
``||u_hat - u|| = Delta ||W_p * u||`` grows with the elapsed time; the authors' ``Linear(1, dim)`` on the
standardised delta is the same map plus a bias ``b - W_p mean / std`` (:func:`project`).

Training (t-batches, Sec. 4 of the paper; the authors' ``jodie.py``): the training log in time order (ties
in row order) is cut into ``num_windows`` equal time spans (the authors' ``timespan / 500``); in each span
an interaction goes to t-batch ``max(last t-batch of its user, of its item) + 1`` (counted from 0 in every
span), so a t-batch holds a user or an item at most once and each user's and item's interactions stay in
time order (:func:`tbatch_levels`). T-batches are processed span by span, level by level; one larger than
``tbatch_size`` is cut into consecutive chunks (still no user or item twice, order kept), and every chunk is
padded to ``tbatch_size`` rows with a mask (padding rows write trash slots). One optimizer step
(:func:`make_learner`) scans ``tbatches_per_step`` consecutive t-batches with ``lax.scan``, back-propagating
through the dynamic embeddings they update (the authors back-propagate through one time span's t-batches,
then ``detach()``), then applies FitConfig's optimizer (the authors': Adam, learning rate 1e-3). The scan
carries only the step's working set (the users, items and previous items its t-batches touch, gathered from
the global tables at the step's start and written back at its end, :class:`TrainData`): carrying the whole
tables made reverse mode copy them at every t-batch. The negatives' dynamic embeddings are read at the
step's start (constants anyway). The loss of a step is the mean over its non-empty t-batches of the
t-batch's mean over its real rows (the authors sum per-t-batch means over a span; the mean keeps the scale
fixed when a step is partly padding). Every epoch restarts from the initial embeddings (the authors
re-initialise the tables per epoch): users and items not yet seen in the epoch read the current
``user_init`` / ``item_init`` (with gradient), so the initial vectors learn from every first interaction,
not only from the first span as in the authors' code, whose ``detach_()`` cuts the later ones off.

Evaluation (the authors' ``evaluate_interaction_prediction.py``, without their gradient steps on the
test data): after training, the validation (then test) interactions are consumed one at a time in time
order, no gradient: for each, the query ``j_tilde`` is computed from the state *before* it, then the
user's and the item's embeddings are updated with it (:func:`rollout`). So a query's features depend on
the training log, the earlier validation rows and the earlier test rows only (rows of equal timestamp
count in row order, as for every jaxrec baseline). Candidate items are scored with one item table per
query log, because per-query item tables are too big: validation queries use the items' embeddings at
the end of training, test queries those after the training and the whole validation log (``fit`` rolls
the validation log out once more from the kept epoch's state). Within a query log the candidates'
dynamic embeddings are therefore those at the log's start, while ``j_tilde`` uses the current state
(the authors rank against the items' current embeddings).

Contract (``experiments/two_time_scale.py``'s own trainers): :func:`fit` trains on ``logs[0]``, reads
``logs[1]`` for validation features and the test snapshot, never ``logs[2]``; :func:`query_features`
gives ``{"pred" [Q, D], "snapshot" [Q]}`` for the rows of ``logs[which]`` (``which >= 1``), scored by
``FitResult.score_fn`` (a :class:`JodieScorer`) with ``FitResult.params``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrec.data import order as order_lib
from jaxrec.data.log import InteractionLog
from jaxrec.eval import protocols as protocols_lib
from jaxrec.eval.queries import Queries
from jaxrec.train import fit as fit_lib
from jaxrec.train import learner as learner_lib
from jaxrec.train import loop as loop_lib
from jaxrec.train import state as state_lib

Array = jax.Array
Params = Any
NAME = "jodie"
_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class JodieConfig:
  """JODIE's hyper-parameters (the ``**hparams`` of :func:`fit`).

  Attributes:
    dim: dynamic embedding size (the authors' ``--embedding_dim`` default, 128).
    static_dim: learned static user/item embedding size (64, 2TS Appendix B).
    feat_dim: size of the item-feature embedding appended to an item's static embedding.
    use_features: use the log's ``item_features`` when it has them.
    margin: triplet loss margin.
    num_negatives: uniformly drawn negatives per interaction (the 2TS paper: "random negative
      example"; several average the hinge over more pairs).
    smoothness: weight of the temporal smoothness terms (the authors: 1).
    tbatch_size: rows of a padded t-batch; 0: the smallest power of two holding 99% of the training
      t-batches whole (:func:`auto_tbatch_size`).
    tbatches_per_step: t-batches scanned (and back-propagated through) per optimizer step.
    num_windows: time spans in which t-batches are built (the authors: 500).
  """

  dim: int = 128
  static_dim: int = 64
  feat_dim: int = 64
  use_features: bool = True
  margin: float = 1.0
  num_negatives: int = 10
  smoothness: float = 1.0
  tbatch_size: int = 0
  tbatches_per_step: int = 64
  num_windows: int = 500

  def __post_init__(self):
    fit_lib.check_fields(self, {
        "dim": ("int", 1, False), "static_dim": ("int", 1, False), "feat_dim": ("int", 1, False),
        "use_features": ("bool", None, False), "margin": ("float", 0, False),
        "num_negatives": ("int", 1, False), "smoothness": ("float", 0, False),
        "tbatch_size": ("int", 0, False), "tbatches_per_step": ("int", 1, False),
        "num_windows": ("int", 1, False)})


@dataclasses.dataclass(frozen=True)
class TimeNorm:
  """Normalisation of the time deltas, from the training log (see the module docstring)."""

  t_start: int
  user_mean: float
  user_std: float
  item_mean: float
  item_std: float

  @classmethod
  def fit(cls, t_start: int, dt_user: np.ndarray, dt_item: np.ndarray) -> "TimeNorm":
    std = lambda x: float(np.std(x)) if x.size and np.std(x) > 0 else 1.0
    mean = lambda x: float(np.mean(x)) if x.size else 0.0
    return cls(int(t_start), mean(dt_user), std(dt_user), mean(dt_item), std(dt_item))


# -- host side: the interaction stream and the t-batches -------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Stream:
  """Logs concatenated, each in time order (ties in row order), with the per-row inputs of the model.

  Attributes:
    user, item, time: ``[n]`` columns in processing order.
    prev: ``[n]`` the user's previous item in the stream (``num_items`` = none).
    dt_user, dt_item: float64 ``[n]`` seconds since the user's / item's previous row (since ``t_start``
      for a first one).
    order: per log, the log's row of each of its stream positions (``stream[k] = log[order[k]]``).
    offsets: ``[len(logs) + 1]`` stream position where each log starts.
  """

  user: np.ndarray
  item: np.ndarray
  time: np.ndarray
  prev: np.ndarray
  dt_user: np.ndarray
  dt_item: np.ndarray
  order: tuple
  offsets: np.ndarray


def _previous(key: np.ndarray) -> np.ndarray:
  """``[n]`` index of the previous row with the same ``key`` (-1: none)."""
  order = np.argsort(key, kind="stable")
  out = np.full(key.shape[0], -1, np.int64)
  if key.size > 1:
    same = key[order][1:] == key[order][:-1]
    out[order[1:][same]] = order[:-1][same]
  return out


def make_stream(logs: Sequence[InteractionLog], t_start: Optional[int] = None) -> Stream:
  """The logs one after the other, each in time order, with previous items and time deltas."""
  orders = tuple(order_lib.time_order(log.timestamp) for log in logs)
  cat = lambda f: np.concatenate([getattr(log, f)[o] for log, o in zip(logs, orders)])
  user, item, t = cat("user").astype(np.int64), cat("item").astype(np.int64), cat("timestamp")
  t = t.astype(np.int64)
  if t_start is None:
    t_start = int(t[0]) if t.size else 0
  pu, pi = _previous(user), _previous(item)
  prev = np.where(pu >= 0, item[np.maximum(pu, 0)], logs[0].num_items)
  dt_user = (t - np.where(pu >= 0, t[np.maximum(pu, 0)], t_start)).astype(np.float64)
  dt_item = (t - np.where(pi >= 0, t[np.maximum(pi, 0)], t_start)).astype(np.float64)
  offsets = np.concatenate([[0], np.cumsum([len(log) for log in logs])]).astype(np.int64)
  return Stream(user, item, t, prev, dt_user, dt_item, orders, offsets)


def stream_rows(stream: Stream, norm: TimeNorm, index: np.ndarray) -> dict:
  """Device inputs of the stream positions ``index``: ids, normalised deltas, mask (all True)."""
  return {
      "user": stream.user[index].astype(np.int32),
      "item": stream.item[index].astype(np.int32),
      "prev": stream.prev[index].astype(np.int32),
      "dt_user": ((stream.dt_user[index] - norm.user_mean) / norm.user_std).astype(np.float32),
      "dt_item": ((stream.dt_item[index] - norm.item_mean) / norm.item_std).astype(np.float32),
      "delta": (stream.dt_user[index] / norm.user_std).astype(np.float32),
      "mask": np.ones(index.shape, bool),
  }


def tbatch_levels(user: np.ndarray, item: np.ndarray, timestamp: np.ndarray,
                  num_windows: int) -> tuple[np.ndarray, np.ndarray]:
  """``(window [n], level [n])`` of time-ordered rows: the authors' t-batch assignment.

  ``window = floor((t - t_0) * num_windows / span)`` (the last timestamp in the last window); within a
  window a row's level is ``max(level of its user's previous row, of its item's previous row) + 1``
  (rows of earlier windows do not count), from 0. Rows of one (window, level) share no user and no item.
  """
  n = user.shape[0]
  if n == 0:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)
  t = timestamp.astype(np.int64)
  span = int(t[-1] - t[0])
  window = np.zeros(n, np.int64) if span <= 0 else np.minimum(
      ((t - t[0]).astype(np.float64) * num_windows / span).astype(np.int64), num_windows - 1)
  level = np.zeros(n, np.int64)
  last_u: dict = {}
  last_i: dict = {}
  cur = -1
  lev = level.tolist()
  for j, (u, i, w) in enumerate(zip(user.tolist(), item.tolist(), window.tolist())):
    if w != cur:  # a new span: t-batch ids restart (the authors' reinitialize_tbatches)
      last_u, last_i, cur = {}, {}, w
    lev[j] = max(last_u.get(u, -1), last_i.get(i, -1)) + 1
    last_u[u] = last_i[i] = lev[j]
  return window, np.asarray(lev, np.int64)


def auto_tbatch_size(window: np.ndarray, level: np.ndarray, cap: int = 512) -> int:
  """The smallest power of two >= the 99th percentile of the t-batch sizes (at most ``cap``)."""
  if window.size == 0:
    return 1
  _, sizes = np.unique(np.stack([window, level], 1), axis=0, return_counts=True)
  q = int(np.ceil(np.quantile(sizes, 0.99)))
  return int(min(cap, 1 << max(q - 1, 0).bit_length()))


def tbatch_layout(window: np.ndarray, level: np.ndarray, size: int) -> np.ndarray:
  """``int64 [T, size]`` row indices of the padded t-batches in processing order (-1: padding).

  T-batches are ordered by (window, level); rows of one t-batch keep their time order, and a t-batch of
  more than ``size`` rows becomes consecutive chunks of ``size``.
  """
  n = window.shape[0]
  if n == 0:
    return np.zeros((0, size), np.int64)
  order = np.lexsort((np.arange(n), level, window))
  w, l = window[order], level[order]
  start = np.concatenate([[True], (w[1:] != w[:-1]) | (l[1:] != l[:-1])])
  group = np.cumsum(start) - 1
  group_start = np.flatnonzero(start)
  pos = np.arange(n) - group_start[group]
  counts = np.diff(np.append(group_start, n))
  chunks = -(-counts // size)
  first_chunk = np.concatenate([[0], np.cumsum(chunks)[:-1]])
  tb = first_chunk[group] + pos // size
  out = np.full((int(chunks.sum()), size), -1, np.int64)
  out[tb, pos % size] = order
  return out


def _localize(ids: np.ndarray, include: np.ndarray, num_ids: int, fill: int, extra: int):
  """Per step (row of ``ids [S, M]``), slots ``0 .. n_s - 1`` for its distinct included ids.

  Returns ``(local_ids [S, L], slot [S, M], n)``: ``local_ids[s, k]`` the id of slot ``k`` (``fill`` past
  ``n_s``), ``slot`` the slot of each included entry (-1 elsewhere), ``n = max n_s`` and ``L = n +
  extra``.
  """
  s_, m = ids.shape
  key = np.repeat(np.arange(s_, dtype=np.int64), m).reshape(s_, m) * num_ids + ids
  uniq, inv = np.unique(key[include], return_inverse=True)
  step, gid = uniq // num_ids, uniq % num_ids
  pos = np.arange(uniq.size) - np.searchsorted(step, step, side="left")
  n = int(pos.max()) + 1 if uniq.size else 0
  local_ids = np.full((s_, n + extra), fill, np.int64)
  local_ids[step, pos] = gid
  slot = np.full((s_, m), -1, np.int64)
  slot[include] = pos[inv]
  return local_ids, slot, n


@dataclasses.dataclass(frozen=True)
class TrainData:
  """The training log as padded t-batches grouped into optimizer steps (the same every epoch).

  A step works on local tables (its working set): the dynamic embeddings of the users, and of the items
  and previous items, that its t-batches touch, gathered from the global tables when the step starts and
  written back when it ends, so the scan carries (and back-propagates through) small tables whatever the
  number of users and items. Rows address the local tables by slot; padding rows write their own trash
  slots (the last ``tbatch_size`` of each local table), so a t-batch's writes never collide.

  Attributes:
    steps: ``{name: [S, ...]}``: per row ``[S, K, B]`` the :func:`stream_rows` inputs with global ids
      (padding: ``user = num_users``, ``item = num_items + 1``, ``prev = num_items``, ``mask`` False)
      and ``user_slot``, ``item_slot``, ``prev_slot``; per step ``user_ids [S, Lu]``, ``item_ids [S,
      Li]`` (the global ids of the local slots) and ``item_written [S, Li]`` (slots some row interacts
      with; the others were only read as a previous item and are not written back).
    layout: ``int64 [T, B]`` stream rows of the t-batches (-1 padding), before grouping.
    norm: the time normalisation.
  """

  steps: dict
  layout: np.ndarray
  norm: TimeNorm

  @property
  def num_steps(self) -> int:
    return int(self.steps["user"].shape[0])

  def batches(self, epoch: int):
    """The steps of one epoch: every one of them, the first with ``reset`` True."""
    del epoch
    for s in range(self.num_steps):
      yield {**{k: v[s] for k, v in self.steps.items()}, "reset": np.asarray(s == 0)}


def prepare_train(train: InteractionLog, cfg: JodieConfig) -> TrainData:
  """Stream, normalisation, t-batches, steps and their local slots of the training log."""
  stream = make_stream([train])
  norm = TimeNorm.fit(stream.time[0] if stream.time.size else 0, stream.dt_user, stream.dt_item)
  window, level = tbatch_levels(stream.user, stream.item, stream.time, cfg.num_windows)
  size = cfg.tbatch_size or auto_tbatch_size(window, level)
  layout = tbatch_layout(window, level, size)
  k = cfg.tbatches_per_step
  num_steps = max(1, -(-layout.shape[0] // k))
  padded = np.full((num_steps * k, size), -1, np.int64)
  padded[:layout.shape[0]] = layout
  rows = stream_rows(stream, norm, np.maximum(padded, 0).ravel())
  pad = (padded < 0).ravel()
  nu, ni = train.num_users, train.num_items
  rows["user"][pad] = nu
  rows["item"][pad] = ni + 1
  rows["prev"][pad] = ni
  for key in ("dt_user", "dt_item", "delta"):
    rows[key][pad] = 0.0
  rows["mask"][pad] = False
  steps = {k_: v.reshape(num_steps, k * size) for k_, v in rows.items()}
  mask = steps["mask"]
  trash = np.broadcast_to(np.tile(np.arange(size), k), mask.shape)  # padding: its column's trash slot
  user_ids, user_slot, n_u = _localize(steps["user"], mask, nu + 1, nu, size)
  user_slot = np.where(mask, user_slot, n_u + trash)
  both = np.concatenate([steps["item"], steps["prev"]], axis=1)
  item_ids, slots, n_i = _localize(both, np.concatenate([mask, np.ones_like(mask)], 1), ni + 2, ni + 1, size)
  item_slot = np.where(mask, slots[:, :k * size], n_i + trash)
  prev_slot = slots[:, k * size:]
  written = np.zeros(item_ids.shape, bool)
  step_of, col = np.nonzero(mask)
  written[step_of, item_slot[step_of, col]] = True
  steps.update(user_slot=user_slot, item_slot=item_slot, prev_slot=prev_slot)
  steps = {k_: v.reshape(num_steps, k, size).astype(np.int32 if v.dtype == np.int64 else v.dtype)
           for k_, v in steps.items()}
  steps.update(user_ids=user_ids.astype(np.int32), item_ids=item_ids.astype(np.int32), item_written=written)
  return TrainData(steps=steps, layout=layout, norm=norm)


# -- the model -------------------------------------------------------------------------------------------


def init_params(cfg: JodieConfig, rng: Array, num_users: int, num_items: int,
                num_features: int = 0) -> Params:
  """Trainable parameters; initialisers as the authors' (torch defaults, ``NormalLinear`` for ``W_p``).

  Tables have trash rows: users ``[num_users + 1]``; items ``[num_items + 2]`` (row ``num_items``: the
  "none" previous item, ``num_items + 1``: trash).
  """
  d, s = cfg.dim, cfg.static_dim
  s_item = s + (cfg.feat_dim if num_features else 0)
  ks = jax.random.split(rng, 12)
  unif = lambda k, shape, fan_in: jax.random.uniform(k, shape, jnp.float32, -1, 1) / math.sqrt(fan_in)
  unit = lambda k: (lambda v: v / jnp.linalg.norm(v))(jax.random.uniform(k, (d,), jnp.float32))

  def rnn(k):
    k1, k2, k3 = jax.random.split(k, 3)
    return {"w_in": unif(k1, (d + 1, d), d), "w_h": unif(k2, (d, d), d), "b": unif(k3, (d,), d) * 2}

  in_pred = 2 * d + s_item + s
  params = {
      "user_init": unit(ks[0]), "item_init": unit(ks[1]),
      "user_static": jax.random.normal(ks[2], (num_users + 1, s)) / math.sqrt(s),
      "item_static": jax.random.normal(ks[3], (num_items + 2, s)) / math.sqrt(s),
      "user_rnn": rnn(ks[4]), "item_rnn": rnn(ks[5]),
      "proj": jax.random.normal(ks[6], (d,)),  # NormalLinear(1, d): N(0, 1 / sqrt(fan_in = 1))
      "predict": {"w": unif(ks[7], (in_pred, d + s_item), in_pred),
                  "b": unif(ks[8], (d + s_item,), in_pred)},
  }
  if num_features:
    params["feat_table"] = jax.random.normal(ks[9], (num_features, cfg.feat_dim)) / math.sqrt(cfg.feat_dim)
  return params


def padded_features(item_features: Optional[np.ndarray], num_items: int) -> np.ndarray:
  """``float32 [num_items + 2, f]`` with zero rows for "none" and trash (``f = 0`` without features)."""
  if item_features is None:
    return np.zeros((num_items + 2, 0), np.float32)
  f = np.asarray(item_features, np.float32)
  return np.concatenate([f, np.zeros((2, f.shape[1]), np.float32)])


def project(w_p: Array, u: Array, delta: Array) -> Array:
  """Eq. 3: ``u_hat = (1 + W_p Delta) * u`` (elementwise; ``w_p [dim]``, ``delta [...]``)."""
  return u * (1.0 + delta[..., None] * w_p)


def _normalize(x: Array) -> Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), _EPS)


def rnn_cell(p: Params, h: Array, other: Array, dt: Array) -> Array:
  """Eq. 1/2: ``normalize(tanh([other ; dt] W_in + h W_h + b))`` (``nn.RNNCell`` + ``F.normalize``)."""
  x = jnp.concatenate([other, dt[..., None]], axis=-1)
  return _normalize(jnp.tanh(x @ p["w_in"] + h @ p["w_h"] + p["b"]))


def item_static(params: Params, feats: Array, idx: Array) -> Array:
  """``c_bar = [e_c ; f_c E]`` (just ``e_c`` without a feature table) of the items ``idx``."""
  s = jnp.take(params["item_static"], idx, axis=0)
  if "feat_table" in params:
    s = jnp.concatenate([s, jnp.take(feats, idx, axis=0) @ params["feat_table"]], axis=-1)
  return s


def predict(params: Params, u_hat: Array, prev_dyn: Array, prev_static: Array, user_static: Array) -> Array:
  """Eq. 4: ``j_tilde = W [u_hat ; p(t-) ; p_bar ; u_bar] + B``."""
  x = jnp.concatenate([u_hat, prev_dyn, prev_static, user_static], axis=-1)
  return x @ params["predict"]["w"] + params["predict"]["b"]


def _read(table: Array, seen: Array, init: Array, idx: Array) -> Array:
  """Dynamic embeddings of ``idx``: the table's row once seen in this pass, else the initial vector."""
  return jnp.where(jnp.take(seen, idx, axis=0)[..., None], jnp.take(table, idx, axis=0), init)


def interact(params: Params, tables: tuple, rows: Mapping[str, Array], feats: Array):
  """One t-batch (or one interaction, ``[1]``): the prediction from the state before, then Eq. 1-2.

  ``tables = (user_table, item_table)`` of dynamic embeddings, addressed by ``rows["user_slot"]``,
  ``["item_slot"]``, ``["prev_slot"]``; the global ids ``rows["user"]``, ``["item"]``, ``["prev"]``
  address the static embeddings. A t-batch writes each slot at most once. Returns ``(tables, out)``:
  the tables after the interactions and the prediction and embeddings before/after.
  """
  user_tab, item_tab = tables
  us, is_, ps = rows["user_slot"], rows["item_slot"], rows["prev_slot"]
  u_prev = jnp.take(user_tab, us, axis=0)
  ip = jnp.take(item_tab, jnp.concatenate([is_, ps]), axis=0)
  i_prev, p_dyn = ip[:is_.shape[0]], ip[is_.shape[0]:]
  u_hat = project(params["proj"], u_prev, rows["delta"])
  pred = predict(params, u_hat, p_dyn, item_static(params, feats, rows["prev"]),
                 jnp.take(params["user_static"], rows["user"], axis=0))
  u_new = rnn_cell(params["user_rnn"], u_prev, i_prev, rows["dt_user"])
  i_new = rnn_cell(params["item_rnn"], i_prev, u_prev, rows["dt_item"])
  tables = (user_tab.at[us].set(u_new, unique_indices=True),
            item_tab.at[is_].set(i_new, unique_indices=True))
  return tables, {"pred": pred, "u_prev": u_prev, "i_prev": i_prev, "u_new": u_new, "i_new": i_new}


def _dist(a: Array, b: Array) -> Array:
  return jnp.sqrt(jnp.sum(jnp.square(a - b), axis=-1) + _EPS)


def tbatch_loss(cfg: JodieConfig, params: Params, tables: tuple, rows: Mapping[str, Array], feats: Array,
                negatives: Array, neg_dyn: Array):
  """``(tables, (loss, nonempty, triplet, smooth))`` of one padded t-batch (means over its real rows).

  ``negatives [B, N]``: global item ids; ``neg_dyn [B, N, dim]`` their dynamic embeddings (constants).
  """
  tables, out = interact(params, tables, rows, feats)
  i, mask = rows["item"], rows["mask"]
  sg = jax.lax.stop_gradient
  pos = jnp.concatenate([sg(out["i_prev"]), item_static(params, feats, i)], axis=-1)
  neg = jnp.concatenate([sg(neg_dyn), item_static(params, feats, negatives)], axis=-1)
  d_pos = _dist(out["pred"], pos)
  d_neg = _dist(out["pred"][:, None, :], neg)
  ok = negatives != i[:, None]
  hinge = jax.nn.relu(cfg.margin + d_pos[:, None] - d_neg)
  triplet = jnp.sum(jnp.where(ok, hinge, 0.0), 1) / jnp.maximum(ok.sum(1), 1)
  smooth = (jnp.mean(jnp.square(out["u_new"] - sg(out["u_prev"])), -1)
            + jnp.mean(jnp.square(out["i_new"] - sg(out["i_prev"])), -1))
  m = mask.astype(jnp.float32)
  count = jnp.maximum(m.sum(), 1.0)
  trip = jnp.sum(m * triplet) / count
  smo = jnp.sum(m * smooth) / count
  return tables, (trip + cfg.smoothness * smo, mask.any(), trip, smo)


def initial_carry(params: Params) -> tuple:
  """Global ``(user_dyn [U+1, dim], item_dyn [I+2, dim], user_seen, item_seen)`` before any interaction."""
  nu, ni = params["user_static"].shape[0], params["item_static"].shape[0]
  d = params["user_init"].shape[0]
  return (jnp.zeros((nu, d)), jnp.zeros((ni, d)), jnp.zeros(nu, bool), jnp.zeros(ni, bool))


def resolve(model: Params, carry: tuple) -> tuple[Array, Array]:
  """``(user_dyn, item_dyn)`` with the rows not seen yet at their initial embeddings."""
  ud, idyn, us, iseen = carry
  return (jnp.where(us[:, None], ud, model["user_init"]), jnp.where(iseen[:, None], idyn, model["item_init"]))


# -- the learner -----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def make_learner(cfg: JodieConfig, tx_key: tuple) -> learner_lib.Learner:
  """A :class:`~jaxrec.train.learner.Learner` whose batch is one step of :class:`TrainData`.

  ``init(params, rng)`` takes ``{"model": trainable params, "feats": [num_items + 2, f]}``; the state
  also carries the global dynamic tables and "seen" flags (reset when ``batch["reset"]``, the first step
  of an epoch). An update gathers the step's local tables (unseen rows read the current initial
  embeddings, with gradient), scans its t-batches, back-propagates through the scan, applies the
  optimizer and writes the local tables back. ``params(state)`` is the served state ``{"model",
  "feats", "user_dyn", "item_dyn"}`` (:func:`resolve`d: at an epoch's end, the embeddings after the
  whole training log). Cached per (config, optimizer): another seed does not recompile.
  """
  name, lr, wd, clip = tx_key
  tx = state_lib.make_optimizer(name, lr, weight_decay=wd, clip_norm=clip)
  row_keys = ("user", "item", "prev", "user_slot", "item_slot", "prev_slot", "dt_user", "dt_item", "delta",
              "mask")

  def init(params, rng):
    del rng
    model = params["model"]
    return {"model": model, "opt": tx.init(model), "feats": jnp.asarray(params["feats"]),
            "carry": initial_carry(model)}

  def update(state, batch, rng):
    reset = batch["reset"]
    ud, idyn, us, iseen = state["carry"]
    us, iseen = us & ~reset, iseen & ~reset
    feats = state["feats"]
    rows = {k: batch[k] for k in row_keys}
    user_ids, item_ids = batch["user_ids"], batch["item_ids"]
    k, b = rows["user"].shape
    num_items = feats.shape[0] - 2
    negatives = jax.random.randint(rng, (k, b, cfg.num_negatives), 0, num_items)
    neg_dyn = _read(idyn, iseen, state["model"]["item_init"], negatives)  # at the step's start

    def loss_fn(model):
      tables = (_read(ud, us, model["user_init"], user_ids), _read(idyn, iseen, model["item_init"], item_ids))

      def body(t, xs):
        r, n, nd = xs
        return tbatch_loss(cfg, model, t, r, feats, n, nd)

      tables, (losses, nonempty, trip, smo) = jax.lax.scan(body, tables, (rows, negatives, neg_dyn))
      denom = jnp.maximum(nonempty.sum(), 1)
      aux = {"triplet": trip.sum() / denom, "smoothness": smo.sum() / denom}
      return losses.sum() / denom, (tables, aux)

    (loss, ((lu, li), aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["model"])
    updates, opt = tx.update(grads, state["opt"], state["model"])
    model = optax.apply_updates(state["model"], updates)
    item_write = jnp.where(batch["item_written"], item_ids, num_items + 1)  # read-only slots: to trash
    carry = (ud.at[user_ids].set(lu), idyn.at[item_write].set(li), us.at[user_ids].set(True),
             iseen.at[item_write].set(True))
    grad_norm = optax.global_norm(grads)
    metrics = dict(aux, loss=loss, grad_norm=grad_norm,
                   is_finite=jnp.isfinite(loss) & jnp.isfinite(grad_norm))
    return {"model": model, "opt": opt, "feats": feats, "carry": carry}, metrics

  def params(state):
    user_dyn, item_dyn = resolve(state["model"], state["carry"])
    return {"model": state["model"], "feats": state["feats"], "user_dyn": user_dyn, "item_dyn": item_dyn}

  return learner_lib.Learner(init=init, update=update, params=params)


# -- rollout, item tables, scoring -----------------------------------------------------------------------


@jax.jit
def _rollout(model: Params, feats: Array, tables: tuple, rows: Mapping[str, Array]):
  def body(t, r):
    r = jax.tree.map(lambda x: x[None], r)
    r.update(user_slot=r["user"], item_slot=r["item"], prev_slot=r["prev"])
    t, out = interact(model, t, r, feats)
    return t, out["pred"][0]

  return jax.lax.scan(body, tables, rows)


def rollout(served: Params, rows: Mapping[str, np.ndarray]) -> tuple[Params, np.ndarray]:
  """Consumes ``rows`` (``[R]``, :func:`stream_rows`) one at a time in order, no gradient.

  Returns the served state after them and ``pred [R, D]``: row ``r``'s ``j_tilde`` from the state
  before row ``r`` (after rows ``0 .. r-1``).
  """
  if rows["user"].shape[0] == 0:
    d = served["model"]["predict"]["b"].shape[0]
    return served, np.zeros((0, d), np.float32)
  tables, pred = _rollout(served["model"], served["feats"], (served["user_dyn"], served["item_dyn"]),
                          {k: v for k, v in rows.items() if k != "mask"})
  return dict(served, user_dyn=tables[0], item_dyn=tables[1]), np.asarray(pred)


@jax.jit
def item_table(served: Params) -> Array:
  """``[num_items, D]`` candidates' ``[c(t-) ; c_bar]`` in the served state (the real items only)."""
  model = served["model"]
  n = model["item_static"].shape[0] - 2
  dyn = served["item_dyn"][:n]
  return jnp.concatenate([dyn, item_static(model, served["feats"], jnp.arange(n))], axis=-1)


@dataclasses.dataclass(frozen=True)
class JodieScorer:
  """``score(params, queries, items) = -|| pred - item_table[snapshot, item] ||_2`` (a hashable ScoreFn).

  ``params["item_table"]``: ``[S, num_items, D]`` item tables (0: after training, 1: after training +
  validation); ``queries["pred"] [B, D]``, ``queries["snapshot"] [B]``. Also carries what
  :func:`query_features` needs besides the parameters (the config and the time normalisation).
  """

  config: JodieConfig
  norm: TimeNorm

  def __call__(self, params: Params, queries: Mapping[str, Array], items: Array) -> Array:
    table = params["item_table"]
    pred = queries["pred"]
    snap = jnp.clip(queries["snapshot"].astype(jnp.int32), 0, table.shape[0] - 1)
    if items.ndim == 1:  # shared candidates: |p|^2 - 2 p.x + |x|^2 for every table, then pick
      x = jnp.take(table, items, axis=1)  # [S, C, D]
      sq = (jnp.sum(jnp.square(pred), -1)[None, :, None] - 2 * jnp.einsum("bd,scd->sbc", pred, x)
            + jnp.sum(jnp.square(x), -1)[:, None, :])
      sq = jnp.take_along_axis(sq, snap[None, :, None], axis=0)[0]
    else:
      x = table[snap[:, None], items]  # [B, C, D]
      sq = jnp.sum(jnp.square(pred[:, None, :] - x), -1)
    return -jnp.sqrt(jnp.maximum(sq, 0.0))


def _features(served: Params, stream: Stream, norm: TimeNorm, which: int, snapshot: int):
  """Rolls out the stream's logs ``1 .. which`` from ``served``; features of ``logs[which]``'s rows."""
  lo, hi = int(stream.offsets[1]), int(stream.offsets[which + 1])
  state, pred = rollout(served, stream_rows(stream, norm, np.arange(lo, hi)))
  start = int(stream.offsets[which]) - lo
  n = int(stream.offsets[which + 1] - stream.offsets[which])
  out = np.empty((n, pred.shape[1]), np.float32)
  out[stream.order[which]] = pred[start:start + n]
  return state, {"pred": out, "snapshot": np.full(n, snapshot, np.int32)}


def query_features(fitted: fit_lib.FitResult, logs: list[InteractionLog],
                   which: int) -> dict[str, np.ndarray]:
  """``{"pred": [Q, D], "snapshot": [Q]}`` of the rows of ``logs[which]`` (in their row order).

  Starting from the state at the end of training (``fitted.params``), the rows of ``logs[1:which + 1]``
  are consumed one at a time in time order, no gradient; a row's ``pred`` is ``j_tilde`` before it, so
  it depends on ``logs[:which]`` and the earlier rows of ``logs[which]`` only. ``snapshot``:
  ``which - 1`` (the item table of the end of ``logs[which - 1]``, :class:`JodieScorer`).
  """
  if which < 1:
    raise ValueError("jodie.query_features: which must be >= 1 (the training rows have no leak-free "
                     "item table)")
  scorer: JodieScorer = fitted.score_fn
  stream = make_stream(list(logs[:which + 1]), scorer.norm.t_start)
  snapshot = min(which - 1, int(fitted.params["item_table"].shape[0]) - 1)
  return _features(fitted.params["train_state"], stream, scorer.norm, which, snapshot)[1]


# -- fit -------------------------------------------------------------------------------------------------


def make_config(**hparams) -> JodieConfig:
  """:class:`JodieConfig` from ``fit``'s ``**hparams`` (an unknown name raises)."""
  known = {f.name for f in dataclasses.fields(JodieConfig)}
  bad = sorted(set(hparams) - known)
  if bad:
    raise ValueError(f"jodie: unknown hyper-parameters {bad}; known {sorted(known)}")
  return JodieConfig(**hparams)


def fit(logs: list[InteractionLog], valid_queries: Optional[Queries], config: fit_lib.FitConfig, *,
        seed: int = 0, workdir: Optional[str] = None,
        valid_protocol: Optional[protocols_lib.Protocol] = None, **hparams) -> fit_lib.FitResult:
  """Trains JODIE on ``logs[0]`` in time order; keeps the epoch with the best ``config.metric``.

  Each epoch is one pass over the training t-batches (:func:`prepare_train`); after it the validation
  log ``logs[1]`` is rolled out from the end-of-training state (:func:`rollout`) and ``valid_queries``
  (whose rows are ``logs[1]``'s) are scored against the end-of-training item table. ``config``:
  epochs, learning rate, optimizer, weight decay, clipping, ``metric``, ``patience``, ``time_limit``,
  ``valid_negatives`` (when ``valid_protocol`` is None), ``progress``; ``eval_every`` is ignored (a
  mid-epoch state has consumed part of the training log only). ``hparams``: :class:`JodieConfig`.

  Returns:
    A FitResult whose ``params`` are ``{"item_table": [2, num_items, D], "train_state": served state
    at the end of training}`` and ``score_fn`` a :class:`JodieScorer`.
  """
  train = logs[0]
  cfg = make_config(**hparams)
  data = prepare_train(train, cfg)
  use_feats = cfg.use_features and train.item_features is not None
  feats = padded_features(train.item_features if use_feats else None, train.num_items)
  rng = jax.random.PRNGKey(seed)
  init_rng, loop_rng = jax.random.split(rng)
  model = init_params(cfg, init_rng, train.num_users, train.num_items, feats.shape[1])
  tx_key = (config.optimizer, config.learning_rate, config.weight_decay, config.clip_norm)
  learner = make_learner(cfg, tx_key)
  state = learner.init({"model": model, "feats": feats}, init_rng)
  scorer = JodieScorer(cfg, data.norm)
  valid_stream = make_stream([train, logs[1]], data.norm.t_start) if len(logs) > 1 else None

  if valid_queries is not None and len(valid_queries) and valid_stream is not None and (
      len(valid_queries) != len(logs[1])):
    raise ValueError(f"jodie.fit: {len(valid_queries)} validation queries for {len(logs[1])} rows of "
                     "logs[1]; the queries must be logs[1]'s rows")
  protocol, valid_negatives = fit_lib.validation_protocol(
      valid_queries if valid_stream is not None else None, train.num_items, config, seed, valid_protocol)
  eval_fn = None
  if protocol is not None:
    def eval_fn(served):
      _, feats_q = _features(served, valid_stream, data.norm, 1, 0)
      q = dataclasses.replace(valid_queries, features=feats_q)
      return fit_lib.validation_metrics(scorer, {"item_table": item_table(served)[None]}, q, protocol,
                                        train.num_items)

  fit_fields = {k: v for k, v in dataclasses.asdict(config).items() if k != "progress"}
  run_config = {"model": NAME, "fit": fit_fields, "hparams": dataclasses.asdict(cfg), "seed": seed}
  steps = data.num_steps
  t0 = time.time()
  best, history = loop_lib.train(
      fit_lib.loop_config(dataclasses.replace(config, eval_every=None), steps, eval_fn is not None), learner,
      state, data.batches, eval_fn, workdir, rng=loop_rng, run_config=run_config)
  best_step = max((r["step"] for r in history if r.get("best")),
                  default=history[-1]["step"] if history else 0)
  segments, seconds = fit_lib.train_timing(workdir, int(best_step), time.time() - t0)
  served = learner.params(best)
  tables = [item_table(served)]
  if valid_stream is not None:  # the item table after the validation log: test queries' candidates
    after_valid, _ = _features(served, valid_stream, data.norm, 1, 0)
    tables.append(item_table(after_valid))
  else:
    tables.append(tables[0])
  params = {"item_table": jnp.stack(tables), "train_state": served}
  return fit_lib.FitResult(params=params, score_fn=scorer, history=history, train_seconds=seconds,
                           best_step=int(best_step), train_segments=segments,
                           valid_negatives=valid_negatives)
