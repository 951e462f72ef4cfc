"""``tokenflow encode``, ``import-features``, ``index`` and ``search``: search at scale. Building
and searching are separate steps, as in ColBERT::

    tokenflow encode --model FOLDER --dataset flickr30k --root DIR --split test --out STORE
    tokenflow index STORE [--kind auto|flat|ivf|hnsw]
    tokenflow search --index STORE --text "a red cube left of a blue ball" --aligner tokenflow

Under ``torchrun`` every rank of ``encode`` writes its own part of the collection
(``STORE/part-RRR``, a complete store each); ``index STORE`` then indexes every part and
``search --index STORE`` searches them all and merges their shortlists, which with flat indexes
is exactly what one index over the whole collection gives. Parts on different machines follow
the same plan: each serves its FAISS shards, and one merger takes the best shortlist of their
answers and re-ranks it (merging each machine's own re-ranked top k instead re-ranks one
shortlist per machine, a longer one in all).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ..errors import UserError
from .common import read_lines, scoring_notes, with_max_words
from .options import add_device, add_frames, add_fusion_weights, add_hp, add_on_error, add_video_tokens, hparams

__all__ = ["MAX_QUERY_CHARS", "add_parsers", "format_results"]

#: Longest text query accepted (characters); larger k and shortlists are capped at the collection.
MAX_QUERY_CHARS = 2000


def _folder_files(folder: Path, modality: str) -> list[Path]:
    from ..data.base import media_files

    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    return media_files(folder, modality, recursive=True)


def _encode_source(args: argparse.Namespace):
    """``(split or texts, text ids or None, description)`` from the encode arguments."""
    from ..index.collections import media_split

    if args.texts is not None:
        texts = read_lines(args.texts, "captions")
        return texts, [str(i + 1) for i in range(len(texts))], f"{args.texts} ({len(texts)} texts)"
    if args.images is not None or args.videos is not None:
        folder, modality = (args.images, "image") if args.images is not None else (args.videos, "video")
        return media_split(_folder_files(folder, modality), modality, str(folder)), None, str(folder)
    from ..data import load_split
    from ..index.offline import caption_ids

    if args.root is None:
        raise UserError(f"--dataset {args.dataset} needs --root, the dataset folder in its standard layout")
    split = load_split(args.dataset, args.root, args.split, media=args.media)
    if args.captions:
        return list(split.texts), caption_ids(split), f"{split.name} captions"
    return split, None, split.name


def _rank_part(args: argparse.Namespace, source, ids):
    """``(source, ids, out, device)`` of this process: under torchrun its contiguous part, written
    as a complete store of its own (``OUT/part-RRR``) on its LOCAL_RANK GPU."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return source, ids, args.out, args.device
    n = len(source)
    a, b = rank * n // world, (rank + 1) * n // world
    source = source.subset(list(range(a, b))) if ids is None else source[a:b]
    ids = None if ids is None else ids[a:b]
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if args.device == "cuda" else args.device
    return source, ids, args.out / f"part-{rank:03d}", device


def _encode(args: argparse.Namespace) -> int:
    from ..index.encode import backbone_fingerprint, encode_store
    from ..models.scoring import load_scoring

    if args.texts is None and args.images is None and args.videos is None and args.dataset is None:
        raise UserError("tokenflow encode needs what to encode: --dataset/--root, --images DIR, --videos DIR "
                        "or --texts FILE")
    source, ids, what = _encode_source(args)
    source, ids, out, device = _rank_part(args, source, ids)
    backbone = load_scoring(args.model).backbone  # the backbone the scoring path scores with
    backbone = with_max_words(backbone, args.max_words).to(device).eval()
    t0 = time.perf_counter()
    store = encode_store(backbone, source, out, ids=ids, dtype=args.dtype, shard_size=args.shard_size,
                         batch_size=args.batch_size, num_frames=args.frames, video_tokens=args.video_tokens,
                         on_error=args.on_error, workers=args.workers, progress=not args.quiet and sys.stderr.isatty(),
                         backbone_info=backbone_fingerprint(backbone, name=str(Path(args.model).resolve())))
    skipped = store.manifest.get("skipped", [])
    size = sum(f["bytes"] for s in store.manifest["shards"] for f in s["files"].values())
    print(f"{what}: {len(store)} {store.kind} items encoded into {out} ({store.dtype}, {size / 2**20:.1f} MiB, "
          f"{time.perf_counter() - t0:.1f} s); skipped {len(skipped)}")
    for s in skipped[:10]:
        print(f"  skipped {s.get('path')}: {s.get('reason')}", file=sys.stderr)
    return 0


