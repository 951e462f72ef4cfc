"""``tokenflow demo``: where fine-grained alignment helps, shown on synthetic tasks with nothing
downloaded.

Two protocols (:mod:`tokenflow.demo.protocol`): *scratch*, where every method trains the
built-in tiny dual encoder from a fresh start (FILIP's claim: token-level contrastive training
learns local features), and *finetune*, where a global-loss pretraining per seed is fine-tuned
once per method (the TokenFlow paper's claim). Every method gets the same budget
(:mod:`tokenflow.demo.budget`), checkpoints are chosen on validation, hyperparameters were chosen
on a tuning seed's validation split (:mod:`tokenflow.demo.tune`), and each method is compared
with ``global`` on the same seeds by its paired difference (:mod:`tokenflow.eval.paired`).

Tasks: ``scenes`` (five objects per image, captions naming two; local content decides;
:mod:`tokenflow.data.scenes`) and ``bindings`` (twins with swapped colours, sides or sizes;
:mod:`tokenflow.data.synthetic`). On ``scenes`` the demo also scores explanations against the
objects' boxes (pointing accuracy), and on both the hard-negative accuracy.

``ablate`` runs the one-stage comparison for any training config; it lives in
:mod:`tokenflow.train.ablate`, whose :func:`~tokenflow.train.ablate.run_methods` the demo's runs
go through too.
"""

from __future__ import annotations

from ..utils import machine
from .budget import ALL_METHODS, BUDGETS, METHODS, PROTOCOLS, QUICK_METHODS, SCENES, TASKS
from .protocol import digest
from .run import run_demo
from .tables import format_seed_table, summarise

__all__ = ["ALL_METHODS", "BUDGETS", "METHODS", "PROTOCOLS", "QUICK_METHODS", "SCENES", "TASKS", "digest",
           "format_seed_table", "machine", "run_demo", "summarise"]
