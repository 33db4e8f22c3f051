"""Tree index over items and jitted beam search (tree two-stage retrieval)."""

from jaxrec.retrieval.beam_search import beam_search, batched_beam_search
from jaxrec.retrieval.tree import TreeIndex

__all__ = ["TreeIndex", "batched_beam_search", "beam_search"]
