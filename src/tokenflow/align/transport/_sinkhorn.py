"""Entropic transport plans of many pairs at once: Sinkhorn's iterations on a block.

Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal Transport", NeurIPS 2013: the
plan T = diag(u) K diag(v) with K = exp(-C / eps), from the alternate updates u = a / (K v),
v = b / (K^T u). For mass m < 1, the partial problem by one dummy row and column of mass 1 - m
(zero cost, no dummy-to-dummy flow), as in Chapel, Alaya and Gasso, "Partial Optimal Transport
with Applications on Positive-Unlabeled Learning", NeurIPS 2020.

:func:`sinkhorn_plans` works on the pairs of a block laid out as [P = n*m, L1, L2]. The block's
log kernel -C / eps (with the dummy row and column for m < 1) is shifted by one constant to a
maximum of 0 (a constant factor on each pair's whole kernel, which u absorbs at every
iteration), so its entries lie in [exp(-R), 1] with R the block's spread of -C / eps (padding,
which holds c = 0, included; one min-max pass over c). When R is small enough for the dtype
(:data:`SCALING_RANGE`) it iterates in the scaling domain, two batched matrix-vector products
per iteration; otherwise in the log domain (log-sum-exp: Peyre and Cuturi, "Computational
Optimal Transport", Foundations and Trends in Machine Learning 2019, remark 4.23). Without
autograd the kernel is written in one pass over c, straight into the pair layout and a scratch
buffer reused by every block, and the score u^T (K * c) v never forms the plan. With a ``tol``,
the row-marginal error sum_s |T 1 - a|_s (the columns are exact after each update) is checked
every :data:`CHECK_EVERY` iterations; a pair whose error is <= tol is frozen (its own iteration
count, whatever block it sits in) and the rest go on, up to ``n_iter``. Without a ``tol`` it runs
exactly ``n_iter`` iterations (OMIT's three rounds are part of the method). Iterations start
from v = 1 on real columns and 0 on padding, as Sinkhorn on the real tokens alone would, so the
plan does not depend on padding at any iteration count.

Why not POT's batched solvers (``benchmarks/ot_solvers.py``): same speed as a log-domain loop,
but they start their scalings on padded columns too, so at a small fixed iteration count the
plan depends on the padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._ops import safe_log

__all__ = ["CHECK_EVERY", "SCALING_RANGE", "SinkhornResult", "sinkhorn_plans"]

#: Largest kernel range R = (max c - min c) / eps of a pair for which Sinkhorn runs in the scaling
#: domain. Kernel entries then lie in [exp(-R), 1] and the scalings u, v within about exp(+-R)
#: of the marginals, far from under- or overflow (float32 spans exp(+-87), float64 exp(+-708)).
SCALING_RANGE = {torch.float32: 30.0, torch.float64: 300.0}
#: Iterations between two convergence checks (each check is one host sync per block).
CHECK_EVERY = 5


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
