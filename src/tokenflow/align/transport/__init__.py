"""Transport plans: one family, one solver, five presets.

A transport plan moves the mass of the visual tokens onto the text tokens at least cost, and the
score of a pair is ``sum(c * T)`` (used in both directions, T_v2t = T_t2v = T):

    T = argmin_T  sum_{s,t} (1 - c[s, t]) T[s, t]  -  eps H(T)
        s.t.  T >= 0,  T 1 <= a,  T^T 1 <= b,  sum T = m          (T 1 = a, T^T 1 = b when m = 1)

The presets differ only in four options of :class:`Transport`:

============  ==========  ===============  ==========  ==========  =====================================
preset        marginals   mass             solver      gradient    paper
============  ==========  ===============  ==========  ==========  =====================================
``emd``       eq14        1                exact       plan-fixed  TokenFlow sec 3.3.1, eq 13-14;
                                                                   DeepEMD (Zhang et al. 2020)
``sinkhorn``  eq14        1                sinkhorn    unroll *    Cuturi 2013, entropic EMD
``partial-ot``eq14 **     0.9 *            sinkhorn    unroll      OMIT (Pan et al., seed 002);
                                                                   Chapel et al. 2020 (dummy point)
``omit``      uniform *   1 *              sinkhorn *  unroll      OMIT's released setting: eps 0.05,
                                                                   3 rounds (seed 002)
``assignment``uniform     1                sinkhorn *  unroll      Maximal Pair Assignment (seed 003);
                                                       ("hungarian" when ``exact=True``)
============  ==========  ===============  ==========  ==========  =====================================

(* = a constructor argument of the preset; ** ``marginals="global"`` or ``"uniform"``.)

``marginals``
    ``eq14``: a = normalise(max(d, 0)), b = normalise(max(e, 0)) with the local-to-global
    weights d[s] = mu_s . omega_bar and e[t] = mu_bar . omega_t of eq 14 (uniform mass for a side
    whose weights are all <= 0). ``uniform``: 1 / l over real tokens. ``l2g``: OMIT's
    local-to-global masses, a softmax at temperature ``tau`` of each token's cosine to the other
    side's mean embedding.
``mass``
    1: balanced transport. m < 1: only m moves between real tokens; the rest goes to a dummy
    point (one dummy row and column of mass 1 - m, zero cost, no dummy-to-dummy flow).
``solver``
    ``sinkhorn``: entropic plan for a whole block of pairs at once (below). ``exact``: the linear
    program, POT's network simplex per pair in float64 (the partial problem by the same dummy
    construction). ``hungarian``: the one-to-one matching of min(l1, l2) pairs, each weighted
    1 / min(l1, l2) (scipy's ``linear_sum_assignment``). Every exact route raises when the
    solver reports a non-optimal or infeasible plan, never returns it.
``grad``
    ``unroll`` differentiates through the Sinkhorn iterations and the marginals;
    ``plan-fixed`` holds the plan constant (gradients reach the features through ``c`` only,
    as DeepEMD does); the exact solvers are always ``plan-fixed``.

The cost is ``1 - c`` for all presets (``-c`` for ``assignment`` in seed 003): the two differ by a
constant, and since the moved mass is fixed, a constant never changes a plan, exact or entropic.

Sinkhorn (:func:`sinkhorn_plans`) works on the pairs of a block laid out as [P = n*m, L1, L2].
The block's log kernel -C / eps (with the dummy row and column for m < 1) is shifted by one
constant to a maximum of 0 (a constant factor on each pair's whole kernel, which u absorbs at
every iteration), so its entries lie in [exp(-R), 1] with R the block's spread of -C / eps
(padding, which holds c = 0, included; one min-max pass over c). When R is small enough for the
dtype (``SCALING_RANGE``) it iterates in the scaling domain, u = a / (K v), v = b / (K^T u),
two batched matrix-vector products per iteration; otherwise in the log domain (log-sum-exp,
Peyre & Cuturi 2019, remark 4.23). Without autograd the kernel is written in one pass over c,
straight into the pair layout and a scratch buffer reused by every block, and the score
u^T (K * c) v never forms the plan. With a ``tol``, the row-marginal error sum_s |T 1 - a|_s (the
columns are exact after each update) is checked every ``CHECK_EVERY`` iterations; a pair whose
error is <= tol is frozen (its own iteration count, whatever block it sits in) and the rest go
on, up to ``n_iter``. Without a ``tol`` it runs exactly ``n_iter`` iterations (OMIT's three
rounds are part of the method).
Iterations start from v = 1 on real columns and 0 on padding, as Sinkhorn on the real tokens
alone would, so the plan does not depend on padding at any iteration count.

Why not POT's batched solvers (``benchmarks/ot_solvers.py``): same speed as a log-domain loop,
but they start their scalings on padded columns too, so at a small fixed iteration count the
plan depends on the padding. Exact plans use POT's network simplex directly (``emd_c``, the
function ``ot.emd`` wraps: a quarter of the time per 12 x 32 problem), on a persistent pool of
processes for large blocks (:func:`exact_plans`; numbers in benchmarks/RESULTS.md); each worker
builds its problems from a run of the block's arrays, and optimality and feasibility are checked
for the whole block at once.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..tokens import Tokens
from ..utils import usable_cores
from ._ops import normalise_mass, safe_log
from .base import Aligner
from .block import BlockContext, global_weights, token_sim
from .registry import register_aligner
from .results import Plan, Scores

__all__ = [
    "EMD", "OMIT", "Assignment", "PartialOT", "Sinkhorn", "Transport", "exact_plans", "log_sinkhorn",
    "sinkhorn_plans",
]

MARGINALS = ("eq14", "uniform", "l2g")
SOLVERS = ("sinkhorn", "exact", "hungarian")
GRAD_MODES = ("unroll", "plan-fixed")

#: Largest kernel range R = (max c - min c) / eps of a pair for which Sinkhorn runs in the scaling
#: domain. Kernel entries then lie in [exp(-R), 1] and the scalings u, v within about exp(+-R)
#: of the marginals, far from under- or overflow (float32 spans exp(+-87), float64 exp(+-708)).
SCALING_RANGE = {torch.float32: 30.0, torch.float64: 300.0}
#: Iterations between two convergence checks (each check is one host sync per block).
CHECK_EVERY = 5


# -- marginals ------------------------------------------------------------------------------------

def eq14_marginals(v: Tokens, t: Tokens, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Eq 14 weights clamped at zero and normalised over real tokens: a [n, L1, m, 1], b [n, 1, m, L2]."""
    d, e = (w.to(dtype) for w in global_weights(v, t))
    return normalise_mass(d, v.mask[:, :, None, None], dim=1), normalise_mass(e, t.mask[None, None], dim=3)


