"""Partial optimal transport plan (OMIT, Pan et al.: optimal partial transport matching).

Only a mass ``m < 1`` is transported between the two token sets; the rest goes to a dummy
point, so tokens that are costly to match (low similarity) or carry little weight transport
nothing and do not interfere. Following the dummy-point construction of partial Wasserstein
(Chapel et al. 2020; POT's ``partial_wasserstein``):

    a' = [a, 1 - m],  b' = [b, 1 - m],  C' = [[1 - c, 0], [0, inf]]

and the plan T is the real-by-real block of the entropic OT plan of (a', b', C'), solved by
log-domain Sinkhorn for a whole block at once. Its total mass is m. Marginals ``"global"``
(default) are the local-to-global weights of eq 14 (d and e clamped at zero and normalised,
as for ``emd``), so fragments far from the other side's global feature carry little mass;
``"uniform"`` gives every real token the same mass (OMIT's plain version). With m = 1 the plan
is the ``sinkhorn`` plan. The score is sum(c * T) in both directions.
"""

from __future__ import annotations

from torch import Tensor

from ._ot import check_entropic, dummy_point_plan
from ..tokens import Tokens
from .base import Aligner
from .emd import transport_marginals
from .registry import register_aligner

MARGINALS = ("global", "uniform")


def uniform_marginals(v: Tokens, t: Tokens, dtype) -> tuple[Tensor, Tensor]:
    """1/l1 and 1/l2 over real tokens: a [n, L1, 1, 1], b [1, 1, m, L2] (broadcast over pairs)."""
    vm, tm = v.mask.to(dtype), t.mask.to(dtype)
    a = (vm / vm.sum(1, keepdim=True))[:, :, None, None]
    b = (tm / tm.sum(1, keepdim=True))[None, None]
    return a, b


@register_aligner("partial-ot")
class PartialOT(Aligner):
    """OMIT-style partial transport between token sets.

    Args:
        mass: transported mass m in (0, 1] (default 0.9: a tenth of each side may stay unmatched).
        eps: entropic regularisation (default 0.05, OMIT's lambda).
        n_iter: Sinkhorn iterations (default 50).
        marginals: ``"global"`` (eq 14 local-to-global weights) or ``"uniform"``.
    """

    def __init__(self, mass: float = 0.9, eps: float = 0.05, n_iter: int = 50, marginals: str = "global",
                 chunk: int | None = None) -> None:
        super().__init__(chunk)
        if not 0 < mass <= 1:
            raise ValueError(f"partial-ot: mass must be in (0, 1], got {mass}")
        check_entropic("partial-ot", eps, n_iter)
        if marginals not in MARGINALS:
            raise ValueError(f"partial-ot: marginals must be one of {MARGINALS}, got {marginals!r}")
        self.mass, self.eps, self.n_iter, self.marginals = float(mass), float(eps), int(n_iter), marginals

    def hparams(self) -> dict:
        return {"mass": self.mass, "eps": self.eps, "n_iter": self.n_iter, "marginals": self.marginals}

    def plans(self, c: Tensor, v: Tokens, t: Tokens) -> tuple[Tensor, Tensor]:
        if self.marginals == "global":
            a, b = transport_marginals(v, t, c.dtype)
        else:
            a, b = uniform_marginals(v, t, c.dtype)
        plan = dummy_point_plan((c - 1.0) / self.eps, a, b, self.mass, self.n_iter, t.mask)
        return plan, plan
