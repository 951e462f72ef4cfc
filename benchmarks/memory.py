"""Peak extra memory of ``pairwise`` at growing N (flat in N is the goal).

    python benchmarks/memory.py [--l1 12] [--aligners tokenflow learnable sinkhorn ...] [--n 1000 4000 16000]
        [--device cpu|cuda] [--json FILE] [--markdown FILE]

Same measurement as ``tokenflow bench`` (on the CPU the resident set sampled every millisecond; on
a GPU the CUDA allocator's peak; minus inputs and the two [N, M] outputs), without the timing
runs: one call per size.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from tokenflow import get_aligner
from tokenflow.bench import DTYPES, FAST_PLANS, PeakMemory, random_tokens


def measure(name: str, dn: str, args: argparse.Namespace, gen: torch.Generator) -> dict:
    """Extra MiB of one plan and dtype at every N (same texts)."""
    m = args.m if name in FAST_PLANS else args.slow_m  # as tokenflow bench: fewer texts for the others
    dtype, dev = DTYPES[dn], args.device
    txt = random_tokens(m, args.l2, args.dim, dtype, dev, gen)
    aligner = get_aligner(name).to(dev)
    aligner.pairwise(random_tokens(8, args.l1, args.dim, dtype, dev, gen), txt)  # warm-up
    extra = {}
    for n in args.n:
        vis = random_tokens(n, args.l1, args.dim, dtype, dev, gen)
        with PeakMemory(dev) as mem:
            s = aligner.pairwise(vis, txt)
        out = 2 * s.v2t.numel() * s.v2t.element_size()
        extra[n] = max(0, mem.peak_bytes - out) / 2**20
        del vis, s
    return {"plan": name, "dtype": dn, "m": m, "l1": args.l1, "extra_mib": extra}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--l1", type=int, default=12)
    p.add_argument("--l2", type=int, default=32)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--m", type=int, default=1000)
    p.add_argument("--slow-m", type=int, default=20)
    p.add_argument("--n", type=int, nargs="+", default=[1000, 4000])
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--aligners", nargs="+", default=["tokenflow", "scan", "max-avg", "learnable", "uniform", "sinkhorn", "emd"])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    p.add_argument("--markdown", type=Path, default=None, help="also write the table")
    args = p.parse_args(argv)
    gen = torch.Generator().manual_seed(0)
    lines = [f"Peak extra memory of pairwise on {args.device}, l1 = {args.l1}, l2 = {args.l2}, D = {args.dim}\n",
             "| plan | dtype | M | " + " | ".join(f"extra MiB N={n}" for n in args.n) + " |",
             "|---|---|---|" + "---|" * len(args.n)]
    print("\n".join(lines), flush=True)
    rows = []
    with torch.no_grad():
        for name in args.aligners:
            for dn in args.dtypes:
                r = measure(name, dn, args, gen)
                rows.append(r)
                lines.append(f"| {name} | {dn} | {r['m']} | " + " | ".join(f"{v:.0f}" for v in r["extra_mib"].values())
                             + " |")
                print(lines[-1], flush=True)
                if args.json:  # after every row, so that a run cut short keeps its rows
                    args.json.write_text(json.dumps({"device": args.device, "rows": rows}, indent=2) + "\n")
                if args.markdown:
                    args.markdown.write_text("\n".join(lines) + "\n")
    return rows


if __name__ == "__main__":
    main()
