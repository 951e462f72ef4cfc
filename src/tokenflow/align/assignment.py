"""Maximal Pair Assignment plan (seed 003: set-based retrieval with one-to-one matching).

The two token sets are matched one to one: uniform marginals over real tokens, a_s = 1 / l1
and b_t = 1 / l2, cost -c, and an entropic solver with a small eps, so that for l1 = l2 = K the
plan tends to a permutation matrix divided by K and the score sum(c * T) to the mean similarity
of the assigned pairs. ``exact=True`` solves the assignment itself (Hungarian method,
``scipy.optimize.linear_sum_assignment``; rectangular sets match min(l1, l2) pairs, each with
weight 1 / min(l1, l2)); that plan is held constant in the backward pass. The set head with K
learned embeddings per item lives with the models; this module is the set similarity.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ._ops import safe_log
from ._ot import check_entropic, log_sinkhorn, per_pair_plans
from ..tokens import Tokens
from .base import Aligner
from .partial_ot import uniform_marginals
from .registry import register_aligner


def _hungarian(cost: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    rows, cols = linear_sum_assignment(cost)
    plan = np.zeros_like(cost)
    plan[rows, cols] = 1.0 / len(rows)
    return plan


@register_aligner("assignment")
class Assignment(Aligner):
    """One-to-one matching of token sets.

    Args:
        eps: entropic regularisation (default 0.05; smaller is closer to a permutation).
        n_iter: Sinkhorn iterations (default 50).
        exact: use the Hungarian method instead of Sinkhorn (plan constant under autograd).
    """

    def __init__(self, eps: float = 0.05, n_iter: int = 50, exact: bool = False, chunk: int | None = None) -> None:
        super().__init__(chunk)
        check_entropic("assignment", eps, n_iter)
        self.eps, self.n_iter, self.exact = float(eps), int(n_iter), bool(exact)

    def hparams(self) -> dict:
        return {"eps": self.eps, "n_iter": self.n_iter, "exact": self.exact}

    def plans(self, c: Tensor, v: Tokens, t: Tokens) -> tuple[Tensor, Tensor]:
        a, b = uniform_marginals(v, t, c.dtype)
        n, l1, m, l2 = c.shape
        a, b = a.expand(n, l1, m, 1), b.expand(n, 1, m, l2)
        if self.exact:
            plan = per_pair_plans(-c, a, b, v, t, _hungarian)
        else:
            plan = log_sinkhorn(c / self.eps, safe_log(a), safe_log(b), self.n_iter, t.mask[None, None]).exp()
        return plan, plan
