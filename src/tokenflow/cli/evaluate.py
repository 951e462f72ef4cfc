"""``tokenflow evaluate`` (retrieval metrics of a model on a dataset split) and ``tokenflow
evaluate-compositional`` (hard-negative accuracy per category: SugarCrepe or the generic JSON
format), each with a backbone or from feature stores computed elsewhere::

    tokenflow evaluate --dataset flickr30k --root DIR --model FOLDER [--aligner NAME --hp k=v]
    tokenflow evaluate-compositional --benchmark sugarcrepe --annotations sugar-crepe/data \\
        --images coco/val2017 --model FOLDER [--out report.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import UserError
from .common import evaluation_split, print_notes, publish_report, scoring_notes, with_max_words
from .options import (add_device, add_frames, add_fusion_weights, add_hp, add_on_error, add_store_options,
                      add_video_tokens, hparams)

__all__ = ["add_parsers"]


def _evaluate(args: argparse.Namespace) -> int:
    from ..eval.evaluate import evaluate, format_table, protocol_folds
    from ..models.scoring import load_scoring

    if args.visual_store is not None or args.text_store is not None:  # features computed elsewhere
        return _evaluate_stores(args)
    if args.model is None:
        raise UserError("tokenflow evaluate needs --model (a backbone folder), or --visual-store and --text-store")
    split = evaluation_split(args)
    scoring = load_scoring(args.model, args.aligner, hparams(args), w_global=args.w_global, w_fine=args.w_fine)
    scoring_notes(scoring, "evaluate")
    backbone = with_max_words(scoring.backbone, args.max_words).to(args.device)
    if args.frame_cache is not None:
        from ..data.frame_cache import with_frame_cache

        split = with_frame_cache(split, args.frame_cache, args.frames, backbone.preprocess, backbone.image_size)
    folds = args.folds if args.folds is not None else protocol_folds(args.dataset, args.split, len(split))
    report = evaluate(backbone, split, scoring.aligner, w_global=scoring.w_global, w_fine=scoring.w_fine,
                      batch_size=args.batch_size, num_frames=args.frames, video_tokens=args.video_tokens,
                      on_error=args.on_error, workers=args.workers, chunk=args.chunk, folds=folds,
                      progress=not args.quiet and sys.stderr.isatty(), rerank_top=args.rerank_top,
                      **_test_norm_options(args))
    report["dataset"] = {"name": args.dataset, "root": str(args.root), "split": args.split}
    headline = (f"{split.name}: {report['evaluated']['items']} {split.modality}s, {report['evaluated']['texts']} "
                f"texts, aligner {scoring.name}, skipped {report['skipped']['count']}")
    return publish_report(report, args, headline, format_table(report))


def _test_norm_options(args: argparse.Namespace) -> dict:
    """``--test-norm`` and its query bank: captions of ``--qb-split`` (never the evaluated split)."""
    if args.test_norm is None:
        return {}
    opts = {"test_norm": args.test_norm, "test_norm_temperature": args.test_norm_temperature, "qb_k": args.qb_k}
    if args.test_norm == "qbnorm":
        if args.qb_split == args.split:
            raise UserError(f"--qb-split {args.qb_split}: the query bank must not come from the evaluated split")
        from ..data import load_split

        texts = list(load_split(args.dataset, args.root, args.qb_split, media=args.media).texts)
        if args.qb_size is not None and args.qb_size < len(texts):  # evenly spaced, reproducible
            texts = [texts[i * len(texts) // args.qb_size] for i in range(args.qb_size)]
        opts.update(query_bank=texts, bank_info={"split": args.qb_split, "texts": len(texts)})
    return opts


def _evaluate_stores(args: argparse.Namespace) -> int:
    """``tokenflow evaluate --visual-store V --text-store T --dataset ... --root ... --split ...``."""
    from ..eval.evaluate import format_table, protocol_folds
    from ..index.offline import evaluate_stores, open_stores, plan_for_stores, source_mismatch

    if args.visual_store is None or args.text_store is None:
        raise UserError("tokenflow evaluate from stores needs both --visual-store and --text-store")
    bad = [f"--{k.replace('_', '-')}" for k in ("frame_cache", "max_words") if getattr(args, k) is not None]
    if bad or args.test_norm == "qbnorm":
        raise UserError(f"{(bad or ['--test-norm qbnorm'])[0]}: not available with stored features (no backbone "
                        "encodes anything)")
    split = evaluation_split(args)
    vstores = open_stores(args.visual_store, "visual", "--visual-store")
    tstores = open_stores(args.text_store, "text", "--text-store")
    scoring = plan_for_stores(args.aligner, hparams(args), vstores[0].dim, args.model, w_global=args.w_global,
                              w_fine=args.w_fine)
    scoring_notes(scoring, "evaluate")
    print_notes("evaluate", [m for m in [source_mismatch(vstores[0], tstores[0])] if m], kind="warning")
    folds = args.folds if args.folds is not None else protocol_folds(args.dataset, args.split, len(split))
    report = evaluate_stores(vstores, tstores, split, scoring.aligner, w_global=scoring.w_global,
                             w_fine=scoring.w_fine,
                             chunk=args.chunk, folds=folds, rerank_top=args.rerank_top, device=args.device,
                             **_test_norm_options(args))  # qbnorm was refused above
    report["dataset"] = {"name": args.dataset, "root": str(args.root), "split": args.split}
    headline = (f"{split.name}: {report['evaluated']['items']} {split.modality}s, {report['evaluated']['texts']} "
                f"texts from stores, aligner {scoring.name}")
    return publish_report(report, args, headline, format_table(report))


def _items(args: argparse.Namespace, check_media: bool) -> tuple[list, Path]:
    """The benchmark's items and the folder their relative media paths start from."""
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


