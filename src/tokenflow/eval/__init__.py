"""Retrieval evaluation: metrics and the ``tokenflow evaluate`` pipeline."""

from .metrics import RECALL_KS, ranks, retrieval_metrics

__all__ = ["RECALL_KS", "ranks", "retrieval_metrics"]
