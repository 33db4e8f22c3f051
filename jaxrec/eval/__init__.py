"""Ranking metrics, the full-ranking and sampled protocols, segment breakdowns."""

from jaxrec.eval.protocols import Candidates, EvalResult, FullRanking, Sampled, evaluate
from jaxrec.eval.queries import Queries
from jaxrec.eval.suite import evaluate_all, standard_protocols

__all__ = ["Candidates", "EvalResult", "FullRanking", "Queries", "Sampled", "evaluate", "evaluate_all",
           "standard_protocols"]
