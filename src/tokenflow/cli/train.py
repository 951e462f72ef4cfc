"""``tokenflow train``: fine-tune a backbone with a plan, as a YAML config says."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import UserError

__all__ = ["add_parsers"]


def _train(args: argparse.Namespace) -> int:
    from ..train import load_config, train

    cfg = load_config(args.config, args.overrides)
    if args.force_config and not args.resume:
        raise UserError("--force-config goes with --resume")
    summary = train(cfg, resume=args.resume, argv=list(sys.argv[1:] if args.argv is None else args.argv),
                    force_config=args.force_config)
    if summary is not None and summary.get("best_step") is not None and not summary.get("already_finished"):
        print(json.dumps(summary, indent=2))
    return 0


def add_parsers(sub) -> None:
    """Register ``train``."""
    p = sub.add_parser("train", help="fine-tune a backbone with a plan (also under torchrun)",
                       description="Train as the YAML config says; overrides such as optim.lr=1e-6 "
                                   "run.out=runs/x replace any field.")
    p.add_argument("--config", required=True, type=Path, help="YAML file (see configs/)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in run.out from last.safetensors; refused if the configuration "
                        "changes a key that alters the result (the diff is printed)")
    p.add_argument("--force-config", action="store_true",
                   help="with --resume: accept the changed keys anyway (recorded in log.jsonl)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config keys, value read as YAML")
    p.set_defaults(func=_train)
