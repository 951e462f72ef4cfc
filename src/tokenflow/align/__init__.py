"""Token-level alignment: ``Tokens`` in, a plan, scores out (DESIGN.md sections 1-3).

Plans are registered by name; each plan's module is imported the first time one of its names is
asked for (:mod:`tokenflow.align.registry`).
"""

from ..tokens import Tokens
from .base import Aligner
from .hparams import HParam
from .registry import (aligner_for, check_hparams, get_aligner, get_aligner_class, hparam_specs, hparam_table,
                       is_token_plan, list_aligners, register_aligner)
from .results import Plan, Scores

__all__ = [
    "Aligner", "HParam", "Plan", "Scores", "Tokens", "aligner_for", "check_hparams", "get_aligner",
    "get_aligner_class", "hparam_specs", "hparam_table", "is_token_plan", "list_aligners", "register_aligner",
]
