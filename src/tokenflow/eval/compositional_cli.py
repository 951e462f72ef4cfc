"""``tokenflow evaluate-compositional``: hard-negative accuracy of a model on SugarCrepe or any
benchmark in the generic format (:mod:`tokenflow.eval.compositional`)::

    tokenflow evaluate-compositional --benchmark sugarcrepe --annotations sugar-crepe/data \\
        --images coco/val2017 --model FOLDER [--aligner NAME --hp k=v] [--out report.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

__all__ = ["add_parser"]


def _run(args) -> int:
    from ..errors import UserError
    from ..models.retrieval import load_for_scoring
    from ..utils import check_writable, write_text_atomic
    from .compositional import evaluate_compositional, format_compositional_table

    if args.out:
        check_writable(args.out.parent, "--out folder")
    if args.benchmark == "sugarcrepe":
        from ..data.sugarcrepe import load_sugarcrepe

        if args.images is None:
            raise UserError("--images: SugarCrepe needs the COCO val2017 image folder")
        items = load_sugarcrepe(args.annotations, args.images, args.categories)
    else:
        from ..data.hard_negatives import read_hard_negatives

        items = read_hard_negatives(args.annotations, args.images)
        if args.categories:
            items = [it for it in items if it.category in args.categories]
            if not items:
                raise UserError(f"{args.annotations}: no item of categories {', '.join(args.categories)}")
    backbone, aligner, name, head, notes = load_for_scoring(args.model, args.aligner, dict(args.hp or []))
    for note in notes:
        print(f"tokenflow evaluate-compositional: note: {note}", file=sys.stderr)
    if args.max_words is not None:  # as tokenflow evaluate --max-words
        try:
            backbone.set_max_text_len(args.max_words)
        except ValueError as e:
            raise UserError(f"--max-words: {e}") from None
    backbone = backbone.to(args.device)
    w_global = head.get("w_global", 1.0) if args.w_global is None else args.w_global
    w_fine = head.get("w_fine", 1.0) if args.w_fine is None else args.w_fine
    source = {"name": args.benchmark, "annotations": str(args.annotations),
              "images": None if args.images is None else str(args.images),
              "categories": sorted({it.category for it in items})}
    report = evaluate_compositional(backbone, items, aligner, w_global=w_global, w_fine=w_fine,
                                    direction=args.direction, batch_size=args.batch_size, num_frames=args.frames,
                                    workers=args.workers, chunk=args.chunk,
                                    progress=not args.quiet and sys.stderr.isatty(), source=source)
    report["command"] = ["tokenflow", *(sys.argv[1:] if args.argv is None else args.argv)]
    print(f"{args.benchmark}: {report['evaluated']['items']} items, {report['evaluated']['images']} images, "
          f"{report['evaluated']['texts']} captions; aligner {name}, w_global {w_global:g}, w_fine {w_fine:g}, "
          f"s_{args.direction}")
    print(format_compositional_table(report))
    if args.out:
        write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
        print(f"report: {args.out}")
    return 0


def add_parser(sub, hparam) -> None:
    """Register ``evaluate-compositional`` (``hparam``: the CLI's NAME=VALUE parser)."""
    from ..align import list_aligners

    p = sub.add_parser("evaluate-compositional",
                       help="hard-negative accuracy per category (SugarCrepe, or the generic JSON format)")
    p.add_argument("--benchmark", required=True, choices=("sugarcrepe", "generic"),
                   help="sugarcrepe: a folder of its CATEGORY.json(.xz) files (or one); generic: a "
                        "tokenflow-hard-negatives JSON file")
    p.add_argument("--annotations", required=True, type=Path, help="the annotation folder or file")
    p.add_argument("--images", type=Path, default=None,
                   help="image folder (SugarCrepe: COCO val2017; generic: where relative paths start, default the "
                        "file's folder)")
    p.add_argument("--categories", nargs="+", default=None, metavar="NAME", help="only these categories")
    p.add_argument("--model", required=True, type=Path,
                   help="backbone folder (local CLIP, SigLIP / SigLIP 2, or tiny) or trained model")
    p.add_argument("--aligner", default=None, choices=[*list_aligners(), "none"],
                   help="plan (default: the one saved with a trained model, else tokenflow; none: global only)")
    p.add_argument("--hp", type=hparam, action="append", metavar="NAME=VALUE", help="aligner hyperparameter")
    p.add_argument("--w-global", type=float, default=None,
                   help="weight of the global similarity in the fused score (default: a trained model's, else 1)")
    p.add_argument("--w-fine", type=float, default=None,
                   help="weight of the plan's score in the fused score (default: a trained model's, else 1)")
    p.add_argument("--direction", choices=("t2v", "v2t"), default="t2v",
                   help="the plan's direction scored (default t2v: every word of the caption weighs in)")
    p.add_argument("--frames", type=int, default=12, help="frames sampled per video")
    p.add_argument("--batch-size", type=int, default=64, help="images or captions encoded at once")
    p.add_argument("--workers", type=int, default=0, help="data loader processes")
    p.add_argument("--chunk", type=int, default=None, help="items per block in pairwise scoring")
    p.add_argument("--max-words", type=int, default=None, help="tokens per caption (default: the backbone's)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--out", type=Path, default=None, help="JSON report (written atomically)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