def _import(args: argparse.Namespace) -> int:
    from ..index.importer import import_features

    t0 = time.perf_counter()
    store = import_features(args.files, args.out, kind=args.kind, model=args.model_name, note=args.note,
                            modality=args.modality, dtype=args.dtype, shard_size=args.shard_size,
                            normalize=args.normalize)
    size = sum(f["bytes"] for s in store.manifest["shards"] for f in s["files"].values())
    files = f"{len(args.files)} file{'s' if len(args.files) > 1 else ''}"
    norm = "L2-normalised" if args.normalize else "as given"
    print(f"{files}: {len(store)} {store.kind} rows of {store.manifest['source']['model']} imported into {args.out} "
          f"(L={store.max_tokens}, D={store.dim}, {store.dtype}, {norm}, {size / 2**20:.1f} MiB, "
          f"{time.perf_counter() - t0:.1f} s)")
    return 0


def _index(args: argparse.Namespace) -> int:
    from ..index.collections import auto_settings
    from ..index.parts import store_parts
    from ..index.shortlist import Indexer
    from ..index.store import FeatureStore

    for part in store_parts(args.store):
        n = len(FeatureStore(part))
        settings = auto_settings(n) if args.kind == "auto" else {"kind": args.kind}
        for key in ("encoding", "nlist", "nprobe", "m", "ef_search"):
            if getattr(args, key) is not None:
                settings[key] = getattr(args, key)
        t0 = time.perf_counter()
        out = Indexer(**settings).index(part)
        info = json.loads((out / "index.json").read_text())
        print(f"{out}: {info['settings']['kind']} index of {n} items ({info['settings']['encoding']}), "
              f"{(out / info['file']).stat().st_size / 2**20:.1f} MiB, {time.perf_counter() - t0:.1f} s")
    return 0


def _queries(args: argparse.Namespace, searcher):
    """(labels, queries) from ``--text``, ``--queries``, ``--image`` or ``--video``."""
    from ..index.collections import media_split

    if args.text or args.queries:
        texts = list(args.text or []) + (read_lines(args.queries, "queries") if args.queries else [])
        for t in texts:
            if not t.strip():
                raise UserError("--text: an empty query; give some words")
            if len(t) > MAX_QUERY_CHARS:
                raise UserError(f"--text: a query of {len(t)} characters; at most {MAX_QUERY_CHARS}")
        return texts, texts
    files, modality = (args.image, "image") if args.image else (args.video, "video")
    if not files:
        raise UserError("tokenflow search needs queries: --text, --queries FILE, --image or --video")
    from ..eval.evaluate import encode_items

    tokens, kept, skipped = encode_items(searcher.model, media_split([Path(f) for f in files], modality, "queries"),
                                         num_frames=args.frames, video_tokens=args.video_tokens)
    if skipped:
        raise UserError(f"{skipped[0]['path']}: {skipped[0]['reason']}")
    return [str(f) for f in files], tokens


