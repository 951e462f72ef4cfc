"""``tokenflow encode``, ``tokenflow index`` and ``tokenflow search``: the command line of search
at scale. Building and searching are separate steps, as in ColBERT:

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
import math
import os
import sys
import time
from pathlib import Path

from ..errors import UserError
from .parts import store_parts

__all__ = ["AUTO_FLAT_MAX", "add_parsers", "index_dirs", "media_split", "store_parts"]

#: ``--kind auto``: an exact flat index up to this many items; above it IVF with 8-bit vectors,
#: so that the index stays near 0.5 GB at a million items of D = 512.
AUTO_FLAT_MAX = 262_144
#: Longest text query accepted (characters); larger k and shortlists are capped at the collection.
MAX_QUERY_CHARS = 2000


def index_dirs(path: Path) -> list[Path]:
    """The index folders that ``--index PATH`` names: an index folder itself, a store with its
    ``index/``, or a store in parts (every part's ``index/``)."""
    from .shortlist import INDEX_SETTINGS

    path = Path(path)
    if (path / INDEX_SETTINGS).is_file():
        return [path]
    dirs = [p / "index" for p in store_parts(path)]
    missing = [d for d in dirs if not (d / INDEX_SETTINGS).is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: no index here ({INDEX_SETTINGS} not found); build it with "
                                f"tokenflow index {path}")
    return dirs


def media_split(files: list[Path], modality: str, name: str):
    """A :class:`~tokenflow.data.base.RetrievalSplit` of media files without captions; item ids are
    the paths relative to their common folder, without the extension."""
    from ..data.base import RetrievalSplit

    if not files:
        raise UserError(f"{name}: no {modality} files")
    root = Path(os.path.commonpath([str(p.parent) for p in files]))
    ids = [str(p.relative_to(root).with_suffix("")) for p in files]
    if len(set(ids)) != len(ids):  # a.jpg and a.png: keep the extension
        ids = [str(p.relative_to(root)) for p in files]
    return RetrievalSplit(name, modality, ids, list(files), [], [])


def _folder_files(folder: Path, modality: str) -> list[Path]:
    from ..data.base import media_files

    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    return media_files(folder, modality, recursive=True)


def _read_lines(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: {what} must be UTF-8 text, one per line ({e})") from None
    lines = [line for line in lines if line]
    if not lines:
        raise UserError(f"{path}: no {what} (the file is empty)")
    return lines


def _rank_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _encode_source(args):
    """``(split or texts, text ids or None, description)`` from the encode arguments."""
    if args.texts is not None:
        texts = _read_lines(args.texts, "captions")
        return texts, [str(i + 1) for i in range(len(texts))], f"{args.texts} ({len(texts)} texts)"
    if args.images is not None or args.videos is not None:
        folder, modality = (args.images, "image") if args.images is not None else (args.videos, "video")
        return media_split(_folder_files(folder, modality), modality, str(folder)), None, str(folder)
    from ..data import load_split

    split = load_split(args.dataset, args.root, args.split, media=args.media)
    if args.captions:
        ids = [f"{split.item_ids[i]}#{k}" for k, i in enumerate(split.text_item)]
        return list(split.texts), ids, f"{split.name} captions"
    return split, None, split.name


def _encode(args) -> int:
    from ..models.scoring import load_scoring
    from .encode import backbone_fingerprint, encode_store

    if args.texts is None and args.images is None and args.videos is None and args.dataset is None:
        raise UserError("tokenflow encode needs what to encode: --dataset/--root, --images DIR, --videos DIR "
                        "or --texts FILE")
    source, ids, what = _encode_source(args)
    rank, world = _rank_world()
    out = args.out
    if world > 1:  # torchrun: this rank's contiguous part, a complete store of its own
        n = len(source)
        a, b = rank * n // world, (rank + 1) * n // world
        source = source.subset(list(range(a, b))) if ids is None else source[a:b]
        ids = None if ids is None else ids[a:b]
        out = out / f"part-{rank:03d}"
    device = args.device
    if device == "cuda" and world > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    backbone = load_scoring(args.model).backbone.to(device).eval()  # the backbone the scoring path scores with
    if args.max_words is not None:
        backbone.set_max_text_len(args.max_words)
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


def auto_settings(n: int) -> dict:
    """``--kind auto`` for a collection of ``n`` items: flat up to :data:`AUTO_FLAT_MAX`; above it
    IVF with about sqrt(n) lists trained on 64 points per list, 8-bit vectors, and 1/32 of the
    lists probed (at least 16)."""
    if n <= AUTO_FLAT_MAX:
        return {"kind": "flat"}
    nlist = int(math.sqrt(n))
    return {"kind": "ivf", "encoding": "sq8", "nlist": nlist, "nprobe": max(16, nlist // 32),
            "train_size": 64 * nlist}


def _index(args) -> int:
    from .shortlist import Indexer
    from .store import FeatureStore

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


def _queries(args, searcher):
    """(labels, queries) from ``--text``, ``--queries``, ``--image`` or ``--video``."""
    if args.text or args.queries:
        texts = list(args.text or []) + (_read_lines(args.queries, "queries") if args.queries else [])
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


def _search_model(args, dirs: list[Path]):
    """The :class:`~tokenflow.models.scoring.Scoring` of ``--model``, else of the folder that
    encoded the store when it is still there (with neither, an error), after ``--aligner``,
    ``--hp``, ``--w-global`` and ``--w-fine``; its backbone on ``--device``."""
    from ..eval.command import scoring_notes
    from ..models.scoring import load_scoring
    from .store import FeatureStore

    model = args.model
    if model is None:
        named = FeatureStore(_store_of(dirs[0])).backbone.get("name")
        if named and Path(named).is_dir():
            model = Path(named)
        else:
            raise UserError(f"--model: needed to encode the queries; the store's backbone {named!r} is not a local "
                            "folder")
    scoring = load_scoring(model, args.aligner, dict(args.hp or []), w_global=args.w_global, w_fine=args.w_fine)
    scoring_notes(scoring, "search")
    scoring.backbone.to(args.device).eval()
    return scoring


def _store_of(index_dir: Path) -> Path:
    from .shortlist import _read_settings

    return index_dir / _read_settings(index_dir)[0]["store"]


def _search(args) -> int:
    from ..utils import check_writable, write_text_atomic
    from .searcher import Searcher

    if args.k < 1 or args.shortlist < 1:
        raise UserError(f"--k and --shortlist must be at least 1, got {args.k} and {args.shortlist}")
    if args.json:
        check_writable(args.json.parent, "--json folder")
    dirs = index_dirs(args.index)
    if args.query_store is not None:  # stored query features (encode or import-features): no backbone
        from .offline import query_store_search

        searcher, name, labels, queries = query_store_search(args, dirs)
        aligner, w_global, w_fine = searcher.aligner, searcher.w_global, searcher.w_fine
    else:
        scoring = _search_model(args, dirs)
        searcher = Searcher.from_scoring(dirs, scoring, device=args.device,
                                         check_backbone=not args.no_check_backbone)
        aligner, name, w_global, w_fine = scoring.aligner, scoring.name, scoring.w_global, scoring.w_fine
        labels, queries = _queries(args, searcher)
    t0 = time.perf_counter()
    results = searcher.search(queries, k=args.k, shortlist=args.shortlist)
    seconds = time.perf_counter() - t0
    paths = [s.paths for s in searcher.stores]
    report = {"index": [str(d) for d in dirs], "items": len(searcher), "aligner": name,
              "hparams": None if aligner is None else aligner.hparams(), "w_global": w_global, "w_fine": w_fine,
              "k": args.k, "shortlist": args.shortlist, "seconds": round(seconds, 4), "queries": []}
    for label, res in zip(labels, results, strict=True):
        source = "text" if searcher.kind == "text" else "path"
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
def add_parsers(sub, hparam) -> None:
    """Register ``encode``, ``import-features``, ``index`` and ``search`` (``hparam``: the CLI's
    NAME=VALUE parser)."""
    _add_encode(sub)
    _add_import(sub)
    _add_index(sub)
    _add_search(sub, hparam)


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
    p.add_argument("--frames", type=int, default=12, help="frames sampled per video")
    p.add_argument("--video-tokens", choices=("frames", "patches"), default="frames",
                   help="a video's tokens: one per frame (default), or every patch of every frame")
    p.add_argument("--max-words", type=int, default=None, help="tokens per caption (text stores)")
    p.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                   help="unreadable media: stop, or skip and list them in the manifest")
    p.add_argument("--workers", type=int, default=0, help="data loader processes")
    p.add_argument("--device", default="cpu", help="cpu, cuda (under torchrun: each rank its LOCAL_RANK GPU)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_encode)


def compositional_stores(args, items, root):
    """``evaluate-compositional`` from stores: :func:`tokenflow.index.offline.compositional_stores`
    (imported when used, so the CLI starts without numpy's store code)."""
    from .offline import compositional_stores as run

    return run(args, items, root)


def _import(args) -> int:
    from .importer import import_features

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


def _add_search(sub, hparam) -> None:
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
    p.add_argument("--hp", type=hparam, action="append", metavar="NAME=VALUE", help="plan hyperparameter")
    p.add_argument("--w-global", type=float, default=None, help="weight of the global similarity")
    p.add_argument("--w-fine", type=float, default=None, help="weight of the fine-grained score")
    p.add_argument("--frames", type=int, default=12, help="frames sampled per video query")
    p.add_argument("--video-tokens", choices=("frames", "patches"), default="frames",
                   help="a video's tokens: one per frame (default), or every patch of every frame")
    p.add_argument("--no-check-backbone", action="store_true",
                   help="search even when the model's weights differ from the store's backbone")
    p.add_argument("--device", default="cpu", help="where queries are encoded and re-ranked")
    p.add_argument("--json", type=Path, default=None, help="full results as JSON (written atomically)")
    p.set_defaults(func=_search)
