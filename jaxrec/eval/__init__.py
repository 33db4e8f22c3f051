"""Ranking metrics, the full-ranking and sampled protocols, the papers' named protocols, segments."""

from jaxrec.eval.paper_protocols import PROTOCOLS, EvalProtocol, prepare
from jaxrec.eval.protocols import Candidates, EvalResult, FullRanking, Sampled, evaluate
from jaxrec.eval.queries import Queries
from jaxrec.eval.suite import evaluate_all, freeze_protocols

__all__ = ["PROTOCOLS", "Candidates", "EvalProtocol", "EvalResult", "FullRanking", "Queries", "Sampled",
           "evaluate", "evaluate_all", "freeze_protocols", "prepare"]