def _search_scoring(args: argparse.Namespace, dirs: list[Path]):
    """The :class:`~tokenflow.models.scoring.Scoring` of ``--model``, else of the folder that
    encoded the store when it is still there (with neither, an error), after ``--aligner``,
    ``--hp``, ``--w-global`` and ``--w-fine``; its backbone on ``--device``."""
    from ..index.collections import store_of
    from ..index.store import FeatureStore
    from ..models.scoring import load_scoring

    model = args.model
    if model is None:
        named = FeatureStore(store_of(dirs[0])).backbone.get("name")
        if not (named and Path(named).is_dir()):
            raise UserError(f"--model: needed to encode the queries; the store's backbone {named!r} is not a local "
                            "folder")
        model = Path(named)
    scoring = load_scoring(model, args.aligner, hparams(args), w_global=args.w_global, w_fine=args.w_fine)
    scoring_notes(scoring, "search")
    scoring.backbone.to(args.device).eval()
    return scoring


def _query_store_search(args: argparse.Namespace, dirs: list[Path]):
    """``search --query-store T``: ``(searcher, plan name, labels, queries)``, the queries being the
    stored features of T's rows (``--query-id``: those rows only)."""
    from ..index.collections import store_of
    from ..index.offline import open_stores, plan_for_stores, source_mismatch, store_tokens
    from ..index.searcher import Searcher
    from ..index.store import FeatureStore

    given = [f"--{k}" for k in ("text", "queries", "image", "video") if getattr(args, k)]
    if given:
        raise UserError(f"{given[0]}: give either queries to encode or --query-store, not both")
    index_store = FeatureStore(store_of(dirs[0]))
    stores = open_stores(args.query_store, "text" if index_store.kind == "visual" else "visual", "--query-store")
    mismatch = source_mismatch(index_store, stores[0])
    if mismatch and not args.no_check_backbone:
        raise UserError(f"--query-store: {mismatch}; pass --no-check-backbone to search anyway")
    ids = list(args.query_id) if args.query_id else [i for s in stores for i in s.ids]
    queries = store_tokens(stores, ids, "--query-store")
    texts = {i: t for s in stores if s.kind == "text" for i, t in zip(s.ids, s.texts, strict=True)}
    labels = [f"{i}: {texts[i]}" if texts.get(i) else i for i in ids]
    scoring = plan_for_stores(args.aligner, hparams(args), index_store.dim, args.model, w_global=args.w_global,
                              w_fine=args.w_fine)
    scoring_notes(scoring, "search")
    searcher = Searcher(list(dirs), aligner=scoring.aligner, w_global=scoring.w_global, w_fine=scoring.w_fine,
                        device=args.device)
    return searcher, scoring.name, labels, queries


def _searcher(args: argparse.Namespace, dirs: list[Path]):
    """``(searcher, plan name, labels, queries)`` of the search arguments."""
    from ..index.searcher import Searcher

    if args.query_store is not None:  # stored query features (encode or import-features): no backbone
        return _query_store_search(args, dirs)
    scoring = _search_scoring(args, dirs)
    searcher = Searcher.from_scoring(dirs, scoring, device=args.device, check_backbone=not args.no_check_backbone)
    return (searcher, scoring.name, *_queries(args, searcher))


def _search(args: argparse.Namespace) -> int:
    from ..index.collections import index_dirs
    from ..utils import check_writable, write_text_atomic

    if args.k < 1 or args.shortlist < 1:
        raise UserError(f"--k and --shortlist must be at least 1, got {args.k} and {args.shortlist}")
    if args.json:
        check_writable(args.json.parent, "--json folder")
    dirs = index_dirs(args.index)
    searcher, name, labels, queries = _searcher(args, dirs)
    t0 = time.perf_counter()
    results = searcher.search(queries, k=args.k, shortlist=args.shortlist)
    seconds = time.perf_counter() - t0
    paths = [s.paths for s in searcher.stores]
    aligner = searcher.aligner
    report = {"index": [str(d) for d in dirs], "items": len(searcher), "aligner": name,
              "hparams": None if aligner is None else aligner.hparams(), "w_global": searcher.w_global,
              "w_fine": searcher.w_fine, "k": args.k, "shortlist": args.shortlist, "seconds": round(seconds, 4),
              "queries": []}
    source = "text" if searcher.kind == "text" else "path"
    for label, res in zip(labels, results, strict=True):
        rows = [{"rank": r + 1, "id": res.ids[r], source: paths[res.stores[r]][res.rows[r]],
                 "score": float(res.scores[r]), "global": float(res.global_scores[r]),
                 "fine": None if res.fine_scores is None else float(res.fine_scores[r])} for r in range(len(res.ids))]
        report["queries"].append({"query": label, "results": rows})
    print(format_results(report))
    if args.json:
        write_text_atomic(args.json, json.dumps(report, indent=2) + "\n")
        print(f"results: {args.json}")
    return 0


