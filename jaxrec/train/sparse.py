"""Row-sparse embedding optimizers and the learner that feeds them: per-step cost O(rows touched x d).

Dense Adam over an embedding table reads and writes every row of the table, its gradient and both
moments on every step, although a batch of ``B`` examples touches at most a few ``B`` rows. Production
recommenders train embeddings row-sparsely (TF's ``LazyAdam`` and TPU embedding row-wise Adagrad,
``torch.optim.SparseAdam``, FBGEMM/TorchRec ``EXACT_ROWWISE_ADAGRAD``); this module does the same as pure
functions:

* **optimizers** (:class:`RowOptimizer`): ``init(table) -> state`` and
  ``update(table, state, ids [n], row_grads [n, ...], mask [n]) -> (table, state)``. Duplicate ids are
  summed first (:func:`dedup`: ``jnp.unique(size=n)`` + ``segment_sum``, static shapes), then only the
  distinct rows are gathered, updated and scattered back (``.at[rows].set(..., mode="drop")``), so under
  ``jax.jit`` with the state donated XLA updates the table in place: O(n d), not O(rows d). Masked ids
  (padding) and the fill slots of the fixed-size dedup move nothing.

  - :func:`rowwise_adagrad` (FBGEMM's exact row-wise Adagrad; Duchi et al. 2011 with one accumulator per
    row): ``a_r += mean_k g_{r,k}^2``; ``w_r -= lr * g_r / sqrt(a_r + eps)``.
  - :func:`adagrad`: element-wise Adagrad with optax's rule (``optax.adagrad``: ``a += g^2``,
    ``w -= lr * g / sqrt(a + eps)``, ``a_0 = 0.1``). Rows a step does not touch have a zero gradient in
    the dense rule, which leaves them unchanged, so this equals ``optax.adagrad`` on the whole table
    exactly (up to float summation order), tested; so does :func:`rowwise_adagrad` its dense form
    :func:`rowwise_adagrad_dense`.
  - :func:`lazy_adam` (TF ``LazyAdam``, ``torch.optim.SparseAdam``): Adam (Kingma & Ba 2015, Alg. 1, in
    optax's form ``m_hat / (sqrt(v_hat) + eps)``) on the touched rows only; untouched rows and their
    moments stay as they are. The bias correction uses the table's global step count (as both
    references). This is NOT dense Adam: dense Adam keeps moving a row with its momentum after the row
    stops being touched; on a step that touches every row the two agree exactly.

* **the learner** (:func:`row_sparse_learner`): no dense ``[rows, d]`` gradient is ever formed. For each
  *group* of ids (e.g. users; items) the batch's ids are deduplicated into ``k`` slots
  (``k = min(n, rows + 1)``, ``n`` the number of id slots the group's batch fields hold: static), the
  group's tables are gathered into compact ``[k, ...]`` tables, the batch's ids are replaced by their
  positions in the compact tables, and the model's own loss is differentiated with respect to the
  compact tables (autodiff sums the duplicates). The model sees an ordinary (smaller) table:
  ``make_loss(sizes)`` returns the model's unchanged loss for tables of ``sizes[group] = k`` rows (for a
  Flax model, ``module.clone(num_users=...)``).
  Parameters that are not tables (an MLP, a global bias, small tables one prefers dense) go through an
  optax transform as in :func:`jaxrec.train.learner.gradient_learner`. The state is a
  :class:`jaxrec.train.state.TrainState`, so ``loop.train``, checkpoints and resume work unchanged.

Departures: learning rates are constants (no schedule); no weight decay (put an L2 on the looked-up rows in
the loss if needed, as lazily regularised production embeddings do); ids must lie in ``[0, rows)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from jaxrec.train import learner as learner_lib
from jaxrec.train import state as state_lib

Array = jax.Array
Params = Any
Batch = Mapping[str, Any]
LossFn = Callable[[Params, Batch, Array], Tuple[Array, Mapping[str, Array]]]


# -- row-sparse optimizers -----------------------------------------------------------------------------


class RowOptimizer(NamedTuple):
  """A row-sparse optimizer for one table ``[rows, ...]``.

  Attributes:
    init: ``init(table) -> state``.
    update: ``update(table, state, ids [n], row_grads [n, ...], mask [n] or None) -> (table, state)``;
      duplicate ids are summed, masked entries ignored (:func:`dedup`).
    update_unique: the same on distinct ``rows [n]`` with a ``valid [n]`` mask (what :func:`dedup` returns
      and what :func:`row_sparse_learner` passes); an invalid slot moves nothing.
  """

  init: Callable[[Array], Any]
  update: Callable[..., Tuple[Array, Any]]
  update_unique: Callable[[Array, Any, Array, Array, Array], Tuple[Array, Any]]


def unique_rows(ids: Array, mask: Optional[Array], num_rows: int) -> Tuple[Array, Array, Array]:
  """Distinct ids in a fixed-size array: ``(rows [k], inverse [n], valid [k])`` for ``ids [n]``,
  ``k = min(n, num_rows + 1)``.

  Masked ids become ``num_rows`` (out of range) before ``jnp.unique(size=k, fill_value=num_rows)``, so
  ``rows`` holds the distinct real ids in increasing order then ``num_rows`` fill slots; ``valid`` is
  ``rows < num_rows`` and ``rows[inverse] == ids`` where ``mask``.
  """
  ids = jnp.asarray(ids, jnp.int32).reshape(-1)
  if mask is not None:
    ids = jnp.where(jnp.asarray(mask).reshape(-1), ids, num_rows)
  # At most num_rows distinct real ids plus the fill value: a small table needs no more slots.
  size = min(ids.shape[0], num_rows + 1)
  rows, inverse = jnp.unique(ids, size=size, fill_value=num_rows, return_inverse=True)
  return rows.astype(jnp.int32), inverse.reshape(-1).astype(jnp.int32), rows < num_rows


def dedup(ids: Array, row_grads: Array, mask: Optional[Array], num_rows: int):
  """``(rows [n], summed_grads [n, ...], valid [n])``: the gradients of duplicate ids summed."""
  rows, inverse, valid = unique_rows(ids, mask, num_rows)
  g = row_grads
  if mask is not None:
    m = jnp.asarray(mask).reshape((-1,) + (1,) * (g.ndim - 1))
    g = jnp.where(m, g, 0)
  summed = jax.ops.segment_sum(g, inverse, num_segments=rows.shape[0])
  return rows, summed, valid


def _gather(x: Array, rows: Array) -> Array:
  return x.at[rows].get(mode="fill", fill_value=0)


def _scatter(x: Array, rows: Array, valid: Array, values: Array) -> Array:
  """``x[rows[valid]] = values[valid]``; other slots dropped (their index is moved out of range)."""
  return x.at[jnp.where(valid, rows, x.shape[0])].set(values.astype(x.dtype), mode="drop")


def _row_mean(g: Array) -> Array:
  return jnp.mean(jnp.square(g), axis=tuple(range(1, g.ndim))) if g.ndim > 1 else jnp.square(g)


def _expand(a: Array, like: Array) -> Array:
  return a.reshape(a.shape + (1,) * (like.ndim - a.ndim))


def _make(init, update_unique) -> RowOptimizer:
  def update(table, state, ids, row_grads, mask=None):
    rows, g, valid = dedup(ids, row_grads, mask, table.shape[0])
    return update_unique(table, state, rows, g, valid)

  return RowOptimizer(init=init, update=update, update_unique=update_unique)


class AdagradState(NamedTuple):
  """Adagrad accumulator: ``[rows]`` (row-wise) or the table's shape (element-wise)."""

  sum_of_squares: Array


