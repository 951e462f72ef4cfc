"""Token-level alignment: ``Tokens`` in, a plan, scores out (DESIGN.md sections 1-3)."""

from . import (  # noqa: F401  (registration)
    assignment,
    emd,
    learnable,
    max_avg,
    max_sum,
    omit,
    partial_ot,
    scan,
    sets,
    sinkhorn,
    tokenflow,
    uniform,
)
from .base import Aligner, Plan, Scores, Tokens
from .registry import aligner_for, get_aligner, list_aligners, register_aligner

__all__ = ["Aligner", "Plan", "Scores", "Tokens", "aligner_for", "get_aligner", "list_aligners", "register_aligner"]