def format_results(report: dict) -> str:
    """The results of a search as a text table, one block per query."""
    lines = [f"{report['items']} items, plan {report['aligner']}, shortlist {report['shortlist']}, "
             f"{len(report['queries'])} queries in {report['seconds']:.3f} s"]
    for q in report["queries"]:
        lines.append(f"\nquery: {q['query']}")
        lines.append(f"{'rank':>4}  {'score':>8}  {'global':>8}  {'fine':>8}  id")
        for r in q["results"]:
            fine = "" if r["fine"] is None else f"{r['fine']:.4f}"
            text = f"  {r['text']}" if "text" in r else ""
            lines.append(f"{r['rank']:>4}  {r['score']:>8.4f}  {r['global']:>8.4f}  {fine:>8}  {r['id']}{text}")
    return "\n".join(lines)


# -- parsers ------------------------------------------------------------------------------------
def add_parsers(sub) -> None:
    """Register ``encode``, ``import-features``, ``index`` and ``search``."""
    _add_encode(sub)
    _add_import(sub)
    _add_index(sub)
    _add_search(sub)


def _add_encode(sub) -> None:
    from ..data import DATASETS

    p = sub.add_parser("encode", help="encode a collection once into a feature store (sharded, resumable)")
    p.add_argument("--model", required=True, type=Path, help="backbone folder (local CLIP, tiny, or trained)")
    p.add_argument("--out", required=True, type=Path, help="store folder (under torchrun: one part-RRR per rank)")
    src = p.add_argument_group("what to encode (one)")
    src.add_argument("--dataset", choices=DATASETS, default=None, help="a dataset split's visual items ...")
    src.add_argument("--root", type=Path, default=None, help="... in this folder, in its standard layout")
    src.add_argument("--split", default="test", help="... this split (default: test)")
    src.add_argument("--media", type=Path, default=None, help="image/video folder if not the default one")
    src.add_argument("--captions", action="store_true", help="the split's captions instead (a text store)")
    src.add_argument("--images", type=Path, default=None, help="every image under a folder")
    src.add_argument("--videos", type=Path, default=None, help="every video under a folder")
    src.add_argument("--texts", type=Path, default=None, help="a UTF-8 file of captions, one per line (ids: line "
                     "numbers)")
    p.add_argument("--dtype", choices=("fp16", "fp32", "int8"), default="fp16",
                   help="token features on disk (int8: per-token scale; default fp16)")
    p.add_argument("--shard-size", type=int, default=4096, help="items per shard (the unit of resuming)")
    p.add_argument("--batch-size", type=int, default=64, help="items encoded at once")
    add_frames(p)
    add_video_tokens(p)
    p.add_argument("--max-words", type=int, default=None, help="tokens per caption (text stores)")
    add_on_error(p, skip="skip and list them in the manifest")
    p.add_argument("--workers", type=int, default=0, help="data loader processes")
    add_device(p, help="cpu, cuda (under torchrun: each rank its LOCAL_RANK GPU)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_encode)


def _add_import(sub) -> None:
    p = sub.add_parser("import-features", help="write a feature store from token features computed elsewhere "
                       "(.npz or .safetensors: feats, mask, pooled, ids)")
    p.add_argument("files", nargs="+", type=Path, help=".npz or .safetensors files: feats [N, L, D], mask [N, L], "
                   "pooled [N, D], ids [N], optional paths or texts [N]; rows in file order")
    p.add_argument("--out", required=True, type=Path, help="store folder (resumable, like tokenflow encode)")
    p.add_argument("--kind", required=True, choices=("visual", "text"), help="what the rows are: visual items or "
                   "texts")
    p.add_argument("--modality", choices=("image", "video"), default=None, help="a visual store's items (default: "
                   "image)")
    p.add_argument("--model-name", required=True, help="the model that computed the features (kept in the manifest)")
    p.add_argument("--note", default=None, help="free text kept in the manifest (how the features were made)")
    p.add_argument("--dtype", choices=("fp16", "fp32", "int8"), default="fp16", help="token features on disk")
    p.add_argument("--shard-size", type=int, default=4096, help="rows per shard (no shard spans two files)")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=True,
                   help="divide each real token and pooled feature by its L2 norm, as the library assumes (default; "
                        "--no-normalize: keep them as given); recorded in the manifest's source")
    p.set_defaults(func=_import)


