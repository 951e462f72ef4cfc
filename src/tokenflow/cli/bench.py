"""``tokenflow bench``: throughput and memory of every plan's pairwise scoring
(:mod:`tokenflow.bench` measures; this module reads the options and writes the report)."""

from __future__ import annotations

import argparse
import json

from ..errors import UserError
from .options import add_device

__all__ = ["add_parsers"]


def _config(args: argparse.Namespace):
    """The :class:`~tokenflow.bench.BenchConfig` of the options (``--quick``: small fixed sizes)."""
    from ..align import list_aligners
    from ..bench import BenchConfig

    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda asked for, but no CUDA device is available")
    aligners = tuple(args.aligners or list_aligners())
    unknown = sorted(set(aligners) - set(list_aligners()))
    if unknown:
        raise UserError(f"--aligners: unknown aligner(s) {unknown}; choose from {list_aligners()}")
    if args.quick:
        return BenchConfig(n=200, m=200, l1=(12,), l2=32, dim=128, dtypes=("fp32",), aligners=aligners, slow_m=20,
                           naive_n=50, naive_m=100, memory_n=(200, 800), repeats=2, device=args.device)
    return BenchConfig(n=args.n, m=args.m, l1=tuple(args.l1), l2=args.l2, dim=args.dim, dtypes=tuple(args.dtypes),
                       aligners=aligners, slow_m=args.slow_m, memory_n=tuple(args.memory_n), repeats=args.repeats,
                       device=args.device)


def _bench(args: argparse.Namespace) -> int:
    from ..bench import markdown, run
    from ..utils import write_text_atomic

    cfg = _config(args)
    print(f"tokenflow bench on {args.device}: N={cfg.n} M={cfg.m} l1={list(cfg.l1)} l2={cfg.l2} D={cfg.dim}")

    def save(report: dict) -> None:  # after every row, so that a long run cut short keeps its results
        if args.json_path:
            write_text_atomic(args.json_path, json.dumps(report, indent=2) + "\n")
        if args.md_path:
            write_text_atomic(args.md_path, markdown(report))

    report = run(cfg, on_row=save)
    print()
    print(markdown(report))
    return 0


def add_parsers(sub) -> None:
    """Register ``bench``."""
    from ..align import list_aligners
    from ..bench import DTYPES

    p = sub.add_parser("bench", help="throughput and memory of every plan's pairwise scoring")
    p.add_argument("--quick", action="store_true", help="small sizes (about a minute on 2 cores)")
    p.add_argument("--n", type=int, default=1000, help="visual items (default 1000, MSR-VTT test size)")
    p.add_argument("--m", type=int, default=1000, help="texts (default 1000)")
    p.add_argument("--l1", type=int, nargs="+", default=[12, 50], help="visual tokens (default 12 50)")
    p.add_argument("--l2", type=int, default=32, help="text tokens (default 32)")
    p.add_argument("--dim", type=int, default=512, help="feature dimension D")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES), help="feature dtypes")
    p.add_argument("--aligners", nargs="+", default=None, help=f"subset of: {' '.join(list_aligners())}")
    p.add_argument("--slow-m", type=int, default=50, help="texts for the transport plans (default 50)")
    p.add_argument("--memory-n", type=int, nargs="+", default=[1000, 4000],
                   help="collection sizes of the peak-memory check (it should not grow with N)")
    p.add_argument("--repeats", type=int, default=3, help="timings per case (the best is kept)")
    add_device(p, help="cpu or cuda")
    p.add_argument("--json", dest="json_path", help="write the full report here (atomically)")
    p.add_argument("--markdown", dest="md_path", help="write the table here (atomically)")
    p.set_defaults(func=_bench)
