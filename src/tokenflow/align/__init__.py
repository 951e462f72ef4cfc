"""Token-level alignment: ``Tokens`` in, a plan, scores out (DESIGN.md sections 1-3)."""

from . import assignment, emd, learnable, max_avg, max_sum, omit, partial_ot, scan, sinkhorn, tokenflow, uniform  # noqa: F401  (registration)
from .base import Aligner, Plan, Scores, Tokens
from .registry import get_aligner, list_aligners, register_aligner

__all__ = ["Aligner", "Plan", "Scores", "Tokens", "get_aligner", "list_aligners", "register_aligner"]