def _add_index(sub) -> None:
    from ..index.collections import AUTO_FLAT_MAX

    p = sub.add_parser("index", help="build the FAISS index over a store's global features")
    p.add_argument("store", type=Path, help="store folder written by tokenflow encode (or its parts' folder)")
    p.add_argument("--kind", choices=("auto", "flat", "ivf", "hnsw"), default="auto",
                   help=f"auto: exact flat up to {AUTO_FLAT_MAX} items, IVF with 8-bit vectors above")
    p.add_argument("--encoding", choices=("flat", "fp16", "sq8"), default=None, help="vectors of ivf/hnsw")
    p.add_argument("--nlist", type=int, default=None, help="IVF lists")
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists searched per query")
    p.add_argument("--m", type=int, default=None, help="HNSW neighbours per node")
    p.add_argument("--ef-search", type=int, default=None, help="HNSW candidates per query")
    p.set_defaults(func=_index)


def _add_search(sub) -> None:
    from ..align import list_aligners

    p = sub.add_parser("search", help="two-stage search: FAISS shortlist, then re-ranking with any plan")
    p.add_argument("--index", required=True, type=Path, help="store (or index) folder built by tokenflow index")
    q = p.add_argument_group("queries (one kind)")
    q.add_argument("--text", action="append", default=None, help="a text query (repeatable)")
    q.add_argument("--queries", type=Path, default=None, help="a UTF-8 file of text queries, one per line")
    q.add_argument("--image", action="append", default=None, help="an image query against a text store")
    q.add_argument("--video", action="append", default=None, help="a video query against a text store")
    q.add_argument("--query-store", type=Path, default=None, help="stored query features (tokenflow encode or "
                   "import-features; texts for a visual index, visual items for a text one): no backbone needed")
    q.add_argument("--query-id", action="append", default=None, help="with --query-store: only this row (repeatable)")
    p.add_argument("--model", type=Path, default=None, help="backbone folder (default: the one that encoded the "
                   "store; with --query-store: only its plan and fusion weights)")
    p.add_argument("--k", type=int, default=10, help="results per query (all items when k exceeds the collection)")
    p.add_argument("--shortlist", type=int, default=100, help="global candidates re-ranked per query")
    p.add_argument("--aligner", default=None, choices=[*list_aligners(), "none"],
                   help="re-ranking plan (default: a trained model's, else tokenflow; none: global only)")
    add_hp(p)
    add_fusion_weights(p)
    add_frames(p, help="frames sampled per video query")
    add_video_tokens(p)
    p.add_argument("--no-check-backbone", action="store_true",
                   help="search even when the model's weights differ from the store's backbone")
    add_device(p, help="where queries are encoded and re-ranked")
    p.add_argument("--json", type=Path, default=None, help="full results as JSON (written atomically)")
    p.set_defaults(func=_search)
