"""Transport plans: one family, one solver, five presets.

A transport plan moves the mass of the visual tokens onto the text tokens at least cost, and the
score of a pair is ``sum(c * T)`` (used in both directions, T_v2t = T_t2v = T):

    T = argmin_T  sum_{s,t} (1 - c[s, t]) T[s, t]  -  eps H(T)
        s.t.  T >= 0,  T 1 <= a,  T^T 1 <= b,  sum T = m          (T 1 = a, T^T 1 = b when m = 1)

The presets differ only in four options of :class:`Transport`:

============  ==========  ===============  ==========  ==========  =========================
preset        marginals   mass             solver      gradient    paper
============  ==========  ===============  ==========  ==========  =========================
``emd``       eq14        1                exact       plan-fixed  [TokenFlow] 3.3.1, eq 13-14;
                                                                   [DeepEMD]
``sinkhorn``  eq14        1                sinkhorn    unroll *    [Cuturi], entropic EMD
``partial-ot``eq14 **     0.9 *            sinkhorn    unroll      [OMIT]; [Chapel] (dummy point)
``omit``      uniform *   1 *              sinkhorn *  unroll      [OMIT]'s released setting:
                                                                   eps 0.05, 3 rounds
``assignment``uniform     1                sinkhorn *  unroll      [MPA];
                                                       ("hungarian" when ``exact=True``)
============  ==========  ===============  ==========  ==========  =========================

(* = a constructor argument of the preset; ** ``marginals="global"`` or ``"uniform"``.)

``marginals`` (:mod:`._marginals`)
    ``eq14``: a = normalise(max(d, 0)), b = normalise(max(e, 0)) with the local-to-global
    weights d[s] = mu_s . omega_bar and e[t] = mu_bar . omega_t of eq 14 (uniform mass for a side
    whose weights are all <= 0). ``uniform``: 1 / l over real tokens. ``l2g``: OMIT's
    local-to-global masses, a softmax at temperature ``tau`` of each token's cosine to the other
    side's mean embedding.
``mass``
    1: balanced transport. m < 1: only m moves between real tokens; the rest goes to a dummy
    point (one dummy row and column of mass 1 - m, zero cost, no dummy-to-dummy flow).
``solver``
    ``sinkhorn`` (:mod:`._sinkhorn`): entropic plan for a whole block of pairs at once.
    ``exact`` (:mod:`._exact`): the linear program, POT's network simplex per pair in float64
    (the partial problem by the same dummy construction), on a pool of processes for large
    blocks (:func:`exact_pool`: it forks while CUDA is not initialised and spawns after, see
    :func:`pool_start_method`; :func:`shutdown_pool` stops it, and runs at exit).
    ``hungarian``: the one-to-one matching of min(l1, l2) pairs, each weighted 1 / min(l1, l2).
    Every exact route raises when the solver reports a non-optimal or infeasible plan, never
    returns it.
``grad``
    ``unroll`` differentiates through the Sinkhorn iterations and the marginals;
    ``plan-fixed`` holds the plan constant (gradients reach the features through ``c`` only,
    as DeepEMD does); the exact solvers are always ``plan-fixed``.

The cost is ``1 - c`` for all presets (``-c`` for ``assignment`` in [MPA]): the two differ by a
constant, and since the moved mass is fixed, a constant never changes a plan, exact or entropic.

References:
    [TokenFlow] Zou, Wu, Cheng and Wang, "TokenFlow: Rethinking Fine-grained Cross-modal
    Alignment in Vision-Language Retrieval", arXiv 2022.
    [DeepEMD] Zhang, Cai, Lin and Shen, "DeepEMD: Few-Shot Image Classification with
    Differentiable Earth Mover's Distance and Structured Classifiers", CVPR 2020.
    [Cuturi] Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal Transport",
    NeurIPS 2013.
    [OMIT] Pan, Wang, Wu, Zhang, Bu and Chen, "Learning Image-Text Matching with Optimal
    Partial Transport", ICASSP 2025.
    [Chapel] Chapel, Alaya and Gasso, "Partial Optimal Transport with Applications on
    Positive-Unlabeled Learning", NeurIPS 2020.
    [MPA] Alomari, Sivakumar, Zhang and Thomas, "Maximal Matching Matters: Preventing
    Representation Collapse for Robust Cross-Modal Retrieval", ACL 2025 (Maximal Pair Assignment).
"""

