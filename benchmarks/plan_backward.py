"""Training-step cost of the softmax plans: the hand-written backward of ``softmax_dot`` against
autograd through the plain formula, in the same run.

One step is ``pairwise`` forward and backward over a batch of B visual and B text items (unit-norm
features, as the backbones give), both directions. Rounds alternate between the two routes and
the median per route is reported::

    OMP_NUM_THREADS=1 python benchmarks/plan_backward.py --batch 64 --l1 17 --l2 14 --dim 32
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import tokenflow.align._ops as ops
from tokenflow import Tokens, get_aligner
from tokenflow.bench import random_tokens
from tokenflow.utils import machine


def _plain(c, scale, bias, dim):
    x = c * scale if bias is None else c * scale + bias
    return (torch.softmax(x, dim) * c).sum(dim)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--l1", type=int, default=17)
    ap.add_argument("--l2", type=int, default=14)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--plans", nargs="+", default=["scan", "tokenflow"])
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)

    def toks(n: int, length: int) -> Tokens:
        """Unit-norm tokens with every position real (random_tokens' padding mask replaced)."""
        t = random_tokens(n, length, args.dim, torch.float32, "cpu", gen)
        return Tokens(feats=t.feats.requires_grad_(), mask=torch.ones_like(t.mask), pooled=t.pooled.requires_grad_())

    vis, txt = toks(args.batch, args.l1), toks(args.batch, args.l2)
    hand = ops._SoftmaxDot.apply
    print(f"{machine()}; B={args.batch}, l1={args.l1}, l2={args.l2}, D={args.dim}; median of {args.rounds} rounds")
    print("| plan | hand-written backward, ms/step | autograd of the formula, ms/step | speed-up |")
    print("|---|---|---|---|")
    for name in args.plans:
        aligner = get_aligner(name)
        times: dict[str, list[float]] = {"hand": [], "plain": []}
        for _ in range(args.rounds):
            for route in ("hand", "plain"):
                ops._SoftmaxDot.apply = hand if route == "hand" else _plain
                t0 = time.perf_counter()
                for _ in range(3):
                    s = aligner.pairwise(vis, txt)
                    (s.t2v.sum() + s.v2t.sum()).backward()
                times[route].append((time.perf_counter() - t0) / 3 * 1000)
        ops._SoftmaxDot.apply = hand
        h, p = statistics.median(times["hand"]), statistics.median(times["plain"])
        print(f"| {name} | {h:.1f} | {p:.1f} | {p / h:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
