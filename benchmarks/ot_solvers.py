"""Which entropic OT route should the transport plans use? Same problems, three solvers.

B problems of l1 x l2 (default 1000 of 20 x 30, unit-norm random features, cost 1 - c, uniform
marginals, eps 0.05, a fixed 100 iterations for every solver so the work is equal):

* POT ``ot.sinkhorn(..., method="sinkhorn_log")`` called once per problem;
* POT 0.9.7 ``ot.batch.solve_batch(..., method="log_sinkhorn")`` on the whole batch;
* tokenflow's ``log_sinkhorn`` on the whole batch (the route the plans use);

and POT's exact ``ot.emd`` per problem for reference. Prints seconds and the largest plan
difference to tokenflow's. Run: ``python benchmarks/ot_solvers.py [--problems 1000]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import ot
import ot.batch
import torch

from tokenflow.align._ot import log_sinkhorn


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problems", type=int, default=1000)
    p.add_argument("--l1", type=int, default=20)
    p.add_argument("--l2", type=int, default=30)
    p.add_argument("--eps", type=float, default=0.05)
    p.add_argument("--iters", type=int, default=100)
    args = p.parse_args()
    gen = torch.Generator().manual_seed(0)
    b_, l1, l2, eps, iters = args.problems, args.l1, args.l2, args.eps, args.iters
    x = torch.nn.functional.normalize(torch.randn(b_, l1, 64, generator=gen, dtype=torch.float64), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(b_, l2, 64, generator=gen, dtype=torch.float64), dim=-1)
    cost = 1.0 - x @ y.transpose(1, 2)  # [B, l1, l2]
    a, b = torch.full((b_, l1), 1.0 / l1, dtype=torch.float64), torch.full((b_, l2), 1.0 / l2, dtype=torch.float64)

    rows = []
    t0 = time.perf_counter()
    ours = log_sinkhorn(
        (-cost / eps)[:, :, None, :].transpose(0, 2),  # our layout [n=1, l1, m=B, l2]
        a.log().T[None, :, :, None],
        b.log()[None, None],
        iters,
        torch.ones(1, 1, b_, l2, dtype=torch.bool),
    ).exp()[0].transpose(0, 1)  # [B, l1, l2]
    rows.append(("tokenflow log_sinkhorn, batched (torch)", time.perf_counter() - t0, 0.0))

    t0 = time.perf_counter()
    res = ot.batch.solve_batch(cost, reg=eps, a=a, b=b, max_iter=iters, tol=0.0, method="log_sinkhorn", grad="detach")
    rows.append(("POT ot.batch.solve_batch log_sinkhorn", time.perf_counter() - t0, (res.plan - ours).abs().max().item()))

    cost_np, a_np, b_np = cost.numpy(), a.numpy(), b.numpy()
    t0 = time.perf_counter()
    plans = [ot.sinkhorn(a_np[i], b_np[i], cost_np[i], eps, method="sinkhorn_log", numItermax=iters, stopThr=0.0)
             for i in range(b_)]
    rows.append(("POT ot.sinkhorn sinkhorn_log, one call per problem", time.perf_counter() - t0,
                 float(np.abs(np.stack(plans) - ours.numpy()).max())))

    t0 = time.perf_counter()
    exact = [ot.emd(a_np[i], b_np[i], cost_np[i]) for i in range(b_)]
    rows.append(("POT ot.emd (exact), one call per problem", time.perf_counter() - t0,
                 float(np.abs(np.stack(exact) - ours.numpy()).max())))

    print(f"{b_} problems of {l1} x {l2}, eps={eps}, {iters} iterations, float64, torch threads={torch.get_num_threads()}")
    print("| solver | seconds | max plan difference to tokenflow's |\n|---|---|---|")
    for name, sec, diff in rows:
        print(f"| {name} | {sec:.3f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