def _compositional_model(args: argparse.Namespace) -> tuple:
    """``(backbone on --device, scoring)`` of ``--model`` after ``--aligner``, ``--hp``,
    ``--w-global`` and ``--w-fine``."""
    from ..models.scoring import load_scoring

    if args.model is None:
        raise UserError("tokenflow evaluate-compositional needs --model (a backbone folder), or --visual-store and "
                        "--text-store")
    scoring = load_scoring(args.model, args.aligner, hparams(args), w_global=args.w_global, w_fine=args.w_fine)
    scoring_notes(scoring, "evaluate-compositional")
    return with_max_words(scoring.backbone, args.max_words).to(args.device), scoring


def _compositional_stores(args: argparse.Namespace, items: list, root: Path) -> tuple:
    """``(encoded items, scoring, backbone description)`` of ``--visual-store`` and ``--text-store``
    for :func:`~tokenflow.eval.compositional.evaluate_compositional` (``encoded=``)."""
    from ..index.offline import describe_stores, hard_negative_tokens, open_stores, plan_for_stores, source_mismatch

    if args.visual_store is None or args.text_store is None:
        raise UserError("tokenflow evaluate-compositional from stores needs both --visual-store and --text-store")
    if args.max_words is not None:
        raise UserError("--max-words: not available with stored features (no backbone encodes anything)")
    vstores = open_stores(args.visual_store, "visual", "--visual-store")
    tstores = open_stores(args.text_store, "text", "--text-store")
    scoring = plan_for_stores(args.aligner, hparams(args), vstores[0].dim, args.model, w_global=args.w_global,
                              w_fine=args.w_fine)
    scoring_notes(scoring, "evaluate-compositional")
    print_notes("evaluate-compositional", [m for m in [source_mismatch(vstores[0], tstores[0])] if m],
                kind="warning")
    encoded = hard_negative_tokens(items, vstores, tstores, root)  # refuses the other modality, another D
    return encoded, scoring, describe_stores(vstores, tstores)


def _compositional(args: argparse.Namespace) -> int:
    from ..eval.compositional import evaluate_compositional, format_compositional_table
    from ..utils import check_writable

    if args.out:
        check_writable(args.out.parent, "--out folder")
    stored = args.visual_store is not None or args.text_store is not None
    items, root = _items(args, check_media=not stored)
    encoded = described = None
    if stored:  # features computed elsewhere: no backbone
        backbone, (encoded, scoring, described) = None, _compositional_stores(args, items, root)
    else:
        backbone, scoring = _compositional_model(args)
    aligner, name, w_global, w_fine = scoring.aligner, scoring.name, scoring.w_global, scoring.w_fine
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


def add_parsers(sub) -> None:
    """Register ``evaluate`` and ``evaluate-compositional``."""
    _add_evaluate(sub)
    _add_compositional(sub)


