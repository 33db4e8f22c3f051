"""The functional training core: learners, state, loop, stages, Orbax checkpoints, fitting recipes."""

from jaxrec.train.learner import Learner, gradient_learner, jit_update
from jaxrec.train.loop import LoopConfig, train
from jaxrec.train.stages import Stage, run_stages
from jaxrec.train.state import TrainState, create, make_optimizer

__all__ = ["Learner", "LoopConfig", "Stage", "TrainState", "create", "gradient_learner", "jit_update",
           "make_optimizer", "run_stages", "train"]
