"""Exact transport plans, pair by pair, and the pool of processes that solves large blocks.

``exact``: the linear program min sum (1 - c) T over T >= 0 with T 1 = a and T^T 1 = b, solved
by POT's network simplex (``emd_c``, the function ``ot.emd`` wraps: a quarter of the time per
12 x 32 problem; the algorithm of Bonneel, van de Panne, Paris and Heidrich, "Displacement
Interpolation Using Lagrangian Mass Transport", SIGGRAPH Asia 2011) in float64 on each pair's
real tokens. Mass m < 1 is the partial problem by one dummy point each side (Chapel, Alaya and
Gasso, "Partial Optimal Transport with Applications on Positive-Unlabeled Learning", NeurIPS
2020; POT's ``partial_wasserstein``). ``hungarian``: the one-to-one matching of min(l1, l2)
pairs, each weighted 1 / min(l1, l2) (scipy's ``linear_sum_assignment``). Every route raises
when the solver reports a non-optimal or infeasible plan, never returns it.

Blocks of at least :data:`POOL_MIN_PAIRS` pairs are solved on a persistent pool of processes
(:func:`exact_pool`; numbers in benchmarks/RESULTS.md): each worker builds its problems from a
run of the block's arrays, and optimality and feasibility are checked for the whole block at
once. The pool forks where that is safe and spawns once CUDA is initialised
(:func:`pool_start_method`); :func:`shutdown_pool` stops it, and runs at interpreter exit.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import warnings
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from torch import Tensor

from ...utils import usable_cores

__all__ = ["POOL_MIN_PAIRS", "START_METHODS", "exact_plans", "exact_pool", "exact_workers", "pool_start_method",
           "shutdown_pool"]

#: Blocks with fewer pairs than this are solved in this process (a pool round trip costs more):
#: measured with ``benchmarks/exact_pool.py --threshold`` on 2 cores, the pool of 2 breaks even
#: at 128 pairs of 12 x 32 tokens for emd and is 17 % faster for partial OT; at 64 it is slower.
POOL_MIN_PAIRS = 128
#: How the pool may start its processes (:func:`pool_start_method`).
START_METHODS = ("fork", "forkserver", "spawn")
_POOL: tuple[int, int, str, ProcessPoolExecutor] | None = None  # (pid, workers, start method, pool)


def exact_workers() -> int:
    """Processes for the exact solvers: ``TOKENFLOW_EXACT_WORKERS``, else the usable cores."""
    env = os.environ.get("TOKENFLOW_EXACT_WORKERS")
    if env:
        return max(1, int(env))
    return usable_cores()


def pool_start_method(method: str | None = None) -> str:
    """How the pool starts its processes: ``method``, else ``TOKENFLOW_EXACT_START_METHOD``, else
    ``"fork"`` where the platform has it and CUDA is not initialised in this process, else ``"spawn"``.

    fork starts a worker at once (the workers only run numpy, POT and scipy, never torch), but a
    process that has initialised CUDA must not fork: the pool then spawns fresh interpreters
    (each imports tokenflow once, a second or two), and an explicit ``"fork"`` falls back to
    ``"spawn"`` with a warning. ``"spawn"`` and ``"forkserver"`` need the usual
    ``if __name__ == "__main__":`` guard in a script that solves exact plans.
    """
    method = method or os.environ.get("TOKENFLOW_EXACT_START_METHOD") or None
    available = tuple(m for m in START_METHODS if m in multiprocessing.get_all_start_methods())
    cuda = torch.cuda.is_initialized()
    if method is None:
        return "fork" if "fork" in available and not cuda else "spawn"
    if method not in available:
        raise ValueError(f"the exact solvers' start method must be one of {available}, got {method!r}")
    if method == "fork" and cuda:
        warnings.warn("CUDA is initialised: the exact solvers' pool starts its processes with spawn, not fork",
                      RuntimeWarning, stacklevel=2)
        return "spawn"
    return method


def exact_pool(workers: int, start_method: str | None = None) -> ProcessPoolExecutor:
    """The pool of ``workers`` processes, started by ``start_method`` (:func:`pool_start_method`).

    It is kept for later blocks; a new one replaces it (the old one shut down) when the number of
    workers or the start method changes (e.g. fork before CUDA starts, spawn after), and a forked
    child process starts its own.
    """
    global _POOL
    method = pool_start_method(start_method)
    if _POOL is not None and _POOL[:3] == (os.getpid(), workers, method):
        return _POOL[3]
    shutdown_pool()
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))
    _POOL = (os.getpid(), workers, method, pool)
    return pool


def shutdown_pool(wait: bool = True) -> None:
    """Stop the pool's processes, if any (the next large block starts a new pool). Runs at
    interpreter exit; call it to free the processes sooner."""
    global _POOL
    held, _POOL = _POOL, None
    if held is not None and held[0] == os.getpid():  # a forked child never stops its parent's pool
        held[3].shutdown(wait=wait, cancel_futures=True)


atexit.register(shutdown_pool)

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
                workers: int | None = None, start_method: str | None = None) -> Tensor:
    """Exact plans of P pairs, each solved on its real tokens with mass, in float64.

    Args:
        c: [P, L1, L2] similarities (cost 1 - c); a, b: [P, L1], [P, L2]; row_real, col_real: masks.
        kind: ``"exact"`` (network simplex; partial for mass < 1) or ``"hungarian"``.
        workers: processes (default :func:`exact_workers`); blocks under ``POOL_MIN_PAIRS`` pairs
            are solved here. Each pair is solved by the same code either way: identical plans.
        start_method: how the pool starts its processes (default :func:`pool_start_method`).
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
        pool = exact_pool(workers, start_method)
        parts = list(pool.map(_solve_pairs, [kind] * len(runs), [mass] * len(runs),
                              *([x[r] for r in runs] for x in (cost, a_np, b_np, rows, cols))))
        plans, codes = np.concatenate([x[0] for x in parts]), np.concatenate([x[1] for x in parts])
    else:
        plans, codes = _solve_pairs(kind, mass, cost, a_np, b_np, rows, cols)
    _check_plans(kind, mass, plans, codes, a_np, b_np, rows, cols)
    return torch.from_numpy(plans).to(device=c.device, dtype=c.dtype)
