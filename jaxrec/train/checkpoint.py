"""Checkpointing of a `TrainState` plus JSON metadata, a thin wrapper over Orbax.

Each checkpoint step directory holds two Orbax items: `state` (the pytree, `StandardSave`) and
`meta` (a small JSON dict, `JsonSave`, e.g. the loop position, plus the state's leaf shapes and
dtypes under `"_structure"`). Retention: the `keep_latest` (default 2) latest checkpoints and the
best one by a validation metric are kept, all others are deleted
(`AnyPreservationPolicy([LatestN(keep_latest), BestN(1)])`).

Damage: :meth:`Checkpointer.restore_latest_good` restores the newest readable checkpoint, warning
about (and skipping) any newer one that cannot be read, e.g. a truncated data file; a skipped step
is replaced when the run saves that step again. When none is readable it raises
:class:`CheckpointError`, and a state of other shapes than the checkpoint's (another dataset or
model) raises :class:`ConfigMismatchError` before Orbax sees it; both carry one-line messages
saying how to start over.

Atomicity: Orbax writes a step into `<dir>/<step>.orbax-checkpoint-tmp*` and, once every file is
written, finalizes it with one atomic `rename` to `<dir>/<step>` (`AtomicRenameTemporaryPath`, the
default for non-GCS paths, see `orbax/checkpoint/_src/path/atomicity_defaults.py` and
`atomicity.py:AtomicRenameTemporaryPath.finalize`). Step
discovery (`all_steps`/`latest_step`) only lists finalized names, so a kill during a save leaves a
tmp directory that is never restored from; the previous checkpoint stays the latest. Saves are
asynchronous (the arrays are first copied to host memory, so the train step may donate the state
right after `save` returns); `wait()`/`close()` block until they are finalized.
"""

from __future__ import annotations

import copy

import math
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

PyTree = Any

_STRUCTURE = "_structure"


class CheckpointError(ValueError):
  """No checkpoint of a workdir can be read, or the workdir is unusable (one-line message)."""


class ConfigMismatchError(ValueError):
  """A workdir holds a run of another configuration than the one asked for (one-line message)."""


