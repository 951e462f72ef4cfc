"""``tokenflow demo`` (plans against global on synthetic tasks, paired over seeds) and
``tokenflow ablate`` (one config trained and tested once per plan)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError

__all__ = ["add_parsers"]


def _demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    methods = args.methods
    if methods == ["all"]:
        from ..demo import ALL_METHODS

        methods = list(ALL_METHODS)
    if args.quick and args.full:
        raise UserError("--quick and --full exclude each other")
    run_demo(args.out, quick=args.quick, full=args.full, videos=args.videos, methods=methods, tasks=args.tasks,
             protocols=args.protocols, seeds=args.seeds, seed=args.seed, jobs=args.jobs, workers=args.workers)
    return 0


def _is_override(item: str) -> bool:
    """``optim.lr=1e-5`` is a config override; ``omit:mass=0.8`` is a method."""
    return "=" in item and ":" not in item.split("=", 1)[0]


def _ablate(args: argparse.Namespace) -> int:
    from ..train.ablate import run_ablation

    # `--methods a b key=value`: argparse hands the overrides to --methods; take them back.
    methods = [m for m in args.methods if not _is_override(m)]
    overrides = [m for m in args.methods if _is_override(m)] + list(args.overrides)
    run_ablation(args.config, methods, overrides)
    return 0


def add_parsers(sub) -> None:
    """Register ``demo`` and ``ablate``."""
    _add_demo(sub)
    _add_ablate(sub)


def _add_demo(sub) -> None:
    from ..demo import METHODS, PROTOCOLS, TASKS

    p = sub.add_parser("demo", help="where fine-grained alignment helps: plans against global on synthetic "
                                    "scenes, paired over seeds (nothing to download)")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    p.add_argument("--quick", action="store_true", help="a smoke run at a tiny budget, both protocols (about 45 s "
                                                        "on 2 cores); too small to compare methods")
    p.add_argument("--full", action="store_true", help="both protocols, 5 seeds, and first the grid search of each "
                   "plan's hyperparameters on a tuning seed's val split (about 20 min on 2 cores)")
    p.add_argument("--videos", action="store_true", help="the bindings task as MSR-VTT-style videos")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help=f"global (no plan), plan names, NAME:key=value,..., NAME+sigmoid, cs-aligner, or all "
                        f"(default: {' '.join(METHODS)}); a bare plan name takes the hyperparameters chosen on val")
    p.add_argument("--tasks", nargs="+", default=None, choices=TASKS, help="synthetic tasks (default: scenes)")
    p.add_argument("--protocols", nargs="+", default=None, choices=PROTOCOLS,
                   help="scratch (every method from a fresh start) and/or finetune (from a global pretraining); "
                        "default: scratch, or both with --quick/--full")
    p.add_argument("--seeds", type=int, default=None, help="seeds per task (default 3, --full 5)")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs (task, protocol, seed, method) trained at once in separate processes (default: one "
                        "per core)")
    p.add_argument("--workers", type=int, default=0, help="data loader processes")
    p.set_defaults(func=_demo)


def _add_ablate(sub) -> None:
    from ..demo import METHODS

    p = sub.add_parser("ablate", help="train and test one config once per plan; one table")
    p.add_argument("--config", required=True, type=Path, help="training YAML file (see configs/); run.out holds "
                   "one run folder per method")
    p.add_argument("--methods", nargs="+", default=list(METHODS), metavar="METHOD",
                   help=f"global (no plan), plan names, NAME:key=value,... or cs-aligner "
                        f"(default: {' '.join(METHODS)})")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config keys, value read as YAML")
    p.set_defaults(func=_ablate)