from __future__ import annotations

import dataclasses
from dataclasses import replace

import torch
from torch import Tensor

from ...tokens import Tokens
from ..base import Aligner
from ..block import BlockContext, token_sim
from ..hparams import HParam
from ..registry import register_aligner
from ..results import Plan, Scores
from ._exact import exact_plans, exact_pool, exact_workers, pool_start_method, shutdown_pool
from ._marginals import MARGINALS, eq14_marginals, l2g_marginals, pair_layout, uniform_marginals
from ._sinkhorn import CHECK_EVERY, SCALING_RANGE, SinkhornResult, sinkhorn_plans

__all__ = [
    "CHECK_EVERY", "EMD", "MARGINALS", "OMIT", "SCALING_RANGE", "Assignment", "PartialOT", "Sinkhorn",
    "SinkhornResult", "Transport", "eq14_marginals", "exact_plans", "exact_pool", "exact_workers", "l2g_marginals",
    "pool_start_method", "shutdown_pool", "sinkhorn_plans", "uniform_marginals",
]

SOLVERS = ("sinkhorn", "exact", "hungarian")
GRAD_MODES = ("unroll", "plan-fixed")

# The presets' hyperparameters; each preset lists those it takes, with its own defaults.
_EPS = HParam("eps", float, 0.05, low=0.0, low_open=True, doc="entropic regularisation")
_N_ITER = HParam("n_iter", int, 100, low=1, doc="Sinkhorn iterations (the cap when tol is given)")
_TOL = HParam("tol", float, None, low=0.0, low_open=True, doc="row-marginal tolerance for stopping early "
              "(null: exactly n_iter)")
_MASS = HParam("mass", float, 1.0, low=0.0, high=1.0, low_open=True, doc="transported mass (< 1: partial transport)")


