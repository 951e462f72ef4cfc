"""Token-level alignment: ``Tokens`` in, a plan, scores out.

Plans are registered by name; each plan's module is imported the first time one of its names is
asked for (:mod:`tokenflow.align.registry`). Each plan declares its hyperparameters once
(:mod:`tokenflow.align.hparams`); :func:`check_hparams`, :func:`hparam_specs` and
:func:`hparam_table` read those declarations.
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
