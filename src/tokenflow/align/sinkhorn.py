"""Sinkhorn plan: entropic optimal transport (Cuturi 2013; as used by OMIT and DeepEMD).

    T = argmin_T sum_{s,t} (1 - c[s, t]) T[s, t] - eps * H(T)
        s.t. sum_t T[s, t] = a[s], sum_s T[s, t] = b[t]

with the same cost and marginals as ``emd`` (eq 13-14: a and b are the clamped, normalised
local-to-global weights d and e). Solved for a whole block of pairs at once by log-domain
Sinkhorn with a fixed number of iterations; as eps shrinks (and iterations grow) the plan tends
to the exact ``emd`` plan. Used for both directions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._ops import safe_log
from ._ot import check_entropic, log_sinkhorn
from ..tokens import Tokens
from .base import Aligner
from .emd import transport_marginals
from .registry import register_aligner

GRAD_MODES = ("unroll", "plan-fixed")


@register_aligner("sinkhorn")
class Sinkhorn(Aligner):
    """Entropic OT between token sets.

    Args:
        eps: entropic regularisation (default 0.05, OMIT's kernel exp(-C / 0.05)).
        n_iter: Sinkhorn iterations (default 100; each is two log-sum-exp passes).
        grad: ``"unroll"`` differentiates through the iterations (and the marginals);
            ``"plan-fixed"`` holds the plan constant like ``emd`` (less memory).
    """

    def __init__(self, eps: float = 0.05, n_iter: int = 100, grad: str = "unroll", chunk: int | None = None) -> None:
        super().__init__(chunk)
        check_entropic("sinkhorn", eps, n_iter)
        if grad not in GRAD_MODES:
            raise ValueError(f"sinkhorn: grad must be one of {GRAD_MODES}, got {grad!r}")
        self.eps, self.n_iter, self.grad = float(eps), int(n_iter), grad

    def hparams(self) -> dict:
        return {"eps": self.eps, "n_iter": self.n_iter, "grad": self.grad}

    def plans(self, c: Tensor, v: Tokens, t: Tokens) -> tuple[Tensor, Tensor]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.grad == "unroll"):
            a, b = transport_marginals(v, t, c.dtype)
            plan = log_sinkhorn((c - 1.0) / self.eps, safe_log(a), safe_log(b), self.n_iter, t.mask[None, None]).exp()
        return plan, plan