def structure(tree: PyTree) -> Dict[str, List[Any]]:
  """``{leaf path: [shape, dtype]}`` of a pytree (of arrays or ``ShapeDtypeStruct`` s)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(k): [list(np.shape(v)), str(np.dtype(v.dtype))] for k, v in leaves}


def _first_difference(saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
  for key in sorted(set(saved) | set(wanted)):
    a, b = saved.get(key), wanted.get(key)
    if a != b:
      show = lambda v: "absent" if v is None else f"{tuple(v[0])} {v[1]}"
      return f"{key or 'state'}: checkpoint {show(a)}, this run {show(b)}"
  return ""


def abstract_like(tree: PyTree) -> PyTree:
  """`jax.ShapeDtypeStruct` target (with shardings) for restoring a pytree shaped like `tree`."""
  def leaf(x):
    sharding = getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)
  return jax.tree.map(leaf, tree)


def commit(tree: PyTree) -> PyTree:
  """``tree`` with every leaf committed to the device(s) it is on, as a restored checkpoint is.

  A jitted function compiles once for uncommitted and once more for committed arguments. The stream
  loop commits its state (so fresh and resumed runs share one signature), and a strategy whose ``init``
  runs the stream's compiled update over an offline prefix commits its state first, so the stream reuses
  that compilation instead of compiling the same step again.
  """
  return jax.device_put(tree, jax.tree.map(lambda a: a.sharding, abstract_like(tree)))


def _rank_key(metrics: Mapping[str, float]) -> Tuple[int, float, int]:
  # Scored checkpoints rank above unscored ones. Larger score is better and among equal scores the
  # EARLIEST step wins (as in a strict-improvement loop); among unscored ones the latest wins.
  if not metrics["has_score"]:
    return (0, 0.0, metrics["step"])
  return (1, metrics["score"], -metrics["step"])


class Checkpointer:
  """Saves and restores `(state, meta)` checkpoints in `directory`.

  Args:
    directory: root directory (created if missing).
    mode: "max" or "min": direction of the validation metric passed to `save(..., metric=...)`.
    keep_latest: number of most recent checkpoints kept besides the best one.
    async_save: write in a background thread (`wait()` to block).
  """

  def __init__(self, directory: str, *, mode: str = "max", keep_latest: int = 2, async_save: bool = True):
    if mode not in ("max", "min"):
      raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    if keep_latest < 1:
      raise ValueError(f"keep_latest must be >= 1, got {keep_latest}")
    directory = os.path.abspath(directory)  # Orbax needs absolute paths (relative --workdir is common)
    self.directory = directory
    self.mode = mode
    self.broken: List[int] = []  # steps found unreadable by restore_latest_good
    policy = ocm.AnyPreservationPolicy([
        ocm.LatestN(n=keep_latest),
        ocm.BestN(get_metric_fn=_rank_key, n=1, keep_checkpoints_without_metrics=False),
    ])
    # `best_fn` makes Orbax write each step's metrics (read back by the policy and `best_step`).
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, best_fn=_rank_key, best_mode="max",
        enable_async_checkpointing=async_save, create=True)
    self._mngr = ocp.CheckpointManager(directory, options=options)

  def save(self, step: int, state: PyTree, meta: Mapping[str, Any], metric: Optional[float] = None) -> None:
    """Saves `state` and JSON `meta` as checkpoint `step` (no-op if `step` already exists).

    Args:
      step: the step number (directory name).
      state: the pytree; copied to host memory before this returns.
      meta: a JSON-serializable dict (deep-copied here, so the caller may mutate it afterwards).
      metric: validation metric of this state, or None; only checkpoints with a finite metric
        compete for "best".
    """
    if step in self.broken:  # replace a damaged checkpoint by the re-trained one
      self._mngr.delete(step)
      self.broken.remove(step)
    if step in self._mngr.all_steps():
      return
    host_state = jax.tree.map(lambda x: np.array(x, copy=True), jax.device_get(state))
    # Every save carries metrics (Orbax warns about saves without them when tracking the best).
    metrics = {"has_score": 0, "score": 0.0, "step": int(step)}
    if metric is not None and math.isfinite(metric):
      metrics.update(has_score=1, score=float(metric) if self.mode == "max" else -float(metric))
    # Deep-copied: an asynchronous save serialises `meta` later, when the caller may have mutated it
    # (a stream appends to the records list it passed), which would pair a position with later data.
    meta = copy.deepcopy(dict(meta, **{_STRUCTURE: structure(host_state)}))
    args = ocp.args.Composite(state=ocp.args.StandardSave(host_state), meta=ocp.args.JsonSave(meta))
    self._mngr.save(step, args=args, metrics=metrics, force=True)

  def all_steps(self) -> list:
    return list(self._mngr.all_steps())

  def latest_step(self) -> Optional[int]:
    return self._mngr.latest_step()

  def best_step(self) -> Optional[int]:
    """The step with the best metric (earliest among ties), or None if no checkpoint has one."""
    ranked = [(_rank_key(m), step) for step in self._mngr.all_steps()
              if (m := self._mngr.metrics(step)) and m["has_score"]]
    return max(ranked)[1] if ranked else None

  def restore(self, step: int, abstract_state: PyTree) -> Tuple[PyTree, dict]:
    """Restores checkpoint `step` into the structure/shardings of `abstract_state`.

    Raises:
      ConfigMismatchError: the checkpoint holds a state of other leaves, shapes or dtypes.
    """
    self.check_structure(step, abstract_state)
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
    restored = self._mngr.restore(step, args=args)
    meta = dict(restored.meta)
    meta.pop(_STRUCTURE, None)
    return restored.state, meta

  def read_meta(self, step: int) -> dict:
    """The JSON meta of checkpoint `step` (with its `"_structure"`), without reading the state."""
    restored = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored.meta)

  def check_structure(self, step: int, abstract_state: PyTree) -> None:
    """Raises :class:`ConfigMismatchError` if checkpoint `step` holds a state unlike `abstract_state`."""
    try:
      saved = self.read_meta(step).get(_STRUCTURE)
    except Exception:  # pylint: disable=broad-except
      return  # an unreadable meta is the restore's to report
    if saved is None:
      return  # written before shapes were recorded
    diff = _first_difference(saved, structure(abstract_state))
    if diff:
      raise ConfigMismatchError(
          f"the checkpoint in {self.directory} (step {step}) was trained with another dataset or model "
          f"({diff}); pass another --workdir or delete {self.directory} to start over")

  def restore_latest_good(self, abstract_state: PyTree) -> Optional[Tuple[int, PyTree, dict]]:
    """`(step, state, meta)` of the newest readable checkpoint; None if there is no checkpoint.

    A newer checkpoint that cannot be read is skipped with a warning naming it (and recorded in
    :attr:`broken`, so that saving its step again replaces it).

    Raises:
      CheckpointError: there are checkpoints but none can be read.
      ConfigMismatchError: the newest checkpoint holds a state of other shapes.
    """
    steps = sorted(self._mngr.all_steps(), reverse=True)
    if not steps:
      return None
    for step in steps:
      self.check_structure(step, abstract_state)
      try:
        state, meta = self.restore(step, abstract_state)
      except ConfigMismatchError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        self.broken.append(step)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        logging.warning("checkpoint %s is unreadable (%s: %s); falling back to an earlier one",
                        f"{self.directory}/{step}", type(e).__name__, first)
        continue
      if self.broken:
        logging.warning("resuming from checkpoint %s/%d instead of the broken %s", self.directory, step,
                        ", ".join(str(b) for b in self.broken))
      return step, state, meta
    raise CheckpointError(
        f"no readable checkpoint in {self.directory} (steps {sorted(steps)} are damaged); delete "
        f"{os.path.dirname(self.directory) or self.directory} or pass another --workdir to start over")

  def restore_latest(self, abstract_state: PyTree) -> Optional[Tuple[PyTree, dict]]:
    """`(state, meta)` of the latest finalized checkpoint, or None if there is none."""
    step = self.latest_step()
    return None if step is None else self.restore(step, abstract_state)

  def restore_best(self, abstract_state: PyTree) -> Optional[Tuple[PyTree, dict]]:
    """`(state, meta)` of the best checkpoint by metric, or None if none has a metric."""
    step = self.best_step()
    return None if step is None else self.restore(step, abstract_state)

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are finalized."""
    self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
