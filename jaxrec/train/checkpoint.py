"""Checkpointing of a `TrainState` plus JSON metadata, a thin wrapper over Orbax.

Each checkpoint step directory holds two Orbax items: `state` (the pytree, `StandardSave`) and
`meta` (a small JSON dict, `JsonSave`, e.g. the loop position). Retention: the latest checkpoint
and the best one by a validation metric are kept, all others are deleted
(`AnyPreservationPolicy([LatestN(keep_latest), BestN(1)])`).

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

import math
from typing import Any, Mapping, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

PyTree = Any


def abstract_like(tree: PyTree) -> PyTree:
  """`jax.ShapeDtypeStruct` target (with shardings) for restoring a pytree shaped like `tree`."""
  def leaf(x):
    sharding = getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)
  return jax.tree.map(leaf, tree)


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

  def __init__(self, directory: str, *, mode: str = "max", keep_latest: int = 1, async_save: bool = True):
    if mode not in ("max", "min"):
      raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    self.directory = directory
    self.mode = mode
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
      meta: a JSON-serializable dict.
      metric: validation metric of this state, or None; only checkpoints with a finite metric
        compete for "best".
    """
    if step in self._mngr.all_steps():
      return
    host_state = jax.tree.map(lambda x: np.array(x, copy=True), jax.device_get(state))
    # Every save carries metrics (Orbax warns about saves without them when tracking the best).
    metrics = {"has_score": 0, "score": 0.0, "step": int(step)}
    if metric is not None and math.isfinite(metric):
      metrics.update(has_score=1, score=float(metric) if self.mode == "max" else -float(metric))
    args = ocp.args.Composite(state=ocp.args.StandardSave(host_state), meta=ocp.args.JsonSave(dict(meta)))
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
    """Restores checkpoint `step` into the structure/shardings of `abstract_state`."""
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
    restored = self._mngr.restore(step, args=args)
    return restored.state, dict(restored.meta)

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
