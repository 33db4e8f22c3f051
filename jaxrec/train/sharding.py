"""Sharded training: embedding tables by rows on a model axis, batches on a data axis, one code path.

A recommender's state is dominated by its embedding tables (and, for Adam, two moments of the same
size). This module places them across a device mesh with ``jax.sharding`` and leaves the model math
alone: the learner's own ``update`` (:mod:`jaxrec.train.learner`, dense optax or the row-sparse
:mod:`jaxrec.train.sparse` optimizers) runs unchanged under ``jax.jit``; XLA's sharding propagation
(GSPMD) partitions it from the shardings of its inputs and the constraints put on its state::

    mesh = sharding.make_mesh(data=2, model=2)                 # 2 x 2 devices
    plan = sharding.ShardingPlan(mesh, tables=("params/user_emb/embedding", "params/item_emb/embedding"))
    learner = sharding.shard_learner(learner, plan, params)    # same Learner contract
    state = learner.init(params, rng)                          # tables + their optimizer state sharded
    state, history = loop.train(cfg, learner, state, plan.batches(batches_fn), rng=rng)

* **Mesh** (:func:`make_mesh`): ``("data", "model")`` axes over the devices (of every process), with
  ``AxisType.Auto`` axes (sharding propagation, not JAX's explicit-sharding types, so that the models'
  gathers and scatters need no sharding annotations).
* **State** (:meth:`ShardingPlan.state_shardings`): every leaf of the learner's state that belongs to a
  table, i.e. whose key path contains the table's parameter path and whose leading dimension is the
  table's row count (the table itself, optax's ``mu``/``nu`` of it, ``sparse.lazy_adam``'s moments,
  ``sparse.rowwise_adagrad``'s ``[rows]`` accumulator), is split by rows over ``"model"``
  (``P("model")``) and replicated over ``"data"``; every other leaf (MLPs, counters, biases) is
  replicated. A row count that the model axis does not divide is padded: the state holds the table
  with zero rows appended up to a multiple of the axis (JAX arrays must split evenly), and the
  learner's update sees the table cut back to its rows, so ids, sampling ranges (2TS draws offer sets
  from ``params["item"].shape[0]``), losses and the served params are the unpadded ones; the padding
  rows are carried over unchanged and no row is ever dropped (tested with 50 and 30 rows on 4 devices).
* **Batches** (:meth:`ShardingPlan.batch_shardings`, :meth:`ShardingPlan.batches`): each field's leading
  axis over ``"data"`` when the data axis divides it, the fields named in ``replicated`` (per-row arrays
  such as 2TS's ``item_features``) and scalars replicated. With several processes each host's
  ``batches_fn`` yields its own slice of the global batch, assembled by
  ``jax.make_array_from_process_local_data``.
* **Learner** (:func:`shard_learner`): ``init`` places the state; ``update`` constrains the state and
  the batch to those shardings on entry and the new state on exit
  (``jax.lax.with_sharding_constraint``), so the output state has the input's shardings: the donated
  buffers are reused and the second step compiles nothing. Shardings change where values live, never
  which values are computed: 1 and 4 devices give the same parameters up to float summation order
  (tested, ``tests/test_sharding.py``).
* **Hosts** (:func:`initialize_distributed`): ``jax.distributed.initialize`` (the coordinator of
  multi-process JAX), called once per process before anything touches a device; the mesh then spans
  every process's devices and each process feeds its slice of the batch. Tested with 2 local
  processes of 2 CPU devices (gloo collectives) against 1 process of 4 devices.

Departures: partitioning is left to GSPMD (no hand-written all-to-all of looked-up rows as in TorchRec /
TPU embedding). On a row-sharded table XLA compiles a lookup as a local masked gather on each shard plus
one all-reduce of the gathered ``[k, d]`` rows, and the (sparse or dense) update as a local write: with
the tables on the model axis alone the step moves O(batch x d) bytes, never a table
(``benchmarks/bench_sharding.py``; a data axis > 1 adds dense Adam's all-reduce of the table gradient).
A padded table is cut and re-joined inside the step, which XLA compiles as a resharding of the whole
table (all-to-all): measured with 100,001 users on 1 x 4 devices, lazy Adam moves 20.8 MB a step
instead of 1.6 MB at 100,000 users. Padding is for correctness; choose row counts the model axis
divides (a warning names the padded tables).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Tuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jaxrec.train import learner as learner_lib

PyTree = Any
Batch = Mapping[str, Any]

DATA, MODEL = "data", "model"


class MeshError(ValueError):
  """A mesh shape that does not fit the devices (one-line message naming the sizes)."""


def make_mesh(data: int = 1, model: int = -1, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A ``(data, model)`` mesh with axes ``("data", "model")`` over ``devices`` (default: all devices).

  Args:
    data: size of the data axis (batches are split over it); ``-1``: what the devices leave.
    model: size of the model axis (table rows are split over it); ``-1``: what the devices leave.
    devices: the devices (default ``jax.devices()``, i.e. every process's); ``data * model`` must be their
      number.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if data == -1 and model == -1:
    raise MeshError("make_mesh: at most one of data, model may be -1")
  if data == -1:
    data = n // model if model > 0 and n % model == 0 else 0
  if model == -1:
    model = n // data if data > 0 and n % data == 0 else 0
  if data < 1 or model < 1 or data * model != n:
    raise MeshError(f"make_mesh: data x model must equal the {n} devices, got data={data}, model={model}")
  axis_types = (AxisType.Auto, AxisType.Auto)
  if devices == list(jax.devices()):
    return jax.make_mesh((data, model), (DATA, MODEL), axis_types=axis_types)
  return Mesh(np.asarray(devices, dtype=object).reshape(data, model), (DATA, MODEL), axis_types=axis_types)


def initialize_distributed(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
                           process_id: Optional[int] = None, **kwargs) -> bool:
  """Starts multi-process JAX (``jax.distributed.initialize``) when asked to; returns whether it did.

  Call it once per process, first thing (before any array is created). With no argument and
  ``num_processes`` unset it does nothing (a single process: the one-host path, what every test runs).
  Pass ``coordinator_address="auto"`` to let JAX detect the cluster (SLURM, Open MPI, TPU pods);
  otherwise every process gets the same ``coordinator_address`` (``host:port`` of process 0) and
  ``num_processes`` and its own ``process_id``. ``kwargs`` go to ``jax.distributed.initialize``
  (``local_device_ids``, ``initialization_timeout``, ...).
  """
  if coordinator_address is None and num_processes in (None, 1):
    return False
  if coordinator_address == "auto":
    coordinator_address = None
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id, **kwargs)
  return True


def _names(path) -> Tuple[str, ...]:
  out = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        out.append(str(getattr(k, attr)))
        break
  return tuple(out)


def _contains(names: Tuple[str, ...], sub: Tuple[str, ...]) -> bool:
  return any(names[i:i + len(sub)] == sub for i in range(len(names) - len(sub) + 1))


@dataclasses.dataclass(frozen=True)
class ShardingPlan:
  """Where a learner's state and batches live on ``mesh`` (hashable: one compiled step per plan).

  Attributes:
    mesh: a mesh with axes ``data_axis`` and ``model_axis`` (:func:`make_mesh`).
    tables: ``/``-joined parameter paths of the tables to shard by rows (as
      :class:`jaxrec.train.sparse.RowLookups` ``tables``: ``"params/user_emb/embedding"``, ``"user"``).
    replicated: batch fields kept whole on every device (per-row arrays carried in the batch).
    data_axis, model_axis: the mesh axis names.
  """

  mesh: Mesh
  tables: Tuple[str, ...]
  replicated: Tuple[str, ...] = ()
  data_axis: str = DATA
  model_axis: str = MODEL

  def __post_init__(self):
    object.__setattr__(self, "tables", tuple(self.tables))
    object.__setattr__(self, "replicated", tuple(self.replicated))
    for axis in (self.data_axis, self.model_axis):
      if axis not in self.mesh.axis_names:
        raise MeshError(f"ShardingPlan: mesh axes are {self.mesh.axis_names}, which lack {axis!r}")

  def _sharding(self, spec: P) -> NamedSharding:
    return NamedSharding(self.mesh, spec)

  def table_rows(self, params: PyTree) -> Tuple[Tuple[Tuple[str, ...], int], ...]:
    """``((path tuple, rows), ...)`` of the plan's tables in ``params`` (arrays or
    ``jax.ShapeDtypeStruct``); a missing path raises naming it."""
    flat = {_names(p): np.shape(x) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    rows = []
    for t in self.tables:
      key = tuple(t.split("/"))
      if key not in flat or not flat[key]:
        raise ValueError(f"ShardingPlan: no table (array of rank >= 1) at parameter path {t!r}")
      rows.append((key, int(flat[key][0])))
    return tuple(rows)

  def padded(self, rows: int) -> int:
    """``rows`` rounded up to a multiple of the model axis (what a sharded table holds)."""
    m = self.mesh.shape[self.model_axis]
    return -(-rows // m) * m

  def state_shardings(self, state: PyTree, rows: Mapping[Tuple[str, ...], int]) -> PyTree:
    """A ``NamedSharding`` per leaf of ``state``: leaves of the tables (``{path: rows}``) ``P(model)``,
    the rest replicated."""
    # An axis of size 1 is written P(): XLA returns it so, and an equal spelling keeps one compiled step.
    whole = self._sharding(P())
    shard = self._sharding(P(self.model_axis)) if self.mesh.shape[self.model_axis] > 1 else whole
    return jax.tree_util.tree_map_with_path(
        lambda path, x: shard if _table_of(path, x, rows) is not None else whole, state)

  def batch_shardings(self, batch: Batch) -> dict:
    """A ``NamedSharding`` per field: leading axis over the data axis where it divides it."""
    size = self.mesh.shape[self.data_axis]

    def spec(k, x):
      shape = np.shape(x)
      if k in self.replicated or not shape or size == 1 or shape[0] % size:
        return self._sharding(P())
      return self._sharding(P(self.data_axis))

    return {k: jax.tree.map(functools.partial(spec, k), v) for k, v in batch.items()}

  def put_batch(self, batch: Batch) -> dict:
    """``batch`` as global arrays on the mesh; with several processes, each passes its local slice."""
    shardings = self.batch_shardings(batch)
    if jax.process_count() == 1:
      return jax.device_put(dict(batch), shardings)
    return {k: jax.tree.map(jax.make_array_from_process_local_data, shardings[k], v)
            for k, v in batch.items()}

  def batches(self, batches_fn: Callable[[int], Iterable[Batch]]) -> Callable[[int], Iterable[Batch]]:
    """``batches_fn`` whose batches are placed by :meth:`put_batch` (keeps ``len``)."""
    return functools.partial(_PlacedBatches, self, batches_fn)


class _PlacedBatches:
  """``batches_fn(epoch)`` with every batch placed on the mesh; iterable, with ``len`` when it has one."""

  def __init__(self, plan: ShardingPlan, batches_fn, epoch: int):
    self.plan, self.inner = plan, batches_fn(epoch)

  def __iter__(self):
    return (self.plan.put_batch(b) for b in self.inner)

  def __len__(self):
    return len(self.inner)


def _table_of(path, x, rows: Mapping[Tuple[str, ...], int]) -> Optional[Tuple[str, ...]]:
  """The table (of ``rows``: ``{path: rows}``) that leaf ``x`` at ``path`` belongs to, or None."""
  names, shape = _names(path), np.shape(x)
  for key, r in rows.items():
    if shape and shape[0] == r and _contains(names, key):
      return key
  return None


def constrain(tree: PyTree, shardings: PyTree) -> PyTree:
  """``jax.lax.with_sharding_constraint`` over a pytree (inside a traced function)."""
  return jax.tree.map(jax.lax.with_sharding_constraint, tree, shardings)


def _pad(state, logical: dict, padded: dict):
  """Table leaves of ``state`` (``logical`` rows) extended by zero rows to their ``padded`` rows."""

  def leaf(path, x):
    key = _table_of(path, x, logical)
    if key is None or padded[key] == logical[key]:
      return x
    return jnp.concatenate([x, jnp.zeros((padded[key] - logical[key],) + x.shape[1:], x.dtype)])

  return jax.tree_util.tree_map_with_path(leaf, state)


def _unpad(state, logical: dict, padded: dict):
  """Table leaves of ``state`` (``padded`` rows) cut to their ``logical`` rows."""
  def leaf(path, x):
    key = _table_of(path, x, padded)
    return x if key is None or padded[key] == logical[key] else x[:logical[key]]

  return jax.tree_util.tree_map_with_path(leaf, state)


def _repad(new, old, logical: dict, padded: dict):
  """``new``'s table leaves (logical rows) followed by ``old``'s padding rows, unchanged."""
  def leaf(path, o, n):
    key = _table_of(path, o, padded)
    if key is None or padded[key] == logical[key]:
      return n
    return jnp.concatenate([n, o[logical[key]:]])

  return jax.tree_util.tree_map_with_path(leaf, old, new)


@functools.lru_cache(maxsize=None)
def _sharded(learner: learner_lib.Learner, plan: ShardingPlan, rows: tuple) -> learner_lib.Learner:
  logical = dict(rows)
  padded = {k: plan.padded(r) for k, r in rows}
  pad_needed = padded != logical
  for key, r in logical.items():
    if padded[key] != r:
      logging.warning("sharding: table %s has %d rows, padded to %d for %d shards; the step reshards it "
                      "(a row count divisible by the model axis avoids that)", "/".join(key), r,
                      padded[key], plan.mesh.shape[plan.model_axis])

  def init(params, rng):
    state = _pad(learner.init(params, rng), logical, padded)
    return jax.device_put(state, plan.state_shardings(state, padded))

  def update(state, batch, rng):
    shardings = plan.state_shardings(state, padded)
    state = constrain(state, shardings)
    batch = constrain(dict(batch), plan.batch_shardings(batch))
    inner = _unpad(state, logical, padded) if pad_needed else state
    new_state, metrics = learner.update(inner, batch, rng)
    if pad_needed:
      new_state = _repad(new_state, state, logical, padded)
    return constrain(new_state, shardings), metrics

  def params(state):
    served = learner.params(state)
    return _unpad(served, logical, padded) if pad_needed else served

  return learner_lib.Learner(init=init, update=update, params=params)


def shard_learner(learner: learner_lib.Learner, plan: ShardingPlan, params: PyTree) -> learner_lib.Learner:
  """``learner`` with its state sharded by ``plan``: the same ``init``/``update``/``params`` contract.

  ``params``: the served parameters (arrays or ``jax.ShapeDtypeStruct``s), where the tables' row counts
  are read. ``init`` returns the state placed on the mesh (tables zero-padded to a multiple of the model
  axis where needed); ``update`` is the learner's own update between sharding constraints, on the
  tables cut back to their rows (the model never sees a padding row: sampling ranges, losses and ids
  are the unpadded ones), the padding rows carried over unchanged; ``params`` serves the unpadded
  tables. Cached on ``(learner, plan, row counts)``, so :func:`jaxrec.train.learner.jit_update` compiles
  one step per learner and plan across runs. A mesh of one device runs the same code as the unsharded
  learner.
  """
  return _sharded(learner, plan, plan.table_rows(params))


def describe(state: PyTree) -> dict:
  """``{key path: (global shape, spec, shard shapes)}`` of a placed state: what is sharded, and how."""
  out = {}
  for path, x in jax.tree_util.tree_flatten_with_path(state)[0]:
    if isinstance(x, jax.Array):
      spec = getattr(x.sharding, "spec", None)
      out["/".join(_names(path))] = (tuple(x.shape), spec,
                                      sorted({tuple(s.data.shape) for s in x.addressable_shards}))
  return out
