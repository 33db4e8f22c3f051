"""The functional training core: state, pure train step, loop, Orbax checkpoints, fitting recipes."""

from jaxrec.train.loop import LoopConfig, train
from jaxrec.train.state import TrainState, create, make_optimizer
from jaxrec.train.step import jit_train_step, make_train_step

__all__ = ["LoopConfig", "TrainState", "create", "jit_train_step", "make_optimizer", "make_train_step",
           "train"]