def _add_evaluate(sub) -> None:
    from ..align import list_aligners
    from ..data import DATASETS

    p = sub.add_parser("evaluate", help="retrieval metrics of a backbone + aligner on a dataset split")
    p.add_argument("--dataset", required=True, choices=DATASETS, help="dataset format of --root")
    p.add_argument("--root", required=True, type=Path, help="dataset folder in its standard layout")
    p.add_argument("--split", default="test", help="split to score (default: test)")
    p.add_argument("--media", type=Path, default=None, help="image/video folder if not the default one")
    p.add_argument("--positives", type=Path, default=None,
                   help="sidecar of captions true of several items (tokenflow-positives JSON): all count as correct")
    p.add_argument("--model", type=Path, default=None, help="backbone folder (local CLIP or tiny); with stores: "
                   "only its plan and fusion weights")
    add_store_options(p)
    p.add_argument("--aligner", default=None, choices=[*list_aligners(), "none"],
                   help="plan (default: the one saved with a trained model, else tokenflow)")
    add_hp(p)
    add_fusion_weights(p)
    add_frames(p)
    p.add_argument("--frame-cache", type=Path, default=None,
                   help="read the sampled frames from this tokenflow prepare-frames folder (same --frames, size = "
                        "the backbone's image size); videos missing from it are decoded")
    add_video_tokens(p)
    add_on_error(p)
    _add_run_options(p, "items or texts encoded at once")
    p.add_argument("--folds", type=int, default=None, help="also average metrics over folds of this many items "
                   "(automatic 1000 on COCO's 5K test)")
    p.add_argument("--max-words", type=int, default=None,
                   help="tokens per caption (default: the backbone's; at most its positional limit, 77 for CLIP)")
    _add_test_norm(p)
    p.add_argument("--rerank-top", type=int, default=None, metavar="K",
                   help="also report two-stage metrics: a global shortlist of K re-ranked by the plan (what "
                        "tokenflow search does), beside the exhaustive ones")
    add_device(p)
    p.add_argument("--out", type=Path, default=None, help="JSON report (written atomically)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_evaluate)


def _add_run_options(p: argparse.ArgumentParser, batch: str) -> None:
    """``--batch-size`` (``batch``: what a batch holds), ``--workers`` and ``--chunk``."""
    p.add_argument("--batch-size", type=int, default=64, help=batch)
    p.add_argument("--workers", type=int, default=0, help="data loader processes")
    p.add_argument("--chunk", type=int, default=None, help="items per block in pairwise scoring")


def _add_test_norm(p: argparse.ArgumentParser) -> None:
    p.add_argument("--test-norm", choices=("dsl", "isl", "qbnorm"), default=None,
                   help="also report metrics after test-time normalisation (dual softmax, inverted softmax, "
                        "QB-Norm), in a separate labelled block; the plain metrics stay as they are")
    p.add_argument("--test-norm-temperature", type=float, default=None,
                   help="softmax temperature (default: 0.01 for dsl, 0.05 = QB-Norm's beta 20 for isl, qbnorm)")
    p.add_argument("--qb-split", default="train", help="QB-Norm query bank: captions of this split (default: train)")
    p.add_argument("--qb-size", type=int, default=None, help="QB-Norm: at most this many bank captions, evenly "
                   "spaced (default: all)")
    p.add_argument("--qb-k", type=int, default=1, help="QB-Norm: hubs are the top-k items of the bank queries")


def _add_compositional(sub) -> None:
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
    add_hp(p)
    add_fusion_weights(p, fine="the plan's score")
    p.add_argument("--direction", choices=("t2v", "v2t"), default="t2v",
                   help="the plan's direction scored (default t2v: every word of the caption weighs in)")
    add_frames(p)
    _add_run_options(p, "images or captions encoded at once")
    p.add_argument("--max-words", type=int, default=None, help="tokens per caption (default: the backbone's)")
    add_device(p)
    p.add_argument("--out", type=Path, default=None, help="JSON report (written atomically)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_store_options(p, visual="store of the images' (or videos') features: a row is an item's image when its "
                      "path is the file, or its id is the file's path relative to --images, its name, or its stem",
                      text="store of every caption's features, negatives included, matched by their text")
    p.set_defaults(func=_compositional)
