"""Transport solvers shared by the ``emd``, ``sinkhorn``, ``partial-ot``, ``omit`` and ``assignment`` plans.

Two routes:

* :func:`log_sinkhorn`: entropic OT for a whole block of pairs at once, in the block layout
  [n, L1, m, L2], in the log domain (stable for small epsilon, and exact zeros for padded or
  zero-mass tokens through -inf log-marginals). It is differentiable by unrolling.
* :func:`per_pair_plans`: an exact solver (POT's network simplex, or the Hungarian method)
  called pair by pair on the real tokens, in float64 on the CPU. The plans it returns are
  constants; gradients reach the features through ``c`` only, as DeepEMD and DIML do.

Why our own batched Sinkhorn rather than POT's (``benchmarks/ot_solvers.py``, numbers in
benchmarks/RESULTS.md): on 1000 problems of 20 x 30 with 100 iterations, POT 0.9.7's batched
``ot.batch.solve_batch`` and this function take the same time (~0.4 s on 2 cores) and give the
same plans, about 110x faster than POT's single-problem ``ot.sinkhorn`` called in a loop. Speed
is therefore not the reason. Padding is: POT starts its scalings on every column, padded ones
included, so at a small fixed iteration count (OMIT uses 3) its plan depends on how much padding
a batch has (two padded columns moved a 5-iteration plan by 2e-3). This function starts on the
real tokens only, so scores are padding-invariant at any iteration count (tested), and it works
in place on the block layout, with the dummy point of partial transport as one more column.
The exact route uses POT's ``ot.emd`` directly: the reference network simplex, ~0.17 ms per
20 x 30 problem here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ._ops import safe_log
from ..tokens import Tokens


def check_entropic(plan: str, eps: float, n_iter: int) -> None:
    """Validate the entropic solver settings shared by the Sinkhorn-based plans."""
    if not eps > 0:
        raise ValueError(f"{plan}: eps must be > 0, got {eps}")
    if n_iter < 1:
        raise ValueError(f"{plan}: n_iter must be >= 1, got {n_iter}")


def log_sinkhorn(k: Tensor, log_a: Tensor, log_b: Tensor, n_iter: int, col_mask: Tensor) -> Tensor:
    """Log of the entropic OT plan for every pair of a block.

    Solves min_T <T, C> - eps H(T) s.t. T 1 = a, T^T 1 = b, given the log kernel ``k = -C / eps``
    as [n, L1, m, L2], ``log_a`` [n, L1, m, 1] and ``log_b`` [n, 1, m, L2] (-inf where a token
    carries no mass). Alternating scaling updates in the log domain (Cuturi 2013; Peyre & Cuturi
    2019, remark 4.23); after the last update the column marginals hold exactly.
    ``col_mask`` (broadcastable to ``log_b``) marks the real columns: iterations start from
    v = 1 on those and 0 on padding, as plain Sinkhorn on the real tokens alone would.
    """
    u = torch.zeros_like(log_a)
    v = torch.zeros_like(log_b).masked_fill(~col_mask, float("-inf"))
    for _ in range(n_iter):
        u = log_a - torch.logsumexp(k + v, dim=3, keepdim=True)
        v = log_b - torch.logsumexp(k + u, dim=1, keepdim=True)
    return k + u + v


def dummy_point_plan(k: Tensor, a: Tensor, b: Tensor, mass: float, n_iter: int, t_mask: Tensor) -> Tensor:
    """Entropic partial transport of mass ``mass`` by the dummy-point construction.

    Chapel et al. 2020 (POT's ``partial_wasserstein``): one dummy row and one dummy column of
    mass ``1 - mass`` each, zero cost to or from the dummy, and no dummy-to-dummy flow, so that
    exactly ``mass`` moves between real tokens (the row marginals up to Sinkhorn's tolerance).
    ``k`` is the log kernel -C / eps of the real tokens [n, L1, m, L2]; ``a`` [n, L1, m, 1] and
    ``b`` [n, 1, m, L2] hold unit masses over real tokens; ``t_mask`` [m, L2] marks real text
    tokens. Returns the plan of the real block, [n, L1, m, L2].
    """
    n, l1, m, l2 = k.shape
    rest = 1.0 - mass
    a = torch.cat([a.expand(n, l1, m, 1), a.new_full((n, 1, m, 1), rest)], 1)
    b = torch.cat([b.expand(n, 1, m, l2), b.new_full((n, 1, m, 1), rest)], 3)
    k = torch.nn.functional.pad(k, (0, 1, 0, 0, 0, 1))  # the dummy row and column: cost 0
    corner = torch.zeros(1, l1 + 1, 1, l2 + 1, dtype=k.dtype, device=k.device)
    corner[0, l1, 0, l2] = float("-inf")  # no mass from dummy to dummy
    cols = torch.nn.functional.pad(t_mask, (0, 1), value=True)[None, None]  # the dummy column is real
    return log_sinkhorn(k + corner, safe_log(a), safe_log(b), n_iter, cols).exp()[:, :l1, :, :l2]


Solver = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def per_pair_plans(cost: Tensor, a: Tensor, b: Tensor, v: Tokens, t: Tokens, solve: Solver) -> Tensor:
    """Run ``solve(M, a, b) -> plan`` on the real tokens of every pair of a block.

    Args:
        cost: [n, L1, m, L2]; a: [n, L1, m, 1]; b: [n, 1, m, L2] (any dtype or device).
    Returns:
        Plans as [n, L1, m, L2] in ``cost``'s dtype and device, zero at padding, no gradient.
    """
    n, l1, m, l2 = cost.shape
    cost_np = cost.detach().to("cpu", torch.float64).numpy()
    a_np = a.detach().to("cpu", torch.float64).numpy()[..., 0]  # [n, L1, m]
    b_np = b.detach().to("cpu", torch.float64).numpy()[:, 0]  # [n, m, L2]
    vmask, tmask = v.mask.cpu().numpy(), t.mask.cpu().numpy()
    out = np.zeros((n, l1, m, l2))
    for i in range(n):
        for j in range(m):
            # Tokens without mass carry no flow: leave them out of the problem (POT's network
            # simplex can report a feasible problem with zero-mass nodes as infeasible).
            rows = np.flatnonzero(vmask[i] & (a_np[i, :, j] > 0))
            cols = np.flatnonzero(tmask[j] & (b_np[i, j] > 0))
            ai, bj = a_np[i, rows, j], b_np[i, j, cols]
            # Renormalise in float64 so the exact solver sees equal total masses.
            plan = solve(np.ascontiguousarray(cost_np[i][np.ix_(rows, [j], cols)][:, 0]), ai / ai.sum(), bj / bj.sum())
            out[i, rows[:, None], j, cols[None, :]] = plan
    return torch.from_numpy(out).to(device=cost.device, dtype=cost.dtype)