def uniform_marginals(v: Tokens, t: Tokens, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """1/l1 and 1/l2 over real tokens: a [n, L1, 1, 1], b [1, 1, m, L2] (broadcast over pairs)."""
    vm, tm = v.mask.to(dtype), t.mask.to(dtype)
    return (vm / vm.sum(1, keepdim=True))[:, :, None, None], (tm / tm.sum(1, keepdim=True))[None, None]


def l2g_marginals(v: Tokens, t: Tokens, tau: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """OMIT's local-to-global masses: a [n, L1, m, 1], b [n, 1, m, L2]; ``v``, ``t`` zero-padded.

    a[i, s, j] = softmax over real s of cos(mu_is, mean_t omega_jt) / tau, and b the same with the
    roles swapped.
    """
    vf, tf = v.feats.to(dtype), t.feats.to(dtype)
    v_mean = torch.nn.functional.normalize(vf.sum(1), dim=-1)  # [n, D]: padding is zero
    t_mean = torch.nn.functional.normalize(tf.sum(1), dim=-1)  # [m, D]
    vn, tn = torch.nn.functional.normalize(vf, dim=-1), torch.nn.functional.normalize(tf, dim=-1)
    sa = torch.einsum("isd,jd->isj", vn, t_mean) / tau  # [n, L1, m]
    sb = torch.einsum("jtd,id->ijt", tn, v_mean) / tau  # [n, m, L2]
    sa = sa.masked_fill(~v.mask[:, :, None], float("-inf"))
    sb = sb.masked_fill(~t.mask[None], float("-inf"))
    return sa.softmax(1)[..., None], sb.softmax(2)[:, None]


def _pair_layout(a: Tensor, b: Tensor, n: int, l1: int, m: int, l2: int) -> tuple[Tensor, Tensor]:
    """Marginals [n, L1, m, 1] and [n, 1, m, L2] (or broadcastable) as [P, L1] and [P, L2]."""
    a = a.expand(n, l1, m, 1)[..., 0].permute(0, 2, 1).reshape(n * m, l1)
    b = b.expand(n, 1, m, l2)[:, 0].reshape(n * m, l2)
    return a, b


# -- Sinkhorn -------------------------------------------------------------------------------------

@dataclass
class SinkhornResult:
    """Plans of P pairs with the iterations each pair ran and its final row-marginal error [P].

    A Sinkhorn plan is kept as its scalings, T = diag(u) K diag(v) (``exp(k + u + v)`` in the log
    domain) restricted to the real block [L1, L2]: :attr:`plan` forms it, :meth:`score` gives
    sum(T * c) per pair without forming it. An exact plan is given as is (``given``).
    """

    iterations: Tensor
    error: Tensor
    kernel: Tensor | None = None  # [P, R, S]: K (scaling domain) or log K (log domain)
    u: Tensor | None = None  # [P, R]
    v: Tensor | None = None  # [P, S]
    log_domain: bool = False
    real: tuple[int, int] = (0, 0)  # (L1, L2): R, S less the dummy row and column
    given: Tensor | None = None  # [P, L1, L2]

    @property
    def plan(self) -> Tensor:
        """[P, L1, L2]."""
        if self.given is None:
            if self.kernel is None:
                raise RuntimeError("this plan's kernel was overwritten by score(): ask for the plan first")
            l1, l2 = self.real
            k, u, v = self.kernel[:, :l1, :l2], self.u[:, :l1, None], self.v[:, None, :l2]
            self.given = (k + u + v).exp() if self.log_domain else u * k * v
        return self.given

    def score(self, c: Tensor) -> Tensor:
        """sum_{s,t} T[s, t] c[s, t] per pair: [P]. ``c`` is [..., L1, L2] with P leading
        elements (a strided view is fine). Without autograd, a scaling-domain plan is never
        formed: u^T (K * c) v, with K * c written over the kernel (so :attr:`plan` is then
        unavailable unless it was asked for first)."""
        flat = c.shape[:-2].numel()
        if self.given is not None or self.log_domain or (
            torch.is_grad_enabled() and any(x.requires_grad for x in (c, self.kernel, self.u, self.v))
        ):
            return (self.plan.view(c.shape) * c).sum((-2, -1)).reshape(flat)
        l1, l2 = self.real
        w = self.kernel[:, :l1, :l2]
        w.unflatten(0, c.shape[:-2]).mul_(c)
        self.kernel = None  # overwritten
        return torch.bmm(w, self.v[:, :l2, None])[:, :, 0].mul_(self.u[:, :l1]).sum(1)


def sinkhorn_plans(c: Tensor, a: Tensor, b: Tensor, col_real: Tensor, eps: float, n_iter: int,
                   tol: float | None = None, mass: float = 1.0, domain: str = "auto",
                   out: Tensor | None = None) -> SinkhornResult:
    """Entropic transport plans of P pairs at once.

    Args:
        c: similarities [..., L1, L2] with P leading elements, e.g. [P, L1, L2] or a block's
            permuted view [n, m, L1, L2] (padding holds any bounded value, e.g. 0); cost 1 - c.
        a, b: masses [P, L1], [P, L2], zero at padding and at tokens without mass, each summing
            to one per pair.
        col_real: [P, L2] real columns (where iterations start from v = 1).
        eps: entropic regularisation. n_iter: iterations (the cap when ``tol`` is given).
        tol: stop a pair once its row-marginal error is <= tol (checked every ``CHECK_EVERY``).
        mass: moved mass m; m < 1 adds the dummy point.
        domain: ``"auto"`` (scaling where ``SCALING_RANGE`` allows, else log), ``"scaling"``, ``"log"``.
        out: optional [P, L1 (+1), L2 (+1)] buffer for the kernel (only without autograd).

    Returns:
        :class:`SinkhornResult`; its plans are over the real tokens, [P, L1, L2].
    """
    l1, l2 = c.shape[-2:]
    p, partial = c.shape[:-2].numel(), mass < 1.0
    with torch.no_grad():
        lo, hi = (float(x) for x in torch.aminmax(c)) if c.numel() else (0.0, 0.0)
    # The log kernel -C / eps = (c - 1) / eps spans [kmin, kmax] (the dummy's is 0). Multiplying
    # a pair's whole kernel by a constant is absorbed by u at every iteration, so it is shifted
    # to a maximum of 0: entries in [exp(-R), 1], R = kmax - kmin. (Only the whole kernel: scaling
    # the real block alone would change a partial plan at a finite iteration count.)
    kmin, kmax = (lo - 1.0) / eps, (hi - 1.0) / eps
    if partial:
        kmin, kmax = min(kmin, 0.0), max(kmax, 0.0)
    if domain == "auto":
        domain = "scaling" if kmax - kmin <= SCALING_RANGE.get(c.dtype, 0.0) else "log"
    if domain not in ("scaling", "log"):
        raise ValueError(f"domain must be one of ('auto', 'scaling', 'log'), got {domain!r}")
    scaling, shift = domain == "scaling", 1.0 + eps * kmax  # (c - shift) / eps = log K - kmax
    if torch.is_grad_enabled() and c.requires_grad:
        k = ((c - shift) / eps).reshape(p, l1, l2)
        if partial:  # one dummy row and column at cost 0, no dummy-to-dummy flow
            k = torch.nn.functional.pad(k, (0, 1, 0, 1), value=-kmax)
            corner = torch.zeros(l1 + 1, l2 + 1, dtype=k.dtype, device=k.device)
            corner[l1, l2] = float("-inf")
            k = k + corner
        k = k.exp() if scaling else k
    else:  # in place, in one buffer; reading the (strided) c writes the pair layout
        k = out if out is not None else c.new_empty(p, l1 + partial, l2 + partial)
        body = k[:, :l1, :l2]
        torch.sub(c, shift, out=body.unflatten(0, c.shape[:-2]))
        body.div_(eps)
        if partial:
            k[:, l1].fill_(-kmax)
            k[:, :l1, l2].fill_(-kmax)
            k[:, l1, l2] = float("-inf")
        if scaling:
            k.exp_()
    if partial:
        a = torch.cat([a, a.new_full((p, 1), 1.0 - mass)], 1)
        b = torch.cat([b, b.new_full((p, 1), 1.0 - mass)], 1)
        col_real = torch.nn.functional.pad(col_real, (0, 1), value=True)
    return _iterate(k, a, b, col_real, n_iter, tol, scaling, (l1, l2))


def _domain(kern: Tensor, a: Tensor, b: Tensor, col_real: Tensor, scaling: bool):
    """The marginals, the starting v and the three steps of Sinkhorn in the scaling domain (K
    itself) or in the log domain (log K): K x, one (u, v) update, and the row-marginal error."""
    if scaling:
        v = col_real.to(kern.dtype)
        # K^T u: torch's batched product of tiny matrices reads K^T with a stride and is about
        # half as fast as the product and sum, but saves nothing for the backward pass.
        tracked = torch.is_grad_enabled() and any(x.requires_grad for x in (kern, a, b))

        def matvec(kk, x):  # K x, [P, R]
            return torch.bmm(kk, x[:, :, None])[:, :, 0]

        def update(kk, aa, bb, kv):  # u = a / K v, v = b / K^T u
            u = aa / kv
            ktu = torch.bmm(u[:, None, :], kk)[:, 0] if tracked else (kk * u[:, :, None]).sum(1)
            return u, bb / ktu

        def row_error(u, kv, aa):
            return (u * kv - aa).abs().sum(1)

        return a, b, v, matvec, update, row_error
    a, b = safe_log(a), safe_log(b)
    v = torch.zeros_like(b).masked_fill(~col_real, float("-inf"))

    def matvec(kk, x):  # log K x
        return torch.logsumexp(kk + x[:, None, :], 2)

    def update(kk, aa, bb, kv):
        u = aa - kv
        return u, bb - torch.logsumexp(kk + u[:, :, None], 1)

    def row_error(u, kv, aa):
        return ((u + kv).exp() - aa.exp()).abs().sum(1)

    return a, b, v, matvec, update, row_error


def _iterate(kern: Tensor, a: Tensor, b: Tensor, col_real: Tensor, n_iter: int, tol: float | None,
             scaling: bool, real: tuple[int, int]) -> SinkhornResult:
    """Sinkhorn on the kernel (scaling) or log kernel ``kern`` [P, R, S]; with a ``tol``, converged
    pairs are frozen and dropped from the work."""
    p = kern.shape[0]
    a, b, v, matvec, update, row_error = _domain(kern, a, b, col_real, scaling)
    idx = torch.arange(p, device=kern.device)
    done: list[tuple[Tensor, Tensor, Tensor, int, Tensor]] = []  # (pairs, u, v, iterations, error)
    ka, aa, bb = kern, a, b
    kv = matvec(ka, v)
    for it in range(1, n_iter + 1):
        u, v = update(ka, aa, bb, kv)
        kv = matvec(ka, v)
        last = it == n_iter
        if not last and (tol is None or it % CHECK_EVERY):
            continue
        with torch.no_grad():
            err = row_error(u, kv, aa)
            conv = err <= tol if tol is not None else torch.ones_like(err, dtype=torch.bool)
            n_conv = len(idx) if last else int(conv.sum())
        if n_conv == len(idx):
            done.append((idx, u, v, it, err))
            break
        if n_conv:
            keep = ~conv
            done.append((idx[conv], u[conv], v[conv], it, err[conv]))
            idx, ka, aa, bb, v, kv = idx[keep], ka[keep], aa[keep], bb[keep], v[keep], kv[keep]
    if len(done) == 1:
        _, u, v, it, err = done[0]
        iters = torch.full((p,), it, dtype=torch.long, device=kern.device)
    else:
        order = torch.cat([d[0] for d in done]).argsort()
        u = torch.cat([d[1] for d in done])[order]
        v = torch.cat([d[2] for d in done])[order]
        err = torch.cat([d[4] for d in done])[order]
        iters = torch.cat([torch.full_like(d[0], d[3]) for d in done])[order]
    return SinkhornResult(iters, err, kern, u, v, not scaling, real)


def log_sinkhorn(k: Tensor, log_a: Tensor, log_b: Tensor, n_iter: int, col_mask: Tensor) -> Tensor:
    """Log of the entropic plans of a block in the [n, L1, m, L2] layout, exactly ``n_iter``
    log-domain iterations (kept for callers of the block layout; the plans use :func:`sinkhorn_plans`).

    ``k = -C / eps`` [n, L1, m, L2]; ``log_a`` [n, L1, m, 1], ``log_b`` [n, 1, m, L2] (-inf without
    mass); ``col_mask`` broadcastable to ``log_b``: the real columns.
    """
    n, l1, m, l2 = k.shape
    kp = k.permute(0, 2, 1, 3).reshape(n * m, l1, l2)
    la, lb = _pair_layout(log_a, log_b, n, l1, m, l2)
    cols = col_mask.expand(n, 1, m, l2)[:, 0].reshape(n * m, l2)
    res = _iterate(kp, la.exp(), lb.exp(), cols, n_iter, None, False, (l1, l2))
    return res.plan.clamp_min(0).log().view(n, m, l1, l2).permute(0, 2, 1, 3)


# -- exact solvers --------------------------------------------------------------------------------

#: Blocks with fewer pairs than this are solved in this process (a pool round trip costs more):
#: measured with ``benchmarks/exact_pool.py --threshold`` on 2 cores, the pool of 2 breaks even
#: at 128 pairs of 12 x 32 tokens for emd and is 17 % faster for partial OT; at 64 it is slower.
POOL_MIN_PAIRS = 128
_POOL: tuple[int, int, ProcessPoolExecutor] | None = None  # (pid, workers, pool)


def exact_workers() -> int:
    """Processes for the exact solvers: ``TOKENFLOW_EXACT_WORKERS``, else the usable cores."""
    env = os.environ.get("TOKENFLOW_EXACT_WORKERS")
    if env:
        return max(1, int(env))
    return usable_cores()


def _pool(workers: int) -> ProcessPoolExecutor:
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid() or _POOL[1] != workers:
        # fork: the workers start at once and only run numpy, POT and scipy (never torch).
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        _POOL = (os.getpid(), workers, ProcessPoolExecutor(workers, mp_context=ctx))
    return _POOL[2]


#: emd_c's result code for an optimal plan (POT's ``ot.lp.emd_wrap.check_result`` reads the others).
OPTIMAL = 1


def _solve_pairs(kind: str, mass: float, cost: np.ndarray, a: np.ndarray, b: np.ndarray, rows: np.ndarray,
                 cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact plans of a run of pairs, each on its tokens with mass (``rows``, ``cols``).

    ``cost`` [P, L1, L2], ``a`` [P, L1], ``b`` [P, L2] in float64. Returns the plans [P, L1, L2]
    (zero off the problem) and the solver's result codes [P]; :func:`_check_plans` judges them.
    """
    p, l1, l2 = cost.shape
    out, codes = np.zeros((p, l1, l2)), np.full(p, OPTIMAL)
    whole = rows.all(1) & cols.all(1)  # most pairs: no index arrays to build
    if kind == "hungarian":
        from scipy.optimize import linear_sum_assignment
    else:
        from ot.lp.emd_wrap import emd_c
    for q in range(p):
        if whole[q]:
            r = s = slice(None)
            cq = cost[q]
        else:
            r, s = rows[q].nonzero()[0], cols[q].nonzero()[0]
            cq = cost[q].take(r, 0).take(s, 1)
        cq = cq - cq.min()  # a constant shift changes no plan when the moved mass is fixed
        if kind == "hungarian":
            i, j = linear_sum_assignment(cq)
            plan = np.zeros_like(cq)
            plan[i, j] = 1.0 / min(cq.shape)
        else:
            aq, bq = a[q, r], b[q, s]
            aq, bq = aq / aq.sum(), bq / bq.sum()  # in float64, so the solver sees equal total masses
            if mass < 1.0:  # POT's partial_wasserstein: one dummy point each side, a dear dummy-to-dummy cost
                ext = np.zeros((cq.shape[0] + 1, cq.shape[1] + 1))
                ext[:-1, :-1] = cq
                ext[-1, -1] = 2.0 * cq.max()
                plan, _, _, _, codes[q] = emd_c(np.append(aq, 1.0 - mass), np.append(bq, 1.0 - mass), ext,
                                                1_000_000, 1)
                plan = plan[:-1, :-1]
            else:
                plan, _, _, _, codes[q] = emd_c(aq, bq, cq, 1_000_000, 1)
        if whole[q]:
            out[q] = plan
        else:
            out[q, r[:, None], s[None, :]] = plan
    return out, codes


def _check_plans(kind: str, mass: float, plans: np.ndarray, codes: np.ndarray, a: np.ndarray, b: np.ndarray,
                 rows: np.ndarray, cols: np.ndarray) -> None:
    """Raise unless every plan is optimal (by the solver's code) and feasible, for the whole run at once."""
    slack = 1e-9
    row_sum, col_sum, total = plans.sum(2), plans.sum(1), plans.sum((1, 2))
    ok = (codes == OPTIMAL) & np.isfinite(plans).all((1, 2)) & (plans.min((1, 2)) >= -slack)
    if kind == "hungarian":  # a matching of k = min(l1, l2) pairs, each 1 / k
        k = np.minimum(rows.sum(1), cols.sum(1))[:, None]
        ok &= (np.abs(total - 1.0) <= slack) & ((row_sum - 1.0 / k).max(1) <= slack)
        ok &= (col_sum - 1.0 / k).max(1) <= slack
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            a_n = np.where(rows, a, 0.0) / np.where(rows, a, 0.0).sum(1, keepdims=True)
            b_n = np.where(cols, b, 0.0) / np.where(cols, b, 0.0).sum(1, keepdims=True)
        ok &= (np.abs(total - min(mass, 1.0)) <= slack) & ((row_sum - a_n).max(1) <= slack)
        ok &= (col_sum - b_n).max(1) <= slack
        if mass >= 1.0:
            ok &= ((a_n - row_sum).max(1) <= slack) & ((b_n - col_sum).max(1) <= slack)
    if not ok.all():
        q = int(np.flatnonzero(~ok)[0])
        with warnings.catch_warnings():  # POT warns and returns the message: we raise it instead
            warnings.simplefilter("ignore")
            from ot.lp.emd_wrap import check_result

            why = check_result(int(codes[q])) if codes[q] in (0, 2, 3) else None
        raise RuntimeError(f"exact OT solver failed on pair {q}, a {int(rows[q].sum())} x {int(cols[q].sum())} "
                           f"problem (mass {mass}): {why or 'the plan breaks its constraints'}")


def exact_plans(c: Tensor, a: Tensor, b: Tensor, row_real: Tensor, col_real: Tensor, kind: str, mass: float = 1.0,
                workers: int | None = None) -> Tensor:
    """Exact plans of P pairs, each solved on its real tokens with mass, in float64.

    Args:
        c: [P, L1, L2] similarities (cost 1 - c); a, b: [P, L1], [P, L2]; row_real, col_real: masks.
        kind: ``"exact"`` (network simplex; partial for mass < 1) or ``"hungarian"``.
        workers: processes (default :func:`exact_workers`); blocks under ``POOL_MIN_PAIRS`` pairs
            are solved here. Each pair is solved by the same code either way: identical plans.
    Returns:
        [P, L1, L2] plans in ``c``'s dtype and device, zero at padding, no gradient. Raises if any
        plan is not optimal and feasible.
    """
    p = c.shape[0]
    cost = (1.0 - c.detach()).to("cpu", torch.float64).numpy()
    # Masks of the tokens that take part, for the whole block at once (not pair by pair).
    rows = (row_real & (a > 0)).cpu().numpy()
    cols = (col_real & (b > 0)).cpu().numpy()
    a_np = a.detach().to("cpu", torch.float64).numpy()
    b_np = b.detach().to("cpu", torch.float64).numpy()
    workers = exact_workers() if workers is None else workers
    if workers > 1 and p >= POOL_MIN_PAIRS:
        # The workers take contiguous runs of the block's arrays (a few runs per worker balance
        # the load) and build their problems themselves.
        size = -(-p // (4 * workers))
        runs = [slice(i, i + size) for i in range(0, p, size)]
        parts = list(_pool(workers).map(_solve_pairs, [kind] * len(runs), [mass] * len(runs),
                                        *([x[r] for r in runs] for x in (cost, a_np, b_np, rows, cols))))
        plans, codes = np.concatenate([x[0] for x in parts]), np.concatenate([x[1] for x in parts])
    else:
        plans, codes = _solve_pairs(kind, mass, cost, a_np, b_np, rows, cols)
    _check_plans(kind, mass, plans, codes, a_np, b_np, rows, cols)
    return torch.from_numpy(plans).to(device=c.device, dtype=c.dtype)


# -- the aligner ----------------------------------------------------------------------------------

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
            a, b = _pair_layout(*self._masses(v, t, c.dtype), n, l1, m, l2)
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
    """Exact optimal transport with the eq 14 marginals; no hyperparameters (TokenFlow's EMD)."""

    def __init__(self, chunk: int | None = None) -> None:
        super().__init__("eq14", 1.0, "exact", "plan-fixed", chunk=chunk)

    def hparams(self) -> dict:
        return {}


@register_aligner("sinkhorn")
class Sinkhorn(Transport):
    """Entropic OT with the eq 14 marginals.

    Args:
        eps: entropic regularisation (default 0.05, OMIT's kernel exp(-C / 0.05)).
        n_iter: iterations (default 100), the cap when ``tol`` is given.
        grad: ``"unroll"`` or ``"plan-fixed"``.
        tol: row-marginal tolerance for stopping early (default None: exactly ``n_iter``).
    """

    def __init__(self, eps: float = 0.05, n_iter: int = 100, grad: str = "unroll", tol: float | None = None,
                 chunk: int | None = None) -> None:
        super().__init__("eq14", 1.0, "sinkhorn", grad, eps, n_iter, tol, chunk=chunk)

    def hparams(self) -> dict:
        return {"eps": self.eps, "n_iter": self.n_iter, "grad": self.grad, "tol": self.tol}


@register_aligner("partial-ot")
class PartialOT(Transport):
    """Entropic partial transport by the dummy point (OMIT; Chapel et al. 2020).

    Args:
        mass: transported mass m in (0, 1] (default 0.9).
        eps: entropic regularisation (default 0.05). n_iter: iterations (default 50).
        marginals: ``"global"`` (eq 14) or ``"uniform"``.
        tol: row-marginal tolerance for stopping early (default None: exactly ``n_iter``).
    """

    PRESET_MARGINALS = {"global": "eq14", "uniform": "uniform"}

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
    """OMIT's plan (Pan et al., seed 002): the released setting by default.

    Args:
        marginals: ``"uniform"`` (default, the released code) or ``"l2g"`` (local-to-global).
        mass: moved mass m in (0, 1]; m < 1 is partial transport with a dummy point.
        solver: ``"sinkhorn"`` (default) or ``"exact"`` (linear program, plan constant).
        eps: OMIT's lambda (default 0.05). n_iter: Sinkhorn rounds (default 3, always all run:
            the few rounds are part of the method). tau: ``l2g`` temperature (default 0.1).
    """

    PRESET_MARGINALS = ("uniform", "l2g")
    PRESET_SOLVERS = ("sinkhorn", "exact")

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
    """One-to-one matching of token sets (Maximal Pair Assignment, seed 003): uniform masses,
    a small eps; ``exact=True`` is the Hungarian method (plan constant).

    Args:
        eps: entropic regularisation (default 0.05). n_iter: iterations (default 50).
        exact: the Hungarian method instead of Sinkhorn.
        tol: row-marginal tolerance for stopping early (default None: exactly ``n_iter``).
    """

    def __init__(self, eps: float = 0.05, n_iter: int = 50, exact: bool = False, tol: float | None = None,
                 chunk: int | None = None) -> None:
        solver, grad = ("hungarian", "plan-fixed") if exact else ("sinkhorn", "unroll")
        super().__init__("uniform", 1.0, solver, grad, eps, n_iter, tol, chunk=chunk)
        self.exact = bool(exact)

    def hparams(self) -> dict:
        return {"eps": self.eps, "n_iter": self.n_iter, "exact": self.exact, "tol": self.tol}
