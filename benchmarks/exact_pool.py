"""The exact transport solvers on one process against a pool of processes, in one run.

    python benchmarks/exact_pool.py [--n 1000] [--m 20] [--workers 1 2] [--rounds 3]
    python benchmarks/exact_pool.py --threshold [--blocks 16 32 64 128 256 512 1024]

Scores N x M pairs (default 1000 x 20; l1 = 12, l2 = 32, D = 512, fp32, a quarter of the items
padded) with ``emd`` and with ``omit`` (exact partial, mass 0.8) under
``TOKENFLOW_EXACT_WORKERS=w`` for each ``w`` of ``--workers``, each in a fresh subprocess, the
settings interleaved over ``--rounds`` rounds so that drift of a shared machine hits them alike.
Prints pairs/s (best round) and the ratio to one worker.

``--threshold`` measures where the pool starts to pay: ``exact_plans`` on blocks of P pairs
(same shapes), in this process and on a warm pool of 2 workers, alternating, best of
``--rounds`` x 5 calls per block size: the block size above which the pool wins is what
``POOL_MIN_PAIRS`` should be.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CASES = [("emd", {}), ("omit", {"solver": "exact", "mass": 0.8})]


def worker(n: int, m: int) -> None:
    import torch

    from tokenflow import get_aligner
    from tokenflow.bench import random_tokens

    gen = torch.Generator().manual_seed(0)
    vis = random_tokens(n, 12, 512, torch.float32, "cpu", gen)
    txt = random_tokens(m, 32, 512, torch.float32, "cpu", gen)
    out = {}
    for name, hp in CASES:
        aligner = get_aligner(name, **hp)
        aligner.pairwise(vis[:50], txt, check=False)  # start the pool, warm the caches
        t0 = time.perf_counter()
        aligner.pairwise(vis, txt, check=False)
        out[name] = n * m / (time.perf_counter() - t0)
    print(json.dumps(out))


def threshold(blocks: list[int], rounds: int) -> None:
    import torch

    from tokenflow.align.transport import _exact

    gen = torch.Generator().manual_seed(0)
    _exact.POOL_MIN_PAIRS = 0  # this benchmark decides, block by block
    print("| block (pairs) | plan | 1 process ms | pool of 2 ms | pool / 1 process |")
    print("|---|---|---|---|---|")
    for p in blocks:
        c = torch.rand(p, 12, 32, generator=gen) * 0.4
        a, b = torch.rand(p, 12, generator=gen) + 0.1, torch.rand(p, 32, generator=gen) + 0.1
        rows, cols = torch.ones(p, 12, dtype=torch.bool), torch.rand(p, 32, generator=gen) < 0.75
        cols[:, 0] = True
        for name, mass in (("emd", 1.0), ("omit exact, mass 0.8", 0.8)):
            _exact.exact_plans(c, a, b, rows, cols, "exact", mass, workers=2)  # start the pool
            best = {1: float("inf"), 2: float("inf")}
            for _ in range(rounds * 5):
                for w in (1, 2):
                    t0 = time.perf_counter()
                    _exact.exact_plans(c, a, b, rows, cols, "exact", mass, workers=w)
                    best[w] = min(best[w], time.perf_counter() - t0)
            print(f"| {p} | {name} | {best[1] * 1e3:.2f} | {best[2] * 1e3:.2f} | {best[2] / best[1]:.2f} |",
                  flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--m", type=int, default=20)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threshold", action="store_true", help="time blocks of --blocks pairs, 1 process vs pool")
    p.add_argument("--blocks", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512, 1024])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threshold:
        threshold(args.blocks, args.rounds)
        return
    if args.worker:
        worker(args.n, args.m)
        return
    best: dict[int, dict[str, float]] = {w: {} for w in args.workers}
    for _ in range(args.rounds):
        for w in args.workers:
            env = {**os.environ, "TOKENFLOW_EXACT_WORKERS": str(w)}
            res = subprocess.run([sys.executable, __file__, "--worker", "--n", str(args.n), "--m", str(args.m)],
                                 env=env, capture_output=True, text=True, check=True)
            for name, rate in json.loads(res.stdout.strip().splitlines()[-1]).items():
                best[w][name] = max(best[w].get(name, 0.0), rate)
    base = args.workers[0]
    print("| plan | " + " | ".join(f"{w} worker(s) pairs/s" for w in args.workers) + " | ratio |")
    print("|---|" + "---|" * (len(args.workers) + 1))
    for name, _ in CASES:
        rates = [best[w][name] for w in args.workers]
        ratio = ", ".join(f"{best[w][name] / best[base][name]:.2f}" for w in args.workers[1:])
        print(f"| {name} | " + " | ".join(f"{r:,.0f}" for r in rates) + f" | {ratio} |")


if __name__ == "__main__":
    main()