def _adagrad(learning_rate: float, initial_accumulator_value: float, eps: float, rowwise: bool):
  if initial_accumulator_value < 0:
    raise ValueError(f"initial_accumulator_value must be >= 0, got {initial_accumulator_value}")

  def init(table):
    shape = table.shape[:1] if rowwise else table.shape
    return AdagradState(jnp.full(shape, initial_accumulator_value, table.dtype))

  def update_unique(table, state, rows, g, valid):
    acc = _gather(state.sum_of_squares, rows) + (_row_mean(g) if rowwise else jnp.square(g))
    scale = jnp.where(acc > 0, jax.lax.rsqrt(acc + eps), 0.0)  # optax.scale_by_rss's rule
    w = _gather(table, rows) - learning_rate * g * (_expand(scale, g) if rowwise else scale)
    return _scatter(table, rows, valid, w), AdagradState(_scatter(state.sum_of_squares, rows, valid, acc))

  return _make(init, update_unique)


def rowwise_adagrad(learning_rate: float, initial_accumulator_value: float = 0.1,
                    eps: float = 1e-7) -> RowOptimizer:
  """Row-wise Adagrad: one accumulator per row (FBGEMM ``EXACT_ROWWISE_ADAGRAD``; TPU embedding
  ``row-wise Adagrad``), ``a_r += mean_k g_{r,k}^2``, ``w_r -= lr * g_r / sqrt(a_r + eps)``.

  The defaults follow ``optax.adagrad`` (``a_0 = 0.1``, ``eps`` inside the root) rather than FBGEMM's
  ``a_0 = 0``, ``lr / (sqrt(a) + eps)``, so that one table's row-wise and element-wise runs differ only
  in the accumulator. Memory: one float per row instead of ``d``.
  """
  return _adagrad(learning_rate, initial_accumulator_value, eps, rowwise=True)


