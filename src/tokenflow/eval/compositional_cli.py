"""``tokenflow evaluate-compositional``: hard-negative accuracy of a model on SugarCrepe or any
benchmark in the generic format (:mod:`tokenflow.eval.compositional`)::

    tokenflow evaluate-compositional --benchmark sugarcrepe --annotations sugar-crepe/data \\
        --images coco/val2017 --model FOLDER [--aligner NAME --hp k=v] [--out report.json]

or on features computed elsewhere, with no backbone (``--visual-store V --text-store T``: the
images' features and every caption's, negatives included; see
:func:`tokenflow.index.offline.compositional_stores`). The store path is handed in by the CLI
(``add_parser(..., stores=...)``), as this layer cannot import :mod:`tokenflow.index`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["add_parser"]


def _items(args, check_media: bool) -> tuple[list, Path]:
    """The benchmark's items and the folder their relative media paths start from."""
    from ..errors import UserError

    if args.benchmark == "sugarcrepe":
        from ..data.sugarcrepe import load_sugarcrepe

        if args.images is None and check_media:
            raise UserError("--images: SugarCrepe needs the COCO val2017 image folder")
        root = args.images if args.images is not None else Path()
        return load_sugarcrepe(args.annotations, root, args.categories, check_media=check_media), root
    from ..data.hard_negatives import read_hard_negatives

    items = read_hard_negatives(args.annotations, args.images, check_media=check_media)
    if args.categories:
        items = [it for it in items if it.category in args.categories]
        if not items:
            raise UserError(f"{args.annotations}: no item of categories {', '.join(args.categories)}")
    return items, args.images if args.images is not None else Path(args.annotations).parent


def _model(args) -> tuple:
    """``(backbone, aligner, plan name, head)`` of ``--model``, on ``--device``."""
    from ..errors import UserError
    from ..models.scoring import load_scoring
    from .command import scoring_notes, with_max_words

    if args.model is None:
        raise UserError("tokenflow evaluate-compositional needs --model (a backbone folder), or --visual-store and "
                        "--text-store")
    scoring = load_scoring(args.model, args.aligner, dict(args.hp or []))
    scoring_notes(scoring, "evaluate-compositional")
    return with_max_words(scoring.backbone, args.max_words).to(args.device), scoring.aligner, scoring.name, scoring.head


def _run(args) -> int:
    from ..errors import UserError
    from ..utils import check_writable
    from .command import fusion_weights, publish_report
    from .compositional import evaluate_compositional, format_compositional_table

    if args.out:
        check_writable(args.out.parent, "--out folder")
    stored = args.visual_store is not None or args.text_store is not None
    items, root = _items(args, check_media=not stored)
    encoded = described = None
    if stored:  # features computed elsewhere: no backbone
        if args.stores is None:
            raise UserError("--visual-store / --text-store: not available here (use the tokenflow command)")
        backbone, (encoded, aligner, name, head, described) = None, args.stores(args, items, root)
    else:
        backbone, aligner, name, head = _model(args)
    w_global, w_fine = fusion_weights(args, head)
    source = {"name": args.benchmark, "annotations": str(args.annotations),
              "images": None if args.images is None else str(args.images),
              "categories": sorted({it.category for it in items})}
    report = evaluate_compositional(backbone, items, aligner, w_global=w_global, w_fine=w_fine,
                                    direction=args.direction, batch_size=args.batch_size, num_frames=args.frames,
                                    workers=args.workers, chunk=args.chunk, encoded=encoded,
                                    progress=not args.quiet and sys.stderr.isatty(), source=source)
    if described is not None:
        report["backbone"] = described
    headline = (f"{args.benchmark}: {report['evaluated']['items']} items, {report['evaluated']['images']} images, "
                f"{report['evaluated']['texts']} captions{' from stores' if stored else ''}; aligner {name}, "
                f"w_global {w_global:g}, w_fine {w_fine:g}, s_{args.direction}")
    return publish_report(report, args, headline, format_compositional_table(report))


def add_parser(sub, hparam, stores: Callable | None = None) -> None:
    """Register ``evaluate-compositional`` (``hparam``: the CLI's NAME=VALUE parser; ``stores``:
    ``(args, items, images root) -> (EncodedItems, aligner, plan name, head, backbone description)``
    for ``--visual-store`` / ``--text-store``, :func:`tokenflow.index.offline.compositional_stores`)."""
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
    p.add_argument("--model", type=Path, default=None,
                   help="backbone folder (local CLIP, SigLIP / SigLIP 2, or tiny) or trained model; with stores: "
                        "only its plan and fusion weights are used")
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
    g = p.add_argument_group("stored features instead of a backbone (tokenflow encode or import-features)")
    g.add_argument("--visual-store", type=Path, default=None,
                   help="store of the images' (or videos') features: a row is an item's image when its path is "
                        "the file, or its id is the file's path relative to --images, its name, or its stem")
    g.add_argument("--text-store", type=Path, default=None,
                   help="store of every caption's features, negatives included, matched by their text")
    p.set_defaults(func=_run, stores=stores)
