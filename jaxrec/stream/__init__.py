"""Streams: prequential (test-then-train) evaluation of strategies over blocks in time order."""

from jaxrec.stream import blocks, evaluate, loop, strategies
from jaxrec.stream.blocks import Blocks
from jaxrec.stream.evaluate import BlockEvaluator
from jaxrec.stream.loop import StreamConfig, StreamResult, run, weighted_average
from jaxrec.stream.strategies import STRATEGIES, Env, StrategyConfig, register

__all__ = ["BlockEvaluator", "Blocks", "Env", "STRATEGIES", "StrategyConfig", "StreamConfig",
           "StreamResult", "blocks", "evaluate", "loop", "register", "run", "strategies",
           "weighted_average"]