def adagrad(learning_rate: float, initial_accumulator_value: float = 0.1, eps: float = 1e-7) -> RowOptimizer:
  """Element-wise Adagrad on the touched rows: the same results as ``optax.adagrad`` on the whole table."""
  return _adagrad(learning_rate, initial_accumulator_value, eps, rowwise=False)


class LazyAdamState(NamedTuple):
  """Adam moments of every row (only touched rows ever change) and the table's step count."""

  count: Array
  mu: Array
  nu: Array


def lazy_adam(learning_rate: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> RowOptimizer:
  """Lazy Adam (TF ``LazyAdam``, ``torch.optim.SparseAdam``) on the touched rows::

      t += 1;  m_r = b1 m_r + (1 - b1) g_r;  v_r = b2 v_r + (1 - b2) g_r^2
      w_r -= lr * (m_r / (1 - b1^t)) / (sqrt(v_r / (1 - b2^t)) + eps)        (rows r touched at step t)

  ``optax.adam``'s arithmetic on those rows; every other row and its moments stay unchanged.
  """

  def init(table):
    return LazyAdamState(count=jnp.zeros((), jnp.int32), mu=jnp.zeros_like(table), nu=jnp.zeros_like(table))

  def update_unique(table, state, rows, g, valid):
    count = optax.safe_increment(state.count)
    mu = b1 * _gather(state.mu, rows) + (1.0 - b1) * g
    nu = b2 * _gather(state.nu, rows) + (1.0 - b2) * jnp.square(g)
    mu_hat = mu / (1.0 - b1 ** count.astype(mu.dtype))
    nu_hat = nu / (1.0 - b2 ** count.astype(nu.dtype))
    w = _gather(table, rows) - learning_rate * mu_hat / (jnp.sqrt(nu_hat) + eps)
    return _scatter(table, rows, valid, w), LazyAdamState(
        count=count, mu=_scatter(state.mu, rows, valid, mu), nu=_scatter(state.nu, rows, valid, nu))

  return _make(init, update_unique)


def rowwise_adagrad_dense(learning_rate: float, initial_accumulator_value: float = 0.1,
                          eps: float = 1e-7) -> optax.GradientTransformation:
  """:func:`rowwise_adagrad` as a dense optax transform over whole tables (leaves ``[rows, ...]``): the
  reference the sparse path must match, and the dense path for small tables."""

  def init(params):
    return AdagradState(jax.tree.map(
        lambda p: jnp.full(p.shape[:1], initial_accumulator_value, p.dtype), params))

  def update(updates, state, params=None):
    del params
    acc = jax.tree.map(lambda g, a: a + _row_mean(g), updates, state.sum_of_squares)
    out = jax.tree.map(
        lambda g, a: -learning_rate * g * _expand(jnp.where(a > 0, jax.lax.rsqrt(a + eps), 0.0), g),
        updates, acc)
    return out, AdagradState(acc)

  return optax.GradientTransformation(init, update)


OPTIMIZERS = {"lazy-adam": lazy_adam, "rowwise-adagrad": rowwise_adagrad, "adagrad": adagrad}


def get(name: str, learning_rate: float, **kwargs) -> RowOptimizer:
  """The row optimizer registered as ``name`` (:data:`OPTIMIZERS`)."""
  if name not in OPTIMIZERS:
    raise ValueError(f"unknown row-sparse optimizer {name!r}; expected one of {sorted(OPTIMIZERS)}")
  return OPTIMIZERS[name](learning_rate, **kwargs)


# -- the learner ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RowLookups:
  """Which batch fields index which tables.

  Attributes:
    groups: ``((group, (batch fields holding its ids, ...)), ...)``, e.g.
      ``(("user", ("user",)), ("item", ("positive", "negatives")))``; each field an int array whose
      leading axis is the batch's.
    tables: ``((param path, group), ...)``: the tables updated row-sparsely, a path being the
      ``/``-joined keys of a dict pytree (``"params/user_emb/embedding"``). All tables of a group have
      the same number of rows. Every other parameter is dense.
    batch_tables: ``((batch field, group), ...)``: per-row arrays carried in the batch (e.g. 2TS's
      ``"item_features"`` ``[I, f]``), gathered into their compact form alongside the tables.
    mask: the batch field ``[B]`` marking real examples (None, or a batch without that field: all real).
      Ids of masked examples touch nothing (they still index a compact row for the loss, which must give
      them no weight).
  """

  groups: Tuple[Tuple[str, Tuple[str, ...]], ...]
  tables: Tuple[Tuple[str, str], ...]
  batch_tables: Tuple[Tuple[str, str], ...] = ()
  mask: Optional[str] = "mask"

  def __post_init__(self):
    known = {g for g, _ in self.groups}
    for path, g in self.tables + self.batch_tables:
      if g not in known:
        raise ValueError(f"RowLookups: {path!r} names group {g!r}; groups are {sorted(known)}")


def _path(p: str) -> Tuple[str, ...]:
  return tuple(p.split("/"))


def row_sparse_learner(make_loss: Callable[[Mapping[str, int]], LossFn], lookups: RowLookups,
                       row_opt: RowOptimizer, dense_tx: Optional[optax.GradientTransformation] = None,
                       prepare: Optional[Callable[[Params, Batch, Array], Batch]] = None
                       ) -> learner_lib.Learner:
  """A :class:`~jaxrec.train.learner.Learner` whose tables are updated by ``row_opt`` row-sparsely.

  One update: ``batch = prepare(params, batch, rng)`` (e.g. negatives sampled from the full table's
  size); per group, the distinct ids of the unmasked examples (:func:`unique_rows`, ``k`` slots); the
  compact tables ``table[rows]``; ``loss, grads = value_and_grad(make_loss(sizes))`` at the compact
  tables, the dense parameters and the batch with ids replaced by compact positions; then
  ``row_opt.update_unique`` on each table and ``dense_tx`` on the rest. Metrics as
  :func:`~jaxrec.train.learner.gradient_learner` (``grad_norm`` is the norm of the dense-equivalent
  gradient: fill slots excluded, duplicates summed).

  Args:
    make_loss: ``make_loss({group: k}) -> loss_fn(params, batch, rng) -> (loss, aux)``, the model's loss
      for tables of ``k`` rows (called at trace time; ``k`` is static).
    lookups: :class:`RowLookups`.
    row_opt: the tables' optimizer (:func:`lazy_adam`, :func:`rowwise_adagrad`, :func:`adagrad`).
    dense_tx: the optimizer of the other parameters (required when there are any).
    prepare: optional ``(params, batch, rng) -> batch`` run first inside the step.

  The state is a :class:`~jaxrec.train.state.TrainState` with ``opt_state = {"rows": <row states nested
  like the tables>, "dense": <dense_tx state>}``.
  """
  table_paths = {_path(p): g for p, g in lookups.tables}

  def split(params):
    flat = traverse_util.flatten_dict(params)
    missing = set(table_paths) - set(flat)
    if missing:
      raise ValueError(f"row_sparse_learner: no parameter at {sorted('/'.join(m) for m in missing)}")
    tables = {k: v for k, v in flat.items() if k in table_paths}
    dense = {k: v for k, v in flat.items() if k not in table_paths}
    if dense and dense_tx is None:
      raise ValueError(f"row_sparse_learner: dense parameters {sorted('/'.join(k) for k in dense)} "
                       "need a dense_tx")
    return tables, dense

  def init(params, rng):
    del rng
    params = jax.tree.map(lambda x: jnp.array(x, copy=True), params)
    tables, dense = split(params)
    rows = traverse_util.unflatten_dict({k: row_opt.init(v) for k, v in tables.items()})
    dense_state = dense_tx.init(dense) if dense_tx is not None else ()
    return state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                opt_state={"rows": rows, "dense": dense_state})

  def update(state, batch, rng):
    tables, dense = split(state.params)
    batch = dict(batch)
    if prepare is not None:
      batch = dict(prepare(state.params, batch, rng))
    num_rows = {}
    for path, g in table_paths.items():
      r = tables[path].shape[0]
      if num_rows.setdefault(g, r) != r:
        raise ValueError(f"row_sparse_learner: tables of group {g!r} have {num_rows[g]} and {r} rows")
    for field, g in lookups.batch_tables:
      if field in batch:
        num_rows.setdefault(g, batch[field].shape[0])
    mask = None if batch.get(lookups.mask) is None else jnp.asarray(batch[lookups.mask])
    rows, valid, sizes = {}, {}, {}
    for g, names in lookups.groups:
      if g not in num_rows:
        raise ValueError(f"row_sparse_learner: group {g!r} indexes no table")
      ids = [jnp.asarray(batch[f]) for f in names]
      flat_ids = jnp.concatenate([i.reshape(-1) for i in ids])
      flat_mask = None if mask is None else jnp.concatenate(
          [jnp.broadcast_to(mask.reshape(mask.shape + (1,) * (i.ndim - 1)), i.shape).reshape(-1)
           for i in ids])
      if flat_ids.shape[0] > num_rows[g]:
        # More id slots than rows (a small table, e.g. the items under many sampled negatives): the k =
        # rows + 1 slots unique_rows would give are the whole table, so its sort buys nothing. The compact
        # table is the table plus the fill row (masked ids), a row valid when an unmasked id touches it.
        rows[g] = jnp.arange(num_rows[g] + 1, dtype=jnp.int32)
        inverse = flat_ids.astype(jnp.int32)
        if flat_mask is not None:
          inverse = jnp.where(flat_mask, inverse, num_rows[g])
        valid[g] = jnp.zeros(num_rows[g] + 1, bool).at[inverse].set(True).at[num_rows[g]].set(False)
      else:
        rows[g], inverse, valid[g] = unique_rows(flat_ids, flat_mask, num_rows[g])
      sizes[g] = int(rows[g].shape[0])
      start = 0
      for f, i in zip(names, ids):
        batch[f] = inverse[start:start + i.size].reshape(i.shape)
        start += i.size
    for field, g in lookups.batch_tables:
      if field in batch:
        batch[field] = _gather(jnp.asarray(batch[field]), rows[g])
    compact = {k: _gather(v, rows[table_paths[k]]) for k, v in tables.items()}
    loss_fn = make_loss(sizes)

    def objective(compact, dense):
      params = traverse_util.unflatten_dict({**compact, **dense})
      return loss_fn(params, batch, rng)

    (loss, aux), (g_rows, g_dense) = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)(
        compact, dense)
    new_flat, row_states = {}, traverse_util.flatten_dict(
        state.opt_state["rows"], is_leaf=lambda _, x: not isinstance(x, dict))
    for k, table in tables.items():
      g = table_paths[k]
      new_flat[k], row_states[k] = row_opt.update_unique(table, row_states[k], rows[g], g_rows[k], valid[g])
    dense_state = state.opt_state["dense"]
    if dense:
      updates, dense_state = dense_tx.update(g_dense, dense_state, dense)
      new_flat.update(optax.apply_updates(dense, updates))
    masked_rows = {k: jnp.where(_expand(valid[table_paths[k]], v), v, 0) for k, v in g_rows.items()}
    grad_norm = optax.global_norm((masked_rows, g_dense))
    metrics = dict(aux)
    metrics.update(loss=loss, grad_norm=grad_norm, is_finite=jnp.isfinite(loss) & jnp.isfinite(grad_norm))
    opt_state = {"rows": traverse_util.unflatten_dict(row_states), "dense": dense_state}
    return state.replace(step=state.step + 1, params=traverse_util.unflatten_dict(new_flat),
                         opt_state=opt_state), metrics

  return learner_lib.Learner(init=init, update=update, params=lambda s: s.params)
