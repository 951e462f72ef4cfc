"""Retrieval evaluation: metrics and the ``tokenflow evaluate`` pipeline."""

from .evaluate import Encoded, encode_split, evaluate, format_table, similarity
from .metrics import RECALL_KS, ranks, retrieval_metrics

__all__ = ["RECALL_KS", "Encoded", "encode_split", "evaluate", "format_table", "ranks", "retrieval_metrics",
           "similarity"]
