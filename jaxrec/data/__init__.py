"""Interaction logs, loaders, the synthetic generator, preprocessing, splits and samplers."""

from jaxrec.data.datasets import load_dataset
from jaxrec.data.log import DataError, InteractionLog, Vocab, concat_logs

__all__ = ["DataError", "InteractionLog", "Vocab", "concat_logs", "load_dataset"]
