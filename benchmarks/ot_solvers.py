"""Which entropic OT route should the transport plans use? Same problems, four solvers.

B problems of l1 x l2 (default 1000 of 20 x 30, unit-norm random features, cost 1 - c, uniform
marginals, eps 0.05, a fixed 100 iterations for every solver so the work is equal):

* POT ``ot.sinkhorn(..., method="sinkhorn_log")`` called once per problem;
* POT 0.9.7 ``ot.batch.solve_batch(..., method="log_sinkhorn")`` on the whole batch;
* tokenflow's ``sinkhorn_plans`` on the whole batch: the route the plans use (every Sinkhorn
  preset's ``Transport.solve`` calls it on each block), as they call it (``domain="auto"``: the
  scaling domain where the kernel's range allows, which it does here), and forced into the log
  domain;

and POT's exact ``ot.emd`` per problem for reference. Prints seconds and the largest plan
difference to tokenflow's (auto domain). Run: ``python benchmarks/ot_solvers.py [--problems 1000]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import ot
import ot.batch
import torch

from tokenflow.align.transport import sinkhorn_plans


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

    c = 1.0 - cost  # the similarities the plans take (cost 1 - c)
    cols = torch.ones(b_, l2, dtype=torch.bool)

    rows = []
    t0 = time.perf_counter()
    res = sinkhorn_plans(c, a, b, cols, eps, iters)
    ours = res.plan  # [B, l1, l2]
    domain = "log" if res.log_domain else "scaling"
    rows.append((f"tokenflow sinkhorn_plans, batched (torch), auto: {domain} domain", time.perf_counter() - t0, 0.0))

    t0 = time.perf_counter()
    log = sinkhorn_plans(c, a, b, cols, eps, iters, domain="log").plan
    rows.append(("tokenflow sinkhorn_plans, batched (torch), log domain", time.perf_counter() - t0,
                 (log - ours).abs().max().item()))

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
