"""Transport plans before and after issue 13, in one run: pairs/s of each preset vs a plain matmul.

    python benchmarks/transport.py [--old-rev 97436bc] [--n 1000] [--m 20] [--repeats 2]

N visual x M texts (default 1000 x 20), l1 = 12, l2 = 32, D = 512, fp32, unit-norm random features
with a quarter of the items padded (``tokenflow.bench.random_tokens``), no autograd. For each
code version (the old revision checked out with ``git worktree add`` and imported through
PYTHONPATH in a subprocess; this checkout's ``src``) it reports, per preset, pairs/s (best of
``--repeats``) and the pairs/s of a plain ``torch.mm`` of the same token-similarity FLOPs
measured in the same process; for this checkout also the peak extra memory at N and 4N. The
new ``sinkhorn``, ``partial-ot`` and ``assignment`` run with ``tol=1e-4`` (iterations as the
cap); the old code has no tolerance and runs its fixed iterations.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (preset, hyperparameters for the old code, hyperparameters for the new code)
CASES = [
    ("emd", {}, {}),
    ("sinkhorn", {"eps": 0.05, "n_iter": 100}, {"eps": 0.05, "n_iter": 100, "tol": 1e-4}),
    ("partial-ot", {}, {"tol": 1e-4}),
    ("assignment", {}, {"tol": 1e-4}),
    ("omit", {}, {}),
]


def worker(args: argparse.Namespace) -> None:
    import torch

    from tokenflow import get_aligner
    import tokenflow
    from tokenflow.bench import PeakMemory, random_tokens

    print("tokenflow from", tokenflow.__file__, file=sys.stderr)
    gen = torch.Generator().manual_seed(0)
    n, m, l1, l2, dim = args.n, args.m, 12, 32, 512
    vis = random_tokens(n, l1, dim, torch.float32, "cpu", gen)
    txt = random_tokens(m, l2, dim, torch.float32, "cpu", gen)
    x, y = vis.feats.reshape(n * l1, dim), txt.feats.reshape(m * l2, dim)
    best_mm = min(_time(lambda: torch.mm(x, y.T)) for _ in range(5))
    rows = []
    with torch.no_grad():
        for name, old_hp, new_hp in CASES:
            aligner = get_aligner(name, **(new_hp if args.new else old_hp))
            aligner.pairwise(vis[:8], txt)  # warm-up (and the exact solvers' process pool)
            sec = min(_time(lambda: aligner.pairwise(vis, txt)) for _ in range(args.repeats))
            row = {"aligner": name, "hparams": aligner.hparams(), "pairs_per_s": n * m / sec,
                   "x_of_matmul": best_mm / sec}
            if args.new:
                s = aligner.pairwise(vis, txt)
                row["marginal_error"] = s.marginal_error
                for k in (1, 4):
                    big = random_tokens(k * n, l1, dim, torch.float32, "cpu", gen) if k > 1 else vis
                    with PeakMemory("cpu") as mem:
                        s = aligner.pairwise(big, txt)
                    out = 2 * s.v2t.numel() * s.v2t.element_size()
                    row[f"extra_mib_n{k * n}"] = max(0, mem.peak_bytes - out) / 2**20
                    del big, s
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps({"matmul_pairs_per_s": n * m / best_mm, "threads": torch.get_num_threads(), "rows": rows}))


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(src: Path, new: bool, args: argparse.Namespace) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src))
    cmd = [sys.executable, __file__, "--worker", "--n", str(args.n), "--m", str(args.m), "--repeats", str(args.repeats)]
    out = subprocess.run(cmd + (["--new"] if new else []), env=env, check=True, capture_output=True, text=True,
                         cwd="/tmp")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old-rev", default="97436bc")
    p.add_argument("--old-tree", default="/tmp/tf-old")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--m", type=int, default=20)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--new", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    old_tree = Path(args.old_tree)
    if not old_tree.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old_tree), args.old_rev], check=True)
    old, new = run(old_tree / "src", False, args), run(ROOT / "src", True, args)
    print(f"{args.n} x {args.m} pairs, l1=12, l2=32, D=512, fp32, torch threads={new['threads']}; "
          f"matmul of the same FLOPs: {old['matmul_pairs_per_s']:,.0f} (old run) / "
          f"{new['matmul_pairs_per_s']:,.0f} (new run) pairs/s")
    print("| preset | new hparams | old pairs/s | new pairs/s | new / old | old x of matmul | new x of matmul "
          f"| worst marginal error | extra MiB N={args.n} | extra MiB N={4 * args.n} |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for o, n_ in zip(old["rows"], new["rows"]):
        hp = ", ".join(f"{k}={v}" for k, v in n_["hparams"].items()) or "-"
        err = n_["marginal_error"]
        print(f"| {o['aligner']} | {hp} | {o['pairs_per_s']:,.0f} | {n_['pairs_per_s']:,.0f} | "
              f"{n_['pairs_per_s'] / o['pairs_per_s']:.1f} | {o['x_of_matmul']:.3f} | {n_['x_of_matmul']:.3f} | "
              f"{err:.1e} | {n_[f'extra_mib_n{args.n}']:.0f} | {n_[f'extra_mib_n{4 * args.n}']:.0f} |")


if __name__ == "__main__":
    main()
