"""OMIT (Pan et al., seed 002): Cross-modal Mover's Distance with optional partial matching.

Visual fragments (patches, frames or region features) and words are two weighted point sets;
the cost of moving mass between them is ``1 - c`` (cosine distance for unit-norm features) and
the score of a pair is ``sum(c * T)`` for the transport plan T (used in both directions). Three
independent choices make up the variants:

``marginals``
    ``"uniform"``: every real token carries 1/l (the authors' released code).
    ``"l2g"``: local-to-global weights. Each fragment's mass is a softmax over its own side of
    its cosine similarity to the other side's mean embedding (the normalised mean of the other
    side's real tokens), at temperature ``tau``: fragments unrelated to the other modality as a
    whole get little mass and so contribute little to the score.
``mass``
    ``1``: balanced transport. ``m < 1``: true partial transport. Only ``m`` is moved between
    real tokens; the rest goes to a dummy point at zero cost (the construction of POT's
    ``partial_wasserstein``), so the most expensive, least related fragments move nothing.
``solver``
    ``"sinkhorn"``: entropic plan, kernel ``exp(-C / eps)``, a fixed number of log-domain
    iterations, differentiable by unrolling. ``"exact"``: the linear program itself, POT's
    ``ot.emd`` (m = 1) or ``ot.partial.partial_wasserstein`` (m < 1), per pair in float64, the
    plan held constant in the backward pass (as for ``emd``).

Default: the plain version, ``marginals="uniform"``, ``mass=1``, ``eps=0.05``, ``n_iter=3``. It
is the only variant whose every setting is public (the authors' code: lambda = 0.05 and three
Sinkhorn rounds), so it reproduces something checkable; the local-to-global and partial
variants follow the paper's description with settings of our choosing (``tau=0.1``, ``m``),
and are one option away. With so few iterations the plan is far from converged: that is part of
the method (a smoothed, nearly uniform matching), not an approximation to fix.

Compared with the other transport plans: ``sinkhorn`` and ``emd`` use the eq 14 global weights as
marginals (TokenFlow's EMD), ``partial-ot`` is the dummy-point partial plan with those weights;
``omit`` keeps OMIT's own marginals and settings.
"""

from __future__ import annotations

import numpy as np
import ot
import torch
from torch import Tensor

from ._ops import safe_log
from ._ot import check_entropic, dummy_point_plan, log_sinkhorn, per_pair_plans
from ..tokens import Tokens
from .base import Aligner
from .partial_ot import uniform_marginals
from .registry import register_aligner

MARGINALS = ("uniform", "l2g")
SOLVERS = ("sinkhorn", "exact")


def local_to_global_marginals(v: Tokens, t: Tokens, tau: float, dtype) -> tuple[Tensor, Tensor]:
    """OMIT's local-to-global masses for a block: a [n, L1, m, 1], b [n, 1, m, L2].

    a[i, s, j] = softmax over real s of cos(mu_is, mean_t omega_jt) / tau, and the same for b with
    the roles swapped. ``v`` and ``t`` must have zeroed padding.
    """
    vf, tf = v.feats.to(dtype), t.feats.to(dtype)
    v_mean = torch.nn.functional.normalize(vf.sum(1), dim=-1)  # [n, D]: padding is zero
    t_mean = torch.nn.functional.normalize(tf.sum(1), dim=-1)  # [m, D]
    vn = torch.nn.functional.normalize(vf, dim=-1)
    tn = torch.nn.functional.normalize(tf, dim=-1)
    sa = torch.einsum("isd,jd->isj", vn, t_mean) / tau  # [n, L1, m]
    sb = torch.einsum("jtd,id->ijt", tn, v_mean) / tau  # [n, m, L2]
    sa = sa.masked_fill(~v.mask[:, :, None], float("-inf"))
    sb = sb.masked_fill(~t.mask[None], float("-inf"))
    return sa.softmax(1)[..., None], sb.softmax(2)[:, None]


def _exact(mass: float):
    def solve(cost: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        cost = cost - cost.min()  # a constant shift changes neither plan when the moved mass is fixed
        if mass >= 1.0:
            plan, log = ot.emd(a, b, cost, numItermax=1_000_000, log=True)
            if log["warning"] is not None:
                raise RuntimeError(f"exact OT solver failed on a {cost.shape} problem: {log['warning']}")
            return plan
        return ot.partial.partial_wasserstein(a, b, cost, m=mass)

    return solve


@register_aligner("omit")
class OMIT(Aligner):
    """OMIT's transport plan between visual fragments and words (see the module docstring).

    Args:
        marginals: ``"uniform"`` (default, the released code) or ``"l2g"`` (local-to-global).
        mass: moved mass m in (0, 1]; m < 1 is partial transport with a dummy point.
        solver: ``"sinkhorn"`` (entropic, default) or ``"exact"`` (linear program, plan constant).
        eps: entropic regularisation, OMIT's lambda (default 0.05).
        n_iter: Sinkhorn rounds (default 3, as released).
        tau: temperature of the local-to-global softmax (default 0.1).
    """

    def __init__(self, marginals: str = "uniform", mass: float = 1.0, solver: str = "sinkhorn", eps: float = 0.05,
                 n_iter: int = 3, tau: float = 0.1, chunk: int | None = None) -> None:
        super().__init__(chunk)
        if marginals not in MARGINALS:
            raise ValueError(f"omit: marginals must be one of {MARGINALS}, got {marginals!r}")
        if solver not in SOLVERS:
            raise ValueError(f"omit: solver must be one of {SOLVERS}, got {solver!r}")
        if not 0 < mass <= 1:
            raise ValueError(f"omit: mass must be in (0, 1], got {mass}")
        if not tau > 0:
            raise ValueError(f"omit: tau must be > 0, got {tau}")
        check_entropic("omit", eps, n_iter)
        self.marginals, self.mass, self.solver = marginals, float(mass), solver
        self.eps, self.n_iter, self.tau = float(eps), int(n_iter), float(tau)

    def hparams(self) -> dict:
        return {"marginals": self.marginals, "mass": self.mass, "solver": self.solver, "eps": self.eps,
                "n_iter": self.n_iter, "tau": self.tau}

    def plans(self, c: Tensor, v: Tokens, t: Tokens) -> tuple[Tensor, Tensor]:
        n, l1, m, l2 = c.shape
        if self.marginals == "l2g":
            a, b = local_to_global_marginals(v, t, self.tau, c.dtype)
        else:
            a, b = uniform_marginals(v, t, c.dtype)
            a, b = a.expand(n, l1, m, 1), b.expand(n, 1, m, l2)
        if self.solver == "exact":
            plan = per_pair_plans(1.0 - c, a, b, v, t, _exact(self.mass))
        elif self.mass < 1.0:
            plan = dummy_point_plan((c - 1.0) / self.eps, a, b, self.mass, self.n_iter, t.mask)
        else:
            plan = log_sinkhorn((c - 1.0) / self.eps, safe_log(a), safe_log(b), self.n_iter, t.mask[None, None]).exp()
        return plan, plan
