"""Peak extra memory of ``pairwise`` at growing N (flat in N is the goal).

    python benchmarks/memory.py [--l1 12] [--aligners tokenflow learnable sinkhorn ...]

Same measurement as ``tokenflow bench`` (resident set sampled every millisecond, minus inputs
and the two [N, M] outputs), without the timing runs: one call per size.
"""

from __future__ import annotations

import argparse

import torch

from tokenflow import get_aligner
from tokenflow.bench import DTYPES, PeakMemory, random_tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--l1", type=int, default=12)
    p.add_argument("--m", type=int, default=1000)
    p.add_argument("--slow-m", type=int, default=20)
    p.add_argument("--n", type=int, nargs="+", default=[1000, 4000])
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--aligners", nargs="+", default=["tokenflow", "scan", "max-avg", "learnable", "uniform", "sinkhorn", "emd"])
    args = p.parse_args()
    gen = torch.Generator().manual_seed(0)
    print("| plan | dtype | M | " + " | ".join(f"extra MiB N={n}" for n in args.n) + " |")
    print("|---|---|---|" + "---|" * len(args.n))
    slow = {"emd", "sinkhorn", "partial-ot", "assignment"}
    with torch.no_grad():
        for name in args.aligners:
            for dn in args.dtypes:
                m = args.slow_m if name in slow else args.m
                txt = random_tokens(m, 32, 512, DTYPES[dn], "cpu", gen)
                aligner = get_aligner(name)
                aligner.pairwise(random_tokens(8, args.l1, 512, DTYPES[dn], "cpu", gen), txt)  # warm-up
                cells = []
                for n in args.n:
                    vis = random_tokens(n, args.l1, 512, DTYPES[dn], "cpu", gen)
                    with PeakMemory("cpu") as mem:
                        s = aligner.pairwise(vis, txt)
                    out = 2 * s.v2t.numel() * s.v2t.element_size()
                    cells.append(f"{max(0, mem.peak_bytes - out) / 2**20:.0f}")
                    del vis, s
                print(f"| {name} | {dn} | {m} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