class Transport(Aligner):
    """Transport plan between token sets (see the module docstring for the options and presets).

    Args:
        marginals: ``"eq14"``, ``"uniform"`` or ``"l2g"``.
        mass: moved mass m in (0, 1].
        solver: ``"sinkhorn"``, ``"exact"`` or ``"hungarian"``.
        grad: ``"unroll"`` or ``"plan-fixed"`` (exact solvers: ``"plan-fixed"`` only).
        eps, n_iter, tol: Sinkhorn's regularisation, iteration cap and marginal tolerance.
        tau: temperature of the ``l2g`` marginals.
    """

    def __init__(self, marginals: str = "eq14", mass: float = 1.0, solver: str = "sinkhorn", grad: str = "unroll",
                 eps: float = 0.05, n_iter: int = 100, tol: float | None = None, tau: float = 0.1,
                 chunk: int | None = None) -> None:
        super().__init__(chunk)
        label = type(self).name or "transport"
        for opt, val, valid in (("marginals", marginals, MARGINALS), ("solver", solver, SOLVERS),
                                ("grad", grad, GRAD_MODES)):
            if val not in valid:
                raise ValueError(f"{label}: {opt} must be one of {valid}, got {val!r}")
        if not 0 < mass <= 1:
            raise ValueError(f"{label}: mass must be in (0, 1], got {mass}")
        if not tau > 0:
            raise ValueError(f"{label}: tau must be > 0, got {tau}")
        if not eps > 0:
            raise ValueError(f"{label}: eps must be > 0, got {eps}")
        if n_iter < 1:
            raise ValueError(f"{label}: n_iter must be >= 1, got {n_iter}")
        if tol is not None and not tol > 0:
            raise ValueError(f"{label}: tol must be > 0 or None, got {tol}")
        if solver != "sinkhorn" and grad != "plan-fixed":
            raise ValueError(f"{label}: the {solver} solver holds its plan fixed: grad must be 'plan-fixed'")
        if solver == "hungarian" and (mass < 1 or marginals != "uniform"):
            raise ValueError(f"{label}: the hungarian solver matches uniform masses one to one (mass 1)")
        self.marginals, self.mass, self.solver, self.grad = marginals, float(mass), solver, grad
        self.eps, self.n_iter, self.tau = float(eps), int(n_iter), float(tau)
        self.tol = None if tol is None else float(tol)

    def hparams(self) -> dict:
        return {"marginals": self.marginals, "mass": self.mass, "solver": self.solver, "grad": self.grad,
                "eps": self.eps, "n_iter": self.n_iter, "tol": self.tol, "tau": self.tau}

    def _masses(self, v: Tokens, t: Tokens, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        if self.marginals == "eq14":
            return eq14_marginals(v, t, dtype)
        if self.marginals == "l2g":
            return l2g_marginals(v, t, self.tau, dtype)
        return uniform_marginals(v, t, dtype)

    def solve(self, c: Tensor, v: Tokens, t: Tokens, ctx: BlockContext | None = None) -> SinkhornResult:
        """Plans of a block as [P = n*m, L1, L2] (pair (i, j) at i*m + j), with iterations and errors.
        With a no-grad ``ctx``, the Sinkhorn kernel lives in a reused scratch buffer."""
        n, l1, m, l2 = c.shape
        cp = c.permute(0, 2, 1, 3)  # [n, m, L1, L2], a view: the kernel's first pass writes it out
        fixed = self.grad == "plan-fixed"
        with torch.set_grad_enabled(torch.is_grad_enabled() and not fixed):
            a, b = pair_layout(*self._masses(v, t, c.dtype), n, l1, m, l2)
            cols = t.mask[None].expand(n, m, l2).reshape(n * m, l2)
            if self.solver == "sinkhorn":
                out = None
                if ctx is not None and ctx.reuse and not (torch.is_grad_enabled() and c.requires_grad):
                    extra = int(self.mass < 1.0)
                    out = ctx.scratch("kernel", (n * m, l1 + extra, l2 + extra), c.dtype)
                return sinkhorn_plans(cp, a, b, cols, self.eps, self.n_iter, self.tol, self.mass, out=out)
            cp = cp.reshape(n * m, l1, l2)
            rows = v.mask[:, None].expand(n, m, l1).reshape(n * m, l1)
            plan = exact_plans(cp, a, b, rows, cols, self.solver, self.mass)
            if self.solver == "hungarian":  # a matching: no marginal to meet
                err = plan.new_zeros(n * m)
            elif self.mass < 1.0:
                err = (plan.sum((1, 2)) - self.mass).abs()
            else:
                err = (plan.sum(2) - a).abs().sum(1)
            return SinkhornResult(torch.zeros(n * m, dtype=torch.long, device=c.device), err, given=plan)

    def plans(self, c: Tensor, v: Tokens, t: Tokens) -> tuple[Tensor, Tensor]:
        n, l1, m, l2 = c.shape
        plan = self.solve(c, v, t).plan.view(n, m, l1, l2).permute(0, 2, 1, 3)
        return plan, plan

    def block(self, v: Tokens, t: Tokens, ctx: BlockContext | None = None) -> tuple[Tensor, Tensor]:
        n, m = len(v), len(t)
        c = token_sim(v, t, ctx)
        res = self.solve(c, v, t, ctx)
        score = res.score(c.permute(0, 2, 1, 3)).view(n, m)
        if ctx is not None:
            worst = res.error.detach().amax()
            prev = getattr(ctx, "marginal_error", None)
            ctx.marginal_error = worst if prev is None else torch.maximum(prev, worst)
        return score, score

    def finish_scores(self, scores: Scores, ctx: BlockContext) -> Scores:
        worst = getattr(ctx, "marginal_error", None)
        return scores if worst is None else dataclasses.replace(scores, marginal_error=float(worst))

    def plan(self, vis: Tokens, txt: Tokens, *, check: bool = True) -> Plan:
        v, t, c = self._single_pair(vis, txt, check)
        res = self.solve(c, v, t)
        iters = int(res.iterations[0]) if self.solver == "sinkhorn" else None
        return self._plan_of(v, t, c, res.plan[0], res.plan[0], iterations=iters,
                             marginal_error=float(res.error[0]))


# -- presets --------------------------------------------------------------------------------------

@register_aligner("emd")
class EMD(Transport):
    """Exact optimal transport with the eq 14 marginals; no hyperparameters (TokenFlow's EMD, eq 13-14)."""

    hparam_specs: tuple[HParam, ...] = ()

    def __init__(self, chunk: int | None = None) -> None:
        super().__init__("eq14", 1.0, "exact", "plan-fixed", chunk=chunk)

    def hparams(self) -> dict:
        return {}


@register_aligner("sinkhorn")
class Sinkhorn(Transport):
    """Entropic OT with the eq 14 marginals (Cuturi, "Sinkhorn Distances: Lightspeed Computation of
    Optimal Transport", NeurIPS 2013).

    Args:
        eps: entropic regularisation (default 0.05, OMIT's kernel exp(-C / 0.05)).
        n_iter: iterations (default 100), the cap when ``tol`` is given.
        grad: ``"unroll"`` or ``"plan-fixed"``.
        tol: row-marginal tolerance for stopping early (default None: exactly ``n_iter``).
    """

    hparam_specs = (_EPS, _N_ITER, _TOL, HParam("grad", str, "unroll", choices=GRAD_MODES,
                                                doc="differentiate through the iterations, or hold the plan fixed"))

    def __init__(self, eps: float = 0.05, n_iter: int = 100, grad: str = "unroll", tol: float | None = None,
                 chunk: int | None = None) -> None:
        super().__init__("eq14", 1.0, "sinkhorn", grad, eps, n_iter, tol, chunk=chunk)

    def hparams(self) -> dict:
        return {"eps": self.eps, "n_iter": self.n_iter, "grad": self.grad, "tol": self.tol}


@register_aligner("partial-ot")
class PartialOT(Transport):
    """Entropic partial transport by the dummy point (Pan et al., "Learning Image-Text Matching with
    Optimal Partial Transport", ICASSP 2025; Chapel et al., NeurIPS 2020: see the module docstring).

    Args:
        mass: transported mass m in (0, 1] (default 0.9).
        eps: entropic regularisation (default 0.05). n_iter: iterations (default 50).
        marginals: ``"global"`` (eq 14) or ``"uniform"``.
        tol: row-marginal tolerance for stopping early (default None: exactly ``n_iter``).
    """

    PRESET_MARGINALS = {"global": "eq14", "uniform": "uniform"}
    hparam_specs = (
        replace(_MASS, default=0.9), _EPS, replace(_N_ITER, default=50), _TOL,
        HParam("marginals", str, "global", choices=tuple(PRESET_MARGINALS), doc="token masses: eq 14's "
               "local-to-global weights, or uniform"),
    )

    def __init__(self, mass: float = 0.9, eps: float = 0.05, n_iter: int = 50, marginals: str = "global",
                 tol: float | None = None, chunk: int | None = None) -> None:
        if marginals not in self.PRESET_MARGINALS:
            raise ValueError(f"partial-ot: marginals must be one of {tuple(self.PRESET_MARGINALS)}, got {marginals!r}")
        super().__init__(self.PRESET_MARGINALS[marginals], mass, "sinkhorn", "unroll", eps, n_iter, tol, chunk=chunk)
        self.preset_marginals = marginals

    def hparams(self) -> dict:
        return {"mass": self.mass, "eps": self.eps, "n_iter": self.n_iter, "marginals": self.preset_marginals,
                "tol": self.tol}


@register_aligner("omit")
class OMIT(Transport):
    """OMIT's plan (Pan et al., "Learning Image-Text Matching with Optimal Partial Transport",
    ICASSP 2025): the released setting by default.

    Args:
        marginals: ``"uniform"`` (default, the released code) or ``"l2g"`` (local-to-global).
        mass: moved mass m in (0, 1]; m < 1 is partial transport with a dummy point.
        solver: ``"sinkhorn"`` (default) or ``"exact"`` (linear program, plan constant).
        eps: OMIT's lambda (default 0.05). n_iter: Sinkhorn rounds (default 3, always all run:
            the few rounds are part of the method). tau: ``l2g`` temperature (default 0.1).
    """

    PRESET_MARGINALS = ("uniform", "l2g")
    PRESET_SOLVERS = ("sinkhorn", "exact")
    hparam_specs = (
        HParam("marginals", str, "uniform", choices=PRESET_MARGINALS, doc="token masses: uniform, or "
               "local-to-global (softmax at temperature tau)"),
        _MASS, HParam("solver", str, "sinkhorn", choices=PRESET_SOLVERS, doc="entropic, or the exact linear "
                                                                                "program (plan constant)"),
        replace(_EPS, doc="OMIT's lambda"), replace(_N_ITER, default=3, doc="Sinkhorn rounds, always all run"),
        HParam("tau", float, 0.1, low=0.0, low_open=True, doc="temperature of the l2g marginals"),
    )

    def __init__(self, marginals: str = "uniform", mass: float = 1.0, solver: str = "sinkhorn", eps: float = 0.05,
                 n_iter: int = 3, tau: float = 0.1, chunk: int | None = None) -> None:
        if marginals not in self.PRESET_MARGINALS:
            raise ValueError(f"omit: marginals must be one of {self.PRESET_MARGINALS}, got {marginals!r}")
        if solver not in self.PRESET_SOLVERS:
            raise ValueError(f"omit: solver must be one of {self.PRESET_SOLVERS}, got {solver!r}")
        grad = "plan-fixed" if solver == "exact" else "unroll"
        super().__init__(marginals, mass, solver, grad, eps, n_iter, None, tau, chunk=chunk)

    def hparams(self) -> dict:
        return {"marginals": self.marginals, "mass": self.mass, "solver": self.solver, "eps": self.eps,
                "n_iter": self.n_iter, "tau": self.tau}


@register_aligner("assignment")
class Assignment(Transport):
    """One-to-one matching of token sets: Maximal Pair Assignment (Alomari et al., "Maximal Matching
    Matters: Preventing Representation Collapse for Robust Cross-Modal Retrieval", ACL 2025) with
    uniform masses and a small eps; ``exact=True`` is the Hungarian method (plan constant).

    Args:
        eps: entropic regularisation (default 0.05). n_iter: iterations (default 50).
        exact: the Hungarian method instead of Sinkhorn.
        tol: row-marginal tolerance for stopping early (default None: exactly ``n_iter``).
    """

    hparam_specs = (_EPS, replace(_N_ITER, default=50), _TOL,
                    HParam("exact", bool, False, doc="the Hungarian method instead of Sinkhorn (plan constant)"))

    def __init__(self, eps: float = 0.05, n_iter: int = 50, exact: bool = False, tol: float | None = None,
                 chunk: int | None = None) -> None:
        solver, grad = ("hungarian", "plan-fixed") if exact else ("sinkhorn", "unroll")
        super().__init__("uniform", 1.0, solver, grad, eps, n_iter, tol, chunk=chunk)
        self.exact = bool(exact)

    def hparams(self) -> dict:
        return {"eps": self.eps, "n_iter": self.n_iter, "exact": self.exact, "tol": self.tol}
