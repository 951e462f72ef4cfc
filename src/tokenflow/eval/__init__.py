"""Retrieval evaluation: metrics and the ``tokenflow evaluate`` pipeline (one process, or shared by the
processes of a ``torchrun`` run: :mod:`tokenflow.eval.sharded`); hard-negative accuracy."""

from .compositional import evaluate_compositional, format_compositional_table
from .evaluate import Encoded, encode_split, evaluate, format_table, similarity
from .metrics import RECALL_KS, ranks, retrieval_metrics

__all__ = ["RECALL_KS", "Encoded", "encode_split", "evaluate", "evaluate_compositional", "format_compositional_table",
           "format_table", "ranks", "retrieval_metrics", "similarity"]
