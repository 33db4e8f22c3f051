"""The training loop: steps, evaluation, keep-best, early stopping, logging, NaN checks and resume.

`train` drives any :class:`jaxrec.train.learner.Learner` (``init``/``update``/``params`` over a pytree
state) over `batches_fn(epoch)`, an iterator of static-shape host batches whose order must be a function
of (seed, epoch) only. ``learner.update`` is jitted with the state donated (`learner.jit_update`); per-step
keys are `jax.random.fold_in(rng, step)`, where ``step`` counts the updates of this run (the loop's own
counter, checkpointed; the state need not carry one).

Host syncs are rare: the update metrics stay on device and are fetched every `log_every` steps (and
before every evaluation, checkpoint and at the end); every floating-point metric the learner reports is
checked, and the first non-finite step is named exactly (a boolean ``is_finite`` metric, when reported,
is checked too). No metric name is required. The whole state is checked for NaN/Inf at the same points.
Evaluation and keep-best see ``learner.params(state)``; checkpoints hold the whole state.

Resume: with a `workdir`, a checkpoint (state + loop position: epoch, batches consumed in the
epoch, best metric and step, patience counter, partially accumulated log window, rng) is written
after every evaluation, every `checkpoint_every` steps, at every epoch end, on a `max_steps` pause
and at the end. Calling `train` again with the same workdir restores the latest checkpoint, skips
the batches already consumed in its epoch, truncates `metrics.jsonl` to the checkpoint's step and
continues: the final parameters, the returned history and the metrics log are bit-identical to an
uninterrupted run with the same seed. The `keep_latest` (default 2) newest checkpoints are kept, and
an unreadable newest one (a truncated file) is skipped with a warning: the run resumes from the
previous one (:meth:`jaxrec.train.checkpoint.Checkpointer.restore_latest_good`).

Run config: with a `run_config` (a JSON-able mapping: the model, hyper-parameters, dataset, split,
seed, ...) the workdir remembers what it was trained with (`run_config.json`, written on a fresh
start); a resume with a different `run_config` raises
:class:`~jaxrec.train.checkpoint.ConfigMismatchError` naming the differing fields, never resuming
another run's model. A state of other shapes than the checkpoint's raises it too.

Timing: every `train` call with a workdir appends a segment (`from_step`, `to_step`, `seconds`) to
`timing.json` in the workdir (reset on a fresh start); :func:`read_timing` gives the segments and
their total, so a resumed or re-run job reports its whole training time.

Interruption: called from the main thread, `train` handles Ctrl-C (SIGINT) itself: the run stops
at the next step boundary, writes a checkpoint there (with a workdir) and raises :class:`Interrupted`
(a `KeyboardInterrupt`) whose message says at which step it stopped and from which checkpointed step
re-running the same call resumes; a second Ctrl-C stops at once. A `KeyboardInterrupt` from
elsewhere (another handler, a data pipeline) is re-raised as :class:`Interrupted` too, naming the
last finalized checkpoint. No empty `metrics.jsonl` is left: the file appears with its first record.

Epochs: every record's and log line's `epoch` is the 1-based epoch of the record's last step (the
evaluation at the end of the first epoch and that epoch's last train record both say epoch 1).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
import os
import json
import signal
import threading
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from jaxrec import io
from jaxrec.train import checkpoint as checkpoint_lib
from jaxrec.train import learner as learner_lib
from jaxrec.train import logging as metrics_log

Batch = Mapping[str, Any]
State = Any
EvalFn = Callable[[Any], Mapping[str, Any]]

RUN_CONFIG_FILE = "run_config.json"
TIMING_FILE = "timing.json"

ConfigMismatchError = checkpoint_lib.ConfigMismatchError
CheckpointError = checkpoint_lib.CheckpointError


class Interrupted(KeyboardInterrupt):
  """Ctrl-C during `train`; ``str(e)`` says where it stopped and where a re-run resumes.

  Attributes:
    step: updates made when interrupted.
    resume_step: the checkpointed step a re-run resumes from (0: from the start); None without a
      workdir.
  """

  def __init__(self, step: int, resume_step: Optional[int]):
    self.step, self.resume_step = step, resume_step
    if resume_step is None:
      msg = f"interrupted at step {step} (no workdir: nothing to resume)"
    else:
      msg = (f"interrupted at step {step}; re-run the same command to resume from step {resume_step}")
    super().__init__(msg)

  def __str__(self) -> str:
    return self.args[0]


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """Configuration of `train`.

  Attributes:
    num_epochs: number of passes over `batches_fn(epoch)`.
    max_steps: pause once this run has made this many updates (a checkpoint is written); calling `train` again
      with the same workdir and a larger/None `max_steps` continues. None: no limit.
    log_every: steps between train records (mean of the step metrics over the window); also the
      interval of the device->host metric fetch and NaN check.
    eval_every: steps between evaluations (None: only at epoch ends).
    eval_at_epoch_end: also evaluate at the end of every epoch.
    metric: eval metric that selects the best state and drives early stopping (None: no keep-best,
      the final state is returned).
    mode: "max" or "min" for `metric`.
    patience: stop after this many evaluations without a strict improvement (None: never).
    time_limit: stop at the first evaluation after this many seconds of this `train` call (a wall-time
      cap for "train to convergence" comparisons; None: never). Time-dependent, so a run stopped by it
      is not bit-reproducible; its last eval record says `"stopped": "time_limit"`.
    checkpoint_every: steps between periodic checkpoints, in addition to those listed above.
    keep_latest: latest checkpoints kept on disk besides the best one (>= 1; two, so that a damaged
      newest one has a fallback).
    progress: show a tqdm progress bar.
    steps_per_epoch: for the progress bar's ETA when `batches_fn(epoch)` has no `len`.
    prefetch: batches put on device ahead of the step (0 disables).
    async_checkpointing: write checkpoints in a background thread.
  """

  num_epochs: int = 1
  max_steps: Optional[int] = None
  log_every: int = 100
  eval_every: Optional[int] = None
  eval_at_epoch_end: bool = True
  metric: Optional[str] = None
  mode: str = "max"
  patience: Optional[int] = None
  time_limit: Optional[float] = None
  checkpoint_every: Optional[int] = None
  keep_latest: int = 2
  progress: bool = True
  steps_per_epoch: Optional[int] = None
  prefetch: int = 2
  async_checkpointing: bool = True


@dataclasses.dataclass
class _Position:
  """Loop position; JSON-serialized into every checkpoint."""

  epoch: int = 0
  batch: int = 0  # Batches of `epoch` already consumed.
  step: int = 0
  best_value: Optional[float] = None
  best_step: Optional[int] = None
  bad_evals: int = 0
  last_eval_step: Optional[int] = None
  window_count: int = 0
  window_sums: Dict[str, float] = dataclasses.field(default_factory=dict)
  done: bool = False
  rng: Optional[List[int]] = None


def _key_data(rng: jax.Array) -> List[int]:
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.key_data(rng)
  return np.asarray(rng).ravel().tolist()


def _key_from_data(data: List[int], like: jax.Array) -> jax.Array:
  if jnp.issubdtype(like.dtype, jax.dtypes.prng_key):
    raw = jnp.asarray(data, jnp.uint32).reshape(jax.random.key_data(like).shape)
    return jax.random.wrap_key_data(raw, impl=jax.random.key_impl(like))
  return jnp.asarray(data, like.dtype).reshape(like.shape)


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


_fold_in = jax.jit(jax.random.fold_in)


def _prefetch(batches: Iterable[Batch], size: int) -> Iterator[Batch]:
  """Yields `batches` with up to `size` of them already transferred (asynchronously) to device."""
  if size <= 0:
    yield from batches
    return
  queue = collections.deque()
  for batch in batches:
    # Batches already placed (e.g. global arrays sharded over several processes) are not moved.
    placed = all(isinstance(x, jax.Array) for x in jax.tree.leaves(batch))
    queue.append(batch if placed else jax.device_put(batch))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def _epoch_of_last_step(pos: _Position) -> int:
  """1-based epoch of the last step made (the position's epoch is 0-based and advanced at epoch end)."""
  return pos.epoch + (1 if pos.batch > 0 else 0)


def _flat(config: Any, prefix: str = "") -> Dict[str, Any]:
  if isinstance(config, Mapping):
    out: Dict[str, Any] = {}
    for k, v in config.items():
      out.update(_flat(v, f"{prefix}{k}."))
    return out if out or not prefix else {prefix[:-1]: {}}
  return {prefix[:-1]: config}


def config_differences(saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> List[str]:
  """``["fit.learning_rate: 0.001 -> 0.01", ...]``: the dotted fields in which two configs differ."""
  a, b = _flat(io.to_json_compatible(saved)), _flat(io.to_json_compatible(wanted))
  show = lambda d, k: json.dumps(d[k]) if k in d else "(absent)"
  keys = sorted(set(a) | set(b))
  return [f"{k}: {show(a, k)} -> {show(b, k)}" for k in keys if a.get(k, ...) != b.get(k, ...)]


def read_timing(workdir: str) -> dict:
  """``{"segments": [{"from_step", "to_step", "seconds"}, ...], "total_seconds"}`` of a workdir."""
  path = os.path.join(workdir, TIMING_FILE)
  try:
    with open(path, encoding="utf-8") as f:
      segments = list(json.load(f).get("segments", []))
  except (FileNotFoundError, ValueError, AttributeError):
    segments = []
  return {"segments": segments, "total_seconds": float(sum(s["seconds"] for s in segments))}


def _add_timing(workdir: str, fresh: bool, segment: dict) -> None:
  segments = [] if fresh else read_timing(workdir)["segments"]
  segments.append(segment)
  io.atomic_write_json(os.path.join(workdir, TIMING_FILE),
                       {"segments": segments, "total_seconds": sum(s["seconds"] for s in segments)})


def check_run_config(workdir: str, run_config: Mapping[str, Any], resuming: bool) -> None:
  """Writes ``run_config.json`` on a fresh start; on resume raises if it differs from ``run_config``."""
  path = os.path.join(workdir, RUN_CONFIG_FILE)
  wanted = io.to_json_compatible(dict(run_config))
  if resuming and os.path.exists(path):
    try:
      with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    except ValueError:
      raise ConfigMismatchError(f"{path} is unreadable; pass another --workdir or delete {workdir} "
                                "to start over") from None
    diffs = config_differences(saved, wanted)
    if diffs:
      shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
      raise ConfigMismatchError(
          f"{workdir} holds a run with another config ({shown}); pass another --workdir or delete "
          f"{workdir} to start over")
    return
  if resuming:
    logging.warning("%s has no %s (written by an older version); recording this run's config", workdir,
                    RUN_CONFIG_FILE)
  io.atomic_write_json(path, wanted)


def _copy(tree: Any) -> Any:
  return jax.tree.map(jnp.copy, tree)


class _Run:
  """Mutable bookkeeping of one `train` call (kept out of the public, functional API)."""

  def __init__(self, config: LoopConfig, learner: learner_lib.Learner, eval_fn: Optional[EvalFn],
               workdir: Optional[str]):
    self.cfg = config
    self.learner = learner
    self.train_step = learner_lib.jit_update(learner)
    self.eval_fn = eval_fn
    self.workdir = workdir
    self.pos = _Position()
    self.pending: List[Tuple[int, Mapping[str, jax.Array]]] = []
    self.ckpt: Optional[checkpoint_lib.Checkpointer] = None
    self.writer: Optional[metrics_log.MetricsWriter] = None
    self.history: List[dict] = []
    self.best_state: Optional[State] = None
    self.pending_metric: Optional[float] = None
    self.last_log_time = time.perf_counter()
    self.last_log_step = 0
    self.t0 = time.perf_counter()  # reset by `train` when the run starts (LoopConfig.time_limit)
    self.stop_requested = False  # set by the SIGINT handler; the loop stops at the next step boundary

  def record(self, rec: Dict[str, Any]) -> None:
    if self.writer is not None:
      self.history.append(self.writer.write(rec))
    else:
      self.history.append(io.to_json_compatible(rec))

  def drain(self, state: State) -> None:
    """Fetches pending update metrics, raises on the first non-finite one, accumulates the window."""
    if not self.pending:
      return
    steps = [s for s, _ in self.pending]
    host = jax.device_get([m for _, m in self.pending])
    self.pending.clear()
    pos = self.pos
    for s, m in zip(steps, host):
      bad = sorted(k for k, v in m.items()
                   if np.issubdtype(np.asarray(v).dtype, np.inexact) and not np.all(np.isfinite(v)))
      if bad or not bool(np.all(m.get("is_finite", True))):
        shown = ", ".join(f"{k}={np.asarray(v).ravel()[:4].tolist()}" for k, v in sorted(m.items())
                          if k != "is_finite")
        raise FloatingPointError(
            f"Non-finite update at step {s} (0-based update index of this run = fold_in index of its "
            f"rng; epoch {pos.epoch}): non-finite {bad or ['is_finite']}; metrics: {shown}.")
      for k, v in m.items():
        if k != "is_finite":
          pos.window_sums[k] = pos.window_sums.get(k, 0.0) + float(np.mean(v))
      pos.window_count += 1
    if not bool(_all_finite(state)):
      raise FloatingPointError(
          f"Non-finite state (parameters or optimizer state) after step {steps[-1]} (first checked "
          f"after steps {steps[0]}..{steps[-1]}; the reported metrics were finite).")

  def log_window(self, pbar: tqdm.tqdm) -> None:
    pos = self.pos
    if not pos.window_count:
      return
    means = {k: v / pos.window_count for k, v in sorted(pos.window_sums.items())}
    epoch = _epoch_of_last_step(pos)
    self.record({"kind": "train", "step": pos.step, "epoch": epoch, **means})
    now = time.perf_counter()
    rate = (pos.step - self.last_log_step) / max(now - self.last_log_time, 1e-9)
    self.last_log_time, self.last_log_step = now, pos.step
    logging.info("step %d (epoch %d): %s (%.1f steps/s)", pos.step, epoch,
                 ", ".join(f"{k}={v:.5g}" for k, v in means.items()), rate)
    pbar.set_postfix(epoch=epoch, loss=f"{means.get('loss', float('nan')):.4g}", refresh=False)
    pos.window_sums, pos.window_count = {}, 0

  def evaluate(self, state: State) -> None:
    """Runs `eval_fn`, updates best/patience, records, and marks the step for a checkpoint."""
    self.drain(state)
    cfg, pos = self.cfg, self.pos
    metrics = {k: float(np.asarray(v)) for k, v in self.eval_fn(self.learner.params(state)).items()}
    improved = False
    if cfg.metric is not None:
      if cfg.metric not in metrics:
        raise KeyError(f"eval_fn returned {sorted(metrics)}, which lacks LoopConfig.metric={cfg.metric!r}")
      value = metrics[cfg.metric]
      best = pos.best_value
      improved = math.isfinite(value) and (
          best is None or (value > best if cfg.mode == "max" else value < best))
      if improved:
        pos.best_value, pos.best_step, pos.bad_evals = value, pos.step, 0
        self.best_state = _copy(state)
      else:
        pos.bad_evals += 1
      self.pending_metric = value
    pos.last_eval_step = pos.step
    epoch = _epoch_of_last_step(pos)
    stop = None
    if cfg.patience is not None and pos.bad_evals >= cfg.patience:
      stop = "patience"
    elif cfg.time_limit is not None and time.perf_counter() - self.t0 >= cfg.time_limit:
      stop = "time_limit"
    record = {"kind": "eval", "step": pos.step, "epoch": epoch, **metrics, "best": improved}
    if stop:
      record["stopped"] = stop
    self.record(record)
    logging.info("eval at step %d (epoch %d): %s%s", pos.step, epoch,
                 ", ".join(f"{k}={v:.5g}" for k, v in metrics.items()), " (best)" if improved else "")
    if stop == "patience":
      logging.info("Early stopping at step %d: no improvement of %s in %d evaluations (best %s at step %s).",
                   pos.step, cfg.metric, pos.bad_evals, pos.best_value, pos.best_step)
    elif stop == "time_limit":
      logging.info("Stopping at step %d: past the time limit of %.0f s.", pos.step, cfg.time_limit)
    if stop:
      pos.done = True

  def save(self, state: State) -> None:
    if self.ckpt is not None:
      self.drain(state)  # Never checkpoint a state whose steps were not checked.
      meta = {"loop": dataclasses.asdict(self.pos)}
      self.ckpt.save(self.pos.step, state, meta, metric=self.pending_metric)
    self.pending_metric = None


def train(
    config: LoopConfig,
    learner: learner_lib.Learner,
    state: State,
    batches_fn: Callable[[int], Iterable[Batch]],
    eval_fn: Optional[EvalFn] = None,
    workdir: Optional[str] = None,
    *,
    rng: jax.Array,
    run_config: Optional[Mapping[str, Any]] = None,
) -> Tuple[State, List[dict]]:
  """Trains `state` with `learner.update` over `config.num_epochs` epochs of `batches_fn(epoch)`.

  Args:
    config: the `LoopConfig`.
    learner: any :class:`jaxrec.train.learner.Learner`; its ``update`` is jitted with the state donated.
    state: the initial state, ``learner.init(params, rng)`` (ignored, except for its structure, when
      `workdir` holds a checkpoint). It is donated: invalid after this call.
    batches_fn: `batches_fn(epoch)` -> iterable of static-shape batches (host numpy dicts), in an
      order that depends only on (seed, epoch).
    eval_fn: `eval_fn(learner.params(state)) -> {name: scalar}`; called every `eval_every` steps and at
      epoch ends.
    workdir: directory for `checkpoints/` and `metrics.jsonl`; if it holds a checkpoint the run
      resumes from the latest one. None: no checkpoints, no files.
    rng: base PRNG key; step `s` uses `fold_in(rng, s)`. On resume the checkpointed key is used.
    run_config: what this run is (JSON-able; e.g. model, hyper-parameters, dataset, split, seed):
      written as `run_config.json` into `workdir` on a fresh start, compared on resume.

  Returns:
    `(best_state, history)`: the state with the best `config.metric` (the final state if there is
    no metric or no finite evaluation), and the list of train/eval records (as in `metrics.jsonl`).

  Raises:
    FloatingPointError: a loss, gradient or parameter became NaN/Inf; the message names the step.
    ConfigMismatchError: `workdir` holds a run of another `run_config` or of other state shapes.
    CheckpointError: `workdir` is a file, or none of its checkpoints is readable.
    Interrupted: Ctrl-C; the message names the step and the step a re-run resumes from.
  """
  if config.mode not in ("max", "min"):
    raise ValueError(f"mode must be 'max' or 'min', got {config.mode!r}")
  if config.metric is not None and eval_fn is None:
    raise ValueError("LoopConfig.metric is set but no eval_fn was given.")
  run = _Run(config, learner, eval_fn, workdir)
  pos = run.pos
  abstract = checkpoint_lib.abstract_like(state)
  # Commit the state to its shardings, as restored checkpoints are: the jitted step then sees the
  # same argument signature in fresh and resumed runs and compiles once.
  state = jax.device_put(state, jax.tree.map(lambda a: a.sharding, abstract))
  pos.rng = _key_data(rng)
  t0 = run.t0 = time.perf_counter()
  resume_step = None
  old_handler = None
  if threading.current_thread() is threading.main_thread() and (
      signal.getsignal(signal.SIGINT) is signal.default_int_handler):

    def on_sigint(signum, frame):
      del signum, frame
      if run.stop_requested:  # a second Ctrl-C stops at once
        raise KeyboardInterrupt
      run.stop_requested = True

    old_handler = signal.signal(signal.SIGINT, on_sigint)
  try:
    if workdir is not None:
      if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise CheckpointError(f"workdir {workdir} is a file, not a directory; pass another --workdir")
      ckpt_dir = os.path.join(workdir, "checkpoints")
      if os.path.exists(ckpt_dir) and not os.path.isdir(ckpt_dir):
        raise CheckpointError(f"{ckpt_dir} is a file, not a directory; pass another --workdir")
      run.ckpt = checkpoint_lib.Checkpointer(
          ckpt_dir, mode=config.mode, keep_latest=config.keep_latest,
          async_save=config.async_checkpointing)
      has_checkpoint = run.ckpt.latest_step() is not None
      if run_config is not None:
        check_run_config(workdir, run_config, has_checkpoint)
      restored = run.ckpt.restore_latest_good(abstract) if has_checkpoint else None
      if restored is not None:
        resume_step, state, meta = restored
        run.pos = pos = _Position(**meta["loop"])
        if pos.rng != _key_data(rng):
          logging.warning("Resuming %s with its checkpointed rng, not the one passed in.", workdir)
        rng = _key_from_data(pos.rng, rng)
        if pos.best_step is not None:
          if pos.best_step not in run.ckpt.all_steps() or pos.best_step in run.ckpt.broken:
            raise CheckpointError(
                f"checkpoint {ckpt_dir}/{resume_step} refers to a best state (step {pos.best_step}) "
                f"that is missing or damaged; delete {workdir} or pass another --workdir to start over")
          run.best_state = run.ckpt.restore(pos.best_step, abstract)[0]
        logging.info("Resumed from %s at step %d (epoch %d, batch %d).", workdir, pos.step, pos.epoch,
                     pos.batch)
      run.writer = metrics_log.MetricsWriter(os.path.join(workdir, metrics_log.METRICS_FILE), resume_step)
      run.history = list(run.writer.records)
    state = _loop(run, state, batches_fn, rng)
  except KeyboardInterrupt:
    interrupted = True
  else:
    interrupted = False
  finally:
    if old_handler is not None:
      signal.signal(signal.SIGINT, old_handler)
    latest_saved = None
    if run.ckpt is not None:
      try:
        run.ckpt.wait()  # Asynchronous saves are finalized before the latest is named.
      except KeyboardInterrupt:
        pass
      latest_saved = max([s for s in run.ckpt.all_steps() if s not in run.ckpt.broken], default=0)
      run.ckpt.close()
    if run.writer is not None:
      run.writer.close()
    if run.writer is not None:  # the run started (no error before it): its time is a segment
      _add_timing(workdir, resume_step is None,
                  {"from_step": resume_step or 0, "to_step": run.pos.step,
                   "seconds": time.perf_counter() - t0})
  if interrupted:
    raise Interrupted(run.pos.step, latest_saved) from None
  best = run.best_state if run.best_state is not None else state
  return best, run.history


def _loop(run: _Run, state: State, batches_fn: Callable[[int], Iterable[Batch]],
          rng: jax.Array) -> State:
  """The epoch/step loop of `train`; returns the last state."""
  cfg, pos = run.cfg, run.pos
  total = cfg.steps_per_epoch * cfg.num_epochs if cfg.steps_per_epoch else None
  run.last_log_step = pos.step
  with tqdm.tqdm(total=total, initial=pos.step, disable=not cfg.progress, unit="step",
                 dynamic_ncols=True) as pbar:
    save_due = False
    while not pos.done and pos.epoch < cfg.num_epochs:
      batches = batches_fn(pos.epoch)
      if pbar.total is None and hasattr(batches, "__len__"):
        pbar.total = len(batches) * cfg.num_epochs
      paused = False
      for batch in _prefetch(itertools.islice(iter(batches), pos.batch, None), cfg.prefetch):
        if run.stop_requested:  # Ctrl-C: checkpoint this step boundary, then stop.
          run.save(state)
          raise KeyboardInterrupt
        if save_due:  # Deferred to here so that an epoch end at the same step updates the position.
          run.save(state)
          save_due = False
        if cfg.max_steps is not None and pos.step >= cfg.max_steps:
          paused = True
          break
        state, metrics = run.train_step(state, batch, _fold_in(rng, pos.step))
        run.pending.append((pos.step, metrics))
        pos.step += 1
        pos.batch += 1
        pbar.update(1)
        if pos.step % cfg.log_every == 0:
          run.drain(state)
          run.log_window(pbar)
        if run.eval_fn is not None and cfg.eval_every and pos.step % cfg.eval_every == 0:
          run.evaluate(state)
          save_due = True
        if cfg.checkpoint_every and pos.step % cfg.checkpoint_every == 0:
          save_due = True
        if pos.done:  # Early stopping.
          break
      else:
        pos.epoch += 1
        pos.batch = 0
        if run.eval_fn is not None and cfg.eval_at_epoch_end and pos.last_eval_step != pos.step:
          run.evaluate(state)
        if pos.epoch >= cfg.num_epochs:
          pos.done = True
        if pos.done:
          run.drain(state)
          run.log_window(pbar)
        run.save(state)
        save_due = False
        continue
      if pos.done:
        run.drain(state)
        run.log_window(pbar)
      run.save(state)
      save_due = False
      if paused:
        logging.info("Paused at step %d (max_steps=%d).", pos.step, cfg.max_steps)
        break
  run.drain(state)
  return state
