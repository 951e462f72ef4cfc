"""``tokenflow serve``: a local web page over an index, with the trained plan offered first."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_device, add_fusion_weights

__all__ = ["add_parsers"]


def _serve(args: argparse.Namespace) -> int:
    from ..serve import Limits
    from ..serve.app import LOOPBACK_HOSTS, create_app, run

    hosts = None if "*" in args.allow_host else [*LOOPBACK_HOSTS, args.host, *args.allow_host]
    app = create_app(args.index, args.model, aligner_names=args.aligner, w_global=args.w_global,
                     w_fine=args.w_fine, limits=Limits(max_k=args.max_k, shortlist=args.shortlist),
                     media_root=args.media_root, allowed_hosts=hosts, device=args.device)
    info = app.state.engine.info()
    plans = " ".join(f"{p} ({info['plan_source'][p]})" for p in info["plans"])
    print(f"tokenflow serve: {info['count']} {info['kind']} items, plans {plans}; "
          f"open http://{args.host}:{args.port}/ (Ctrl-C stops)")
    run(app, args.host, args.port)
    return 0


def add_parsers(sub) -> None:
    """Register ``serve``."""
    from ..align import list_aligners

    p = sub.add_parser("serve", help="a local web page to search an index and see why each result matched")
    p.add_argument("--index", required=True, nargs="+", type=Path, metavar="DIR",
                   help="index folder(s) of one collection, or its store folder (tokenflow index STORE)")
    p.add_argument("--model", type=Path, default=None,
                   help="model folder (trained, or the bare backbone) that encoded the collection (default: the "
                        "index's backbone, if a folder)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    p.add_argument("--aligner", nargs="+", default=None, choices=[*list_aligners(), "global"], metavar="NAME",
                   help="plans the page offers, the first two side by side (default: a trained model's plan, with "
                        "its learned weights, then tokenflow max-avg scan sinkhorn uniform, built fresh); global "
                        "(no plan) is always offered")
    add_fusion_weights(p)
    p.add_argument("--shortlist", type=int, default=100, help="items re-ranked per query")
    p.add_argument("--max-k", type=int, default=50, help="most results a query may ask for")
    p.add_argument("--media-root", type=Path, default=None,
                   help="folder every thumbnail must lie in (default: the deepest folder holding all item paths)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests addressed to this host name (default: loopback names and --host "
                        "only; '*' answers any, e.g. behind a proxy)")
    add_device(p, help="cpu, cuda, ... (where queries are encoded and re-ranked)")
    p.set_defaults(func=_serve)
