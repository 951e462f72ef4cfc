"""The ``tokenflow`` command: ``demo``, ``make-data``, ``train``, ``ablate``, ``evaluate``, ``explain``,
``encode``, ``index``, ``search`` (:mod:`tokenflow.index.commands`), ``serve``, ``prepare-frames``,
``convert-captions``, ``bench``.

Exit status: 0 done; 2 an error the user can fix (:class:`~tokenflow.errors.UserError`, a missing
file, a bad value), printed as one message; 3 training diverged; 1 a bug, with its traceback.
``--debug`` shows the traceback of every error."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from ._version import __version__
from .errors import Diverged, UserError


def _hparam(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    try:
        return k, json.loads(v)
    except json.JSONDecodeError:
        return k, v


def check_hparams(name: str, hparams: dict, source: str = "--hp") -> None:
    """Refuse a numeric hyperparameter that is not a finite number of its kind (``lam=fast``,
    ``lam=inf``) with a message naming it, before any work."""
    from .models.retrieval import hparam_problems

    problems = hparam_problems(name, hparams)
    if problems:
        raise UserError(f"{source}: " + "; ".join(problems))


def _sizes(text: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(x) for x in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected TRAIN,VAL,TEST counts such as 1000,100,100, got {text!r}")
    return parts


def _make_data(args) -> int:
    from .data.synthetic import make_synthetic

    paths = make_synthetic(args.out, images=args.images, videos=args.videos, image_size=args.size,
                           frames=args.frames, seed=args.seed, image_format=args.format, unpaired=args.unpaired)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def _convert(args) -> int:
    from .data import convert_pickled_captions

    print(convert_pickled_captions(args.pickle, args.out))
    return 0


def _evaluate(args) -> int:
    from .eval.command import evaluation_split, publish_report, scoring_notes, with_max_words
    from .eval.evaluate import evaluate, format_table, protocol_folds
    from .models.scoring import load_scoring

    if args.visual_store is not None or args.text_store is not None:  # features computed elsewhere
        from .index.offline import evaluate_command

        return evaluate_command(args)
    if args.model is None:
        raise UserError("tokenflow evaluate needs --model (a backbone folder), or --visual-store and --text-store")
    split = evaluation_split(args)
    scoring = load_scoring(args.model, args.aligner, dict(args.hp or []), w_global=args.w_global, w_fine=args.w_fine)
    scoring_notes(scoring, "evaluate")
    aligner, name = scoring.aligner, scoring.name
    backbone = with_max_words(scoring.backbone, args.max_words).to(args.device)
    if args.frame_cache is not None:
        from .data.frame_cache import with_frame_cache

        split = with_frame_cache(split, args.frame_cache, args.frames, backbone.preprocess, backbone.image_size)
    args.w_global, args.w_fine = scoring.w_global, scoring.w_fine
    folds = args.folds if args.folds is not None else protocol_folds(args.dataset, args.split, len(split))
    report = evaluate(backbone, split, aligner, w_global=args.w_global, w_fine=args.w_fine,
                      batch_size=args.batch_size, num_frames=args.frames, video_tokens=args.video_tokens,
                      on_error=args.on_error, workers=args.workers, chunk=args.chunk, folds=folds,
                      progress=not args.quiet and sys.stderr.isatty(), rerank_top=args.rerank_top,
                      **_test_norm_options(args))
    report["dataset"] = {"name": args.dataset, "root": str(args.root), "split": args.split}
    headline = (f"{split.name}: {report['evaluated']['items']} {split.modality}s, {report['evaluated']['texts']} "
                f"texts, aligner {name}, skipped {report['skipped']['count']}")
    return publish_report(report, args, headline, format_table(report))


def _test_norm_options(args) -> dict:
    """``--test-norm`` and its query bank: captions of ``--qb-split`` (never the evaluated split)."""
    if args.test_norm is None:
        return {}
    opts = {"test_norm": args.test_norm, "test_norm_temperature": args.test_norm_temperature, "qb_k": args.qb_k}
    if args.test_norm == "qbnorm":
        if args.qb_split == args.split:
            raise UserError(f"--qb-split {args.qb_split}: the query bank must not come from the evaluated split")
        from .data import load_split

        texts = list(load_split(args.dataset, args.root, args.qb_split, media=args.media).texts)
        if args.qb_size is not None and args.qb_size < len(texts):  # evenly spaced, reproducible
            texts = [texts[i * len(texts) // args.qb_size] for i in range(args.qb_size)]
        opts.update(query_bank=texts, bank_info={"split": args.qb_split, "texts": len(texts)})
    return opts


def _train(args) -> int:
    from .train import load_config, train

    cfg = load_config(args.config, args.overrides)
    if args.force_config and not args.resume:
        raise UserError("--force-config goes with --resume")
    summary = train(cfg, resume=args.resume, argv=list(sys.argv[1:] if args.argv is None else args.argv),
                    force_config=args.force_config)
    if summary is not None and summary.get("best_step") is not None and not summary.get("already_finished"):
        print(json.dumps(summary, indent=2))
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    methods = args.methods
    if methods == ["all"]:
        from .demo import ALL_METHODS

        methods = list(ALL_METHODS)
    if args.quick and args.full:
        raise UserError("--quick and --full exclude each other")
    run_demo(args.out, quick=args.quick, full=args.full, videos=args.videos, methods=methods, tasks=args.tasks,
             protocols=args.protocols, seeds=args.seeds, seed=args.seed, jobs=args.jobs, workers=args.workers)
    return 0


def _ablate(args) -> int:
    from .train.ablate import run_ablation

    # `--methods a b key=value` : argparse gives the overrides to --methods; move them back.
    def is_override(item: str) -> bool:  # "optim.lr=1e-5", not "omit:mass=0.8"
        return "=" in item and ":" not in item.split("=", 1)[0]

    methods = [m for m in args.methods if not is_override(m)]
    overrides = [m for m in args.methods if is_override(m)] + list(args.overrides)
    run_ablation(args.config, methods, overrides)
    return 0


def _explain(args) -> int:
    from .viz import render

    if args.negative is not None:  # a true and a false caption, side by side
        from .viz.contrast import contrast_command

        return contrast_command(args)
    objects, stored = None, args.visual_store is not None or args.text_store is not None
    if stored:  # features computed elsewhere: no image, the flows and weights
        from .index.offline import explain_stored
    elif args.model is None or args.media is None or args.caption is None:
        raise UserError("tokenflow explain needs --model, --media and --caption (or --visual-store, --text-store, "
                        "--item and --text-id)")
    if args.boxes is not None and not stored:
        from .eval.pointing import boxes_for, read_boxes

        objects = boxes_for(read_boxes(args.boxes), args.media)  # a bad sidecar fails before any work
    expl, fusion = (explain_stored(args), None) if stored else _explain_model(args)
    render(expl, args.out, top=args.top)
    words = [t for t in expl.tokens if not (t.startswith("<") and t.endswith(">"))]
    if not words:
        print(f"tokenflow explain: warning: the model knows none of the caption's words ({args.caption!r} became "
              f"{' '.join(expl.tokens)}); the flows below carry no word's meaning", file=sys.stderr)
    for p in expl.top_pairs(args.top):
        print(f"{p['word']:>12} -> patch ({p['row']}, {p['col']}): T_hat {p['T_hat']:.2f} x c {p['c']:.2f} "
              f"= {p['T_hat_x_c']:.2f}")
    numbers = expl.to_dict(args.top)
    fused = ""
    if fusion is not None:  # the score search, serve and evaluate rank this pair with
        numbers.update(w_global=fusion[0], w_fine=fusion[1], fused_score=fusion[0] * expl.global_score +
                       fusion[1] * expl.score)
        fused = f", score {numbers['fused_score']:.4f} (w_global {fusion[0]:g}, w_fine {fusion[1]:g})"
    print(f"{expl.aligner} {expl.direction}: fine score {expl.score:.4f}, global {expl.global_score:.4f}{fused}; "
          f"figure: {args.out}")
    if objects is not None:
        pt = expl.pointing(objects)
        for w in pt.words:
            print(f"{w['word']:>12} -> patch {divmod(w['patch'], expl.grid[1])}: "
                  f"{'in' if w['hit'] else 'NOT in'} the box of {' '.join(objects[w['object']]['words'])}")
        print(f"pointing: {pt.hits}/{pt.total} object words in their object's box ({pt.accuracy:.1f} %; "
              f"chance {pt.chance_accuracy:.1f} %)" if pt.total else
              "pointing: the caption names none of the boxed objects")
        numbers["pointing"] = {**pt.to_dict(), "per_word": pt.words}
    if args.json:
        from .utils import write_text_atomic

        write_text_atomic(args.json, json.dumps(numbers, indent=2) + "\n")
    return 0


def _explain_model(args):
    """``(explanation, (w_global, w_fine))`` of ``--model`` (through the one scoring path: its trained
    plan with its learned weights, or ``--aligner``), ``--media`` and ``--caption``."""
    from .viz.explain import explain, load_model

    model = load_model(args.model, args.aligner)
    expl = explain(model, args.media, args.caption, direction=args.direction, aligner=args.aligner,
                   num_frames=args.frames)
    return expl, (model.w_global, model.w_fine)


def _add_make_data(sub) -> None:
    p = sub.add_parser("make-data", help="write the synthetic benchmark (Karpathy JSON + images, MSR-VTT + mp4)")
    p.add_argument("out", type=Path, help="output folder (images/ and videos/ are created in it)")
    p.add_argument("--images", type=_sizes, default=(1000, 100, 100), help="train,val,test images (even counts)")
    p.add_argument("--videos", type=_sizes, default=(200, 50, 50), help="train,val,test videos (even counts)")
    p.add_argument("--size", type=int, default=64, help="image and frame side in pixels")
    p.add_argument("--frames", type=int, default=16, help="frames per video")
    p.add_argument("--format", choices=("jpg", "png"), default="jpg", help="image files (default: jpg)")
    p.add_argument("--seed", type=int, default=0, help="the generator's seed (same seed, same files)")
    p.add_argument("--unpaired", type=int, default=0, metavar="N",
                   help="also write N unpaired items and N unpaired captions per benchmark (for cs.unpaired_*)")
    p.set_defaults(func=_make_data)


def _prepare_frames(args) -> int:
    from .data import load_split
    from .data.frame_cache import VIDEO_SPLITS, FrameCache, prepare_frames

    videos = [p for s in args.split or VIDEO_SPLITS[args.dataset]
              for p in load_split(args.dataset, args.root, s, media=args.media).item_paths]
    cache = FrameCache.create(args.out, args.frames, args.size)
    res = prepare_frames(videos, cache, workers=args.workers, on_error=args.on_error)
    for bad in res["skipped"]:
        print(f"tokenflow prepare-frames: skipped {bad['path']}: {bad['reason']}", file=sys.stderr)
    print(f"{args.out}: {res['videos']} videos, {res['written']} written, {res['kept']} already there, "
          f"{res['failed']} skipped")
    return 0


def _add_prepare_frames(sub) -> None:
    p = sub.add_parser("prepare-frames", help="decode the sampled frames of a video dataset once, into a cache "
                                              "that evaluate --frame-cache and data.frame_cache read")
    p.add_argument("--dataset", required=True, choices=("msrvtt", "msvd", "activitynet"),
                   help="video dataset format of --root")
    p.add_argument("--root", required=True, type=Path, help="dataset folder in its standard layout")
    p.add_argument("--split", nargs="+", default=None, help="splits whose videos to prepare (default: all videos)")
    p.add_argument("--media", type=Path, default=None, help="video folder if not the default one")
    p.add_argument("--frames", type=int, default=12, help="frames sampled per video")
    p.add_argument("--size", type=int, default=224, help="shortest side of a stored frame: the backbone's image "
                   "size (0: frames kept at their decoded size, for any backbone)")
    p.add_argument("--out", required=True, type=Path, help="cache folder (created; an existing one is completed)")
    p.add_argument("--workers", type=int, default=0, help="decoding processes")
    p.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                   help="unreadable video: stop, or list it and leave it out of the cache")
    p.set_defaults(func=_prepare_frames)


def _add_convert_captions(sub) -> None:
    p = sub.add_parser("convert-captions", help="turn MSVD's raw-captions.pkl into JSON without running code")
    p.add_argument("pickle", type=Path, help="MSVD's raw-captions.pkl (read without running code)")
    p.add_argument("--out", type=Path, default=None, help="default: next to the pickle, .json")
    p.set_defaults(func=_convert)


def _add_evaluate(sub) -> None:
    from .align import list_aligners
    from .data import DATASETS
    from .index.offline import add_store_options

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
    p.add_argument("--hp", type=_hparam, action="append", metavar="NAME=VALUE", help="aligner hyperparameter")
    p.add_argument("--w-global", type=float, default=None,
                   help="weight of the global similarity (default: a trained model's, else 1)")
    p.add_argument("--w-fine", type=float, default=None,
                   help="weight of the fine-grained score (default: a trained model's, else 1)")
    p.add_argument("--frames", type=int, default=12, help="frames sampled per video")
    p.add_argument("--frame-cache", type=Path, default=None,
                   help="read the sampled frames from this tokenflow prepare-frames folder (same --frames, size = "
                        "the backbone's image size); videos missing from it are decoded")
    p.add_argument("--video-tokens", choices=("frames", "patches"), default="frames",
                   help="a video's tokens: one per frame, or every patch of every frame")
    p.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                   help="missing/corrupt media: stop, or skip and count in the report")
    p.add_argument("--batch-size", type=int, default=64, help="items or texts encoded at once")
    p.add_argument("--workers", type=int, default=0, help="data loader processes")
    p.add_argument("--chunk", type=int, default=None, help="items per block in pairwise scoring")
    p.add_argument("--folds", type=int, default=None, help="also average metrics over folds of this many items "
                   "(automatic 1000 on COCO's 5K test)")
    p.add_argument("--max-words", type=int, default=None,
                   help="tokens per caption (default: the backbone's; at most its positional limit, 77 for CLIP)")
    p.add_argument("--test-norm", choices=("dsl", "isl", "qbnorm"), default=None,
                   help="also report metrics after test-time normalisation (dual softmax, inverted softmax, "
                        "QB-Norm), in a separate labelled block; the plain metrics stay as they are")
    p.add_argument("--test-norm-temperature", type=float, default=None,
                   help="softmax temperature (default: 0.01 for dsl, 0.05 = QB-Norm's beta 20 for isl, qbnorm)")
    p.add_argument("--qb-split", default="train", help="QB-Norm query bank: captions of this split (default: train)")
    p.add_argument("--qb-size", type=int, default=None, help="QB-Norm: at most this many bank captions, evenly "
                   "spaced (default: all)")
    p.add_argument("--qb-k", type=int, default=1, help="QB-Norm: hubs are the top-k items of the bank queries")
    p.add_argument("--rerank-top", type=int, default=None, metavar="K",
                   help="also report two-stage metrics: a global shortlist of K re-ranked by the plan (what "
                        "tokenflow search does), beside the exhaustive ones")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--out", type=Path, default=None, help="JSON report (written atomically)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_evaluate)


def _add_demo(sub) -> None:
    from .demo import METHODS, PROTOCOLS, TASKS

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
    from .demo import METHODS

    p = sub.add_parser("ablate", help="train and test one config once per plan; one table")
    p.add_argument("--config", required=True, type=Path, help="training YAML file (see configs/); run.out holds "
                   "one run folder per method")
    p.add_argument("--methods", nargs="+", default=list(METHODS), metavar="METHOD",
                   help=f"global (no plan), plan names, NAME:key=value,... or cs-aligner "
                        f"(default: {' '.join(METHODS)})")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config keys, value read as YAML")
    p.set_defaults(func=_ablate)


def _add_explain(sub) -> None:
    from .align import list_aligners
    from .index.offline import add_store_options

    p = sub.add_parser("explain", help="figure 4: patch and word weights and the strongest flows of one match")
    p.add_argument("--model", type=Path, default=None, help="a trained model folder (run.out/best)")
    p.add_argument("--media", type=Path, default=None, help="an image or a video (its middle frame is shown)")
    p.add_argument("--caption", default=None, help="the text of the match to explain")
    p.add_argument("--negative", default=None, metavar="TEXT",
                   help="a false caption of the same image: draw both plans side by side and print which word "
                        "pairs moved the score")
    add_store_options(p, explain=True)
    p.add_argument("--aligner", default=None, choices=list_aligners(), help="default: the model's plan (stores: "
                   "tokenflow)")
    p.add_argument("--direction", choices=("t2v", "v2t"), default="t2v",
                   help="the plan of text->visual (t2v, default) or visual->text")
    p.add_argument("--top", type=int, default=4, help="arrows for this many word-patch pairs")
    p.add_argument("--frames", type=int, default=12, help="frames sampled from a video")
    p.add_argument("--out", type=Path, default=Path("explain.png"), help="figure (PNG, written atomically)")
    p.add_argument("--boxes", type=Path, default=None,
                   help="object boxes (tokenflow-boxes JSON, e.g. the scenes task's boxes.json): print pointing "
                        "accuracy, whether each object word's strongest patch lies in its object's box")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON")
    p.set_defaults(func=_explain)


def _add_train(sub) -> None:
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


def _serve(args) -> int:
    from .serve import Limits
    from .serve.app import LOOPBACK_HOSTS, create_app, run

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


def _add_serve(sub) -> None:
    from .align import list_aligners

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
    p.add_argument("--w-global", type=float, default=None,
                   help="weight of the global similarity (default: a trained model's, else 1)")
    p.add_argument("--w-fine", type=float, default=None,
                   help="weight of the fine-grained score (default: a trained model's, else 1)")
    p.add_argument("--shortlist", type=int, default=100, help="items re-ranked per query")
    p.add_argument("--max-k", type=int, default=50, help="most results a query may ask for")
    p.add_argument("--media-root", type=Path, default=None,
                   help="folder every thumbnail must lie in (default: the deepest folder holding all item paths)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests addressed to this host name (default: loopback names and --host "
                        "only; '*' answers any, e.g. behind a proxy)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    p.set_defaults(func=_serve)


def build_parser() -> argparse.ArgumentParser:
    """The ``tokenflow`` parser with every subcommand."""
    from . import bench
    from .eval import compositional_cli
    from .index import commands as search_commands

    parser = argparse.ArgumentParser(prog="tokenflow", description=__doc__)
    parser.add_argument("--version", action="version", version=f"tokenflow {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of every error")
    sub = parser.add_subparsers(dest="command", required=True)
    bench.add_parser(sub)
    search_commands.add_parsers(sub, _hparam)
    compositional_cli.add_parser(sub, _hparam, stores=search_commands.compositional_stores)
    for add in (_add_make_data, _add_convert_captions, _add_evaluate, _add_demo, _add_ablate, _add_explain,
                _add_train):
        add(sub)
    _add_prepare_frames(sub)
    _add_serve(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return int(args.func(args) or 0)
    except Diverged as e:
        return _fail(args, e, 3)
    except (UserError, FileNotFoundError, FileExistsError, NotADirectoryError, ValueError) as e:
        # Bad input (a config, a path, a file that does not decode) or a missing extra: the message names it.
        return _fail(args, e, 2)
    except Exception as e:  # a bug: the traceback is what a report needs
        traceback.print_exc()
        print(f"tokenflow {args.command}: internal error ({type(e).__name__}); please report it with the "
              "traceback above", file=sys.stderr)
        return 1


def _fail(args, e: BaseException, code: int) -> int:
    if args.debug:
        traceback.print_exception(e)
    print(f"tokenflow {args.command}: {e}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
