"""The prequential (test-then-train) loop over a stream's blocks.

MeLON (paper 002, "Experimental setting"): "For each mini-batch on prequential evaluation, a recommender
estimates the rank of each user's 1 interacted item and randomly-sampled 99 non-interacted items"
before it is updated on that mini-batch; SML (paper 003, Sec. 2 and 4.1.3): the model retrained after
``D_t`` serves, and is evaluated on, ``D_{t+1}``. One loop covers both::

  for t in range(T):                                    # blocks in time order
    record(evaluate(strategy.params(state), t))         # scored by the state that has not seen block t
    state, metrics = strategy.update(state, block(t), fold_in(rng, t))
    checkpoint every n blocks

Each record holds the block's metrics (every protocol of the evaluator), its number of interactions, the
strategy's update metrics, and the wall time of the evaluation and of the update (the update is waited
for, ``block_until_ready``), separately.

Checkpoints (Orbax, :class:`jaxrec.train.checkpoint.Checkpointer`) hold the whole strategy state and, as
JSON, the next block, the records so far and the rng; a run called again with the same ``workdir``
resumes at the next block. The per-block key is ``fold_in(rng, t)`` and evaluation is deterministic, so
the final state and the per-block metrics are bit-identical to an uninterrupted run (times are not).
``max_blocks`` pauses a run after that many blocks of this call (a checkpoint is written).

Departure from the papers: MeLON's 0.5% validation stream and SML's validation periods (model selection)
are not part of this loop; a preset that needs them runs the loop on those blocks first.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Mapping, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.stream import blocks as blocks_lib
from jaxrec.train import checkpoint as checkpoint_lib
from jaxrec.train import learner as learner_lib
from jaxrec.train import loop as train_loop

EvalFn = Callable[[Any, int], dict]


@dataclasses.dataclass(frozen=True)
class StreamConfig:
  """Configuration of :func:`run`.

  Attributes:
    checkpoint_every: blocks between checkpoints (with a workdir; also at the end and on a pause).
    max_blocks: pause after this many blocks in this call (None: run to the end).
    jit: jit the strategy's update (state donated); False for host compositions (retraining).
  """

  checkpoint_every: int = 10
  max_blocks: Optional[int] = None
  jit: bool = True


@dataclasses.dataclass
class StreamResult:
  """Outcome of :func:`run`: the last state, one record per block done so far, and whether all are."""

  state: Any
  records: list
  done: bool


def _key_data(rng: jax.Array) -> list:
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.key_data(rng)
  return np.asarray(rng).ravel().tolist()


def _to_float(tree) -> dict:
  return {k: float(np.asarray(v)) for k, v in jax.device_get(tree).items()}


def run(strategy: learner_lib.Learner, state: Any, data: blocks_lib.Blocks, evaluate_fn: EvalFn, *,
        rng: jax.Array, workdir: Optional[str] = None, config: StreamConfig = StreamConfig(),
        run_config: Optional[Mapping[str, Any]] = None) -> StreamResult:
  """Runs (or resumes) the prequential loop; see the module docstring.

  Args:
    strategy: the learner; its ``update`` consumes ``data.block(t)``.
    state: the initial state (``strategy.init(params, rng)``); ignored when resuming.
    data: the blocks.
    evaluate_fn: ``evaluate_fn(params, t) -> {name: float}`` (e.g.
      :class:`jaxrec.stream.evaluate.BlockEvaluator`); must not read blocks after ``t``.
    rng: base key; block ``t`` updates with ``fold_in(rng, t)``.
    workdir: checkpoint directory root (None: in memory, no resume).
    config: :class:`StreamConfig`.
    run_config: what this stream is (JSON-able: model, strategy, its settings, dataset, seed): written as
      ``run_config.json`` into ``workdir`` on a fresh start and compared on resume, as in
      :func:`jaxrec.train.loop.train` (a workdir of another config raises ``ConfigMismatchError``).

  Returns:
    A :class:`StreamResult`.
  """
  update = learner_lib.jit_update(strategy) if config.jit else strategy.update
  abstract = checkpoint_lib.abstract_like(state)
  # Committed like restored checkpoints: fresh and resumed runs give the jitted update one signature.
  state = checkpoint_lib.commit(state)
  records, start = [], 0
  ckpt = None
  if workdir is not None:
    ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep_latest=1)
    restored = ckpt.restore_latest(abstract)
    if run_config is not None:
      train_loop.check_run_config(workdir, run_config, restored is not None)
    if restored is not None:
      state, meta = restored
      start, records = int(meta["next_block"]), list(meta["records"])
      if meta["rng"] != _key_data(rng):
        raise ValueError(f"{workdir}: checkpoint was written with another rng")
      logging.info("Resumed stream from %s at block %d.", workdir, start)
  try:
    t = start
    stop = len(data) if config.max_blocks is None else min(len(data), start + config.max_blocks)
    while t < stop:
      t0 = time.perf_counter()
      rec = {"block": t, "size": int(data.sizes()[t])}
      rec.update(evaluate_fn(strategy.params(state), t))
      t1 = time.perf_counter()
      state, metrics = update(state, data.block(t), jax.random.fold_in(rng, t))
      state = jax.block_until_ready(state)
      t2 = time.perf_counter()
      rec.update({f"train/{k}": v for k, v in _to_float(metrics).items()})
      rec.update(eval_seconds=t1 - t0, update_seconds=t2 - t1)
      records.append(rec)
      t += 1
      if ckpt is not None and (t % config.checkpoint_every == 0 or t == stop):
        ckpt.save(t, state, {"next_block": t, "records": records, "rng": _key_data(rng)})
  finally:
    if ckpt is not None:
      ckpt.close()
  return StreamResult(state=state, records=records, done=len(records) == len(data))


def weighted_average(records: list, key: str, weight: str = "size") -> float:
  """Interaction-weighted average of ``key`` over the records (each block weighs its ``weight`` field:
  its size, or e.g. the count of the queries ``key`` averages)."""
  w = np.asarray([r[weight] for r in records], np.float64)
  v = np.asarray([r[key] for r in records], np.float64)
  return float((w * v).sum() / max(w.sum(), 1.0))
