"""Multi-stage training: one small runner over ``(name, learner, init, batches, budget, eval)`` stages.

2TS trains CCF then the two cells, TP pre-trains then meta-trains, SML repeats its two steps per period:
each is a sequence of :class:`Stage` s, and every stage is one :func:`jaxrec.train.loop.train` call with
its own checkpoint directory (``workdir/<name>``), so a killed run resumes inside the stage it was in
(finished stages are restored from their checkpoints, not retrained) and reaches the same parameters.

A stage starts from the served parameters of the previous one: ``state = stage.init(params, rng)``
(default ``stage.learner.init``), which is where a stage adds its own parameters or freezes others.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Tuple

import jax

from jaxrec.train import learner as learner_lib
from jaxrec.train import loop as loop_lib

Params = Any


@dataclasses.dataclass(frozen=True)
class Stage:
  """One stage of a multi-stage run.

  Attributes:
    name: the stage's name (its checkpoint directory under the run's workdir, its history key).
    learner: the stage's :class:`~jaxrec.train.learner.Learner`.
    batches_fn: ``batches_fn(epoch)`` -> the epoch's static-shape batches (order fixed by seed, epoch).
    config: the stage's :class:`~jaxrec.train.loop.LoopConfig` (budget, evaluation, keep-best).
    eval_fn: ``eval_fn(params) -> {name: scalar}`` (validation), or None.
    init: ``init(params, rng) -> state`` from the previous stage's served parameters; None:
      ``learner.init``.
    run_config: what defines the stage (JSON-able), remembered in its workdir and compared on
      resume (:func:`jaxrec.train.loop.train`); None: not checked.
  """

  name: str
  learner: learner_lib.Learner
  batches_fn: Callable[[int], Iterable[Any]]
  config: loop_lib.LoopConfig
  eval_fn: Optional[Callable[[Params], Any]] = None
  init: Optional[Callable[[Params, jax.Array], Any]] = None
  run_config: Optional[Mapping[str, Any]] = None


def run_stages(stages: Sequence[Stage], params: Params, *, rng: jax.Array,
               workdir: Optional[str] = None, first_index: int = 0) -> Tuple[Params, dict]:
  """Runs ``stages`` in order, each from the previous stage's best served parameters.

  Stage ``i`` uses the keys ``split(fold_in(rng, first_index + i))`` (init, loop), so adding a stage at the
  end does not change the earlier ones, and a pipeline resumed at its stage ``j`` from the served
  parameters of the stages before it (``stages[j:]``, ``first_index=j``) runs exactly as the whole one.

  Returns:
    ``(params, {stage name: history records})``: the last stage's best served parameters.
  """
  names = [s.name for s in stages]
  if len(set(names)) != len(names):
    raise ValueError(f"run_stages: stage names must be distinct, got {names}")
  histories = {}
  for i, stage in enumerate(stages):
    init_rng, loop_rng = jax.random.split(jax.random.fold_in(rng, first_index + i))
    state = (stage.init or stage.learner.init)(params, init_rng)
    stage_dir = None if workdir is None else os.path.join(workdir, stage.name)
    best, histories[stage.name] = loop_lib.train(stage.config, stage.learner, state, stage.batches_fn,
                                                 stage.eval_fn, stage_dir, rng=loop_rng,
                                                 run_config=stage.run_config)
    params = stage.learner.params(best)
  return params, histories
