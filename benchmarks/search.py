"""Search at scale: two-stage search (FAISS shortlist, then re-ranking with a plan) from 10K to 1M
items, against exhaustive fine-grained scoring of the same queries.

    python benchmarks/search.py [--sizes 10000 100000 1000000] [--patch-sizes 10000 100000]
                                [--queries 50] [--work /tmp/tokenflow-search-bench] [--labelled 2000]

Collections in CLIP ViT-B/32 shapes (D = 512): l1 = 12 frame tokens at every size, l1 = 50 patch
tokens up to 100K (disk). Features are synthetic with structure: each item mixes 3 of 4096
"concepts" over its tokens, and a text query names 2-3 concepts of one target item, so global and
fine-grained scores agree in part, as real ones do. Token features are written as the store keeps
them (fp16), through ``tokenflow.index.StoreWriter``; queries are pre-encoded ``Tokens`` (the
text encoder's time is not part of the search).

For each collection it reports: store and index build time, disk and peak RAM; single-query
latency p50/p95 and batched queries/s of ``Searcher.search`` (plan ``tokenflow``, shortlist 100,
``--kind auto`` index), measured in a fresh process whose peak RSS is the search's own; the
exhaustive fine-grained time per query (at 1M measured on a 100K subset and extrapolated, marked
so); the top-10 overlap with the exhaustive ranking against the shortlist size (table and PNG);
and on a labelled collection (the synthetic benchmark, encoded by a tiny model trained here)
R@1/5/10 of two-stage search against exhaustive scoring.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
D, CONCEPTS, CHUNK = 512, 4096, 32768
SHORTLISTS = [10, 20, 50, 100, 200, 500, 1000]
BACKBONE = {"name": "synthetic ViT-B/32 shapes", "sha256": "0" * 64}


# -- synthetic collections ------------------------------------------------------------------------
def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def _concepts(dim: int = D) -> torch.Tensor:
    """[CONCEPTS, dim] unit vectors (fixed); ``items`` and ``queries`` take their size from them."""
    return _unit(torch.randn(CONCEPTS, dim, generator=torch.Generator().manual_seed(0)))


def _item_concepts(rows: np.ndarray) -> torch.Tensor:
    """[n, 3] concept ids of items ``rows``: a fixed function of the row, so queries can name them."""
    rows = torch.as_tensor(np.asarray(rows), dtype=torch.int64)[:, None]
    return (rows * torch.tensor([7919, 104729, 1299709]) + torch.tensor([17, 4099, 65537])) % CONCEPTS


def items(start: int, n: int, length: int, concepts: torch.Tensor, gen: torch.Generator):
    from tokenflow.tokens import Tokens

    dim = concepts.shape[1]
    ids = _item_concepts(np.arange(start, start + n))
    which = torch.randint(0, 3, (n, length), generator=gen)
    base = concepts[ids.gather(1, which)]  # [n, L, D]
    feats = _unit(base + torch.randn(n, length, dim, generator=gen) / dim ** 0.5)  # cos to its concept ~0.7
    pooled = _unit(feats.mean(1) + 0.5 * torch.randn(n, dim, generator=gen) / dim ** 0.5)
    return Tokens(feats, torch.ones(n, length, dtype=torch.bool), pooled)


def queries(targets: np.ndarray, concepts: torch.Tensor, seed: int):
    """Text queries of 8 tokens (2-6 real) naming concepts of each target item."""
    from tokenflow.tokens import Tokens

    gen = torch.Generator().manual_seed(seed)
    ids = _item_concepts(targets)
    n, length, dim = len(targets), 8, concepts.shape[1]
    which = torch.randint(0, 3, (n, length), generator=gen)
    feats = _unit(concepts[ids.gather(1, which)] + 1.2 * torch.randn(n, length, dim, generator=gen) / dim ** 0.5)
    real = torch.randint(2, 7, (n,), generator=gen)
    mask = torch.arange(length)[None] < real[:, None]
    feats = feats * mask[..., None]
    pooled = _unit((feats.sum(1) / real[:, None]) + 0.5 * torch.randn(n, dim, generator=gen) / dim ** 0.5)
    return Tokens(feats, mask, pooled)


def build(folder: Path, n: int, length: int) -> dict:
    """Write the store (shards of CHUNK rows, fp16) and its auto index; times, disk, peak RAM."""
    from tokenflow.index import StoreWriter
    from tokenflow.index.collections import auto_settings
    from tokenflow.index.shortlist import Indexer

    concepts, gen = _concepts(), torch.Generator().manual_seed(n + length)
    t0 = time.perf_counter()
    with StoreWriter(folder, kind="visual", backbone=BACKBONE, dtype="fp16", shard_size=CHUNK) as w:
        for a in range(0, n, CHUNK):
            m = min(CHUNK, n - a)
            w.add(items(a, m, length, concepts, gen), [str(i) for i in range(a, a + m)])
    t_store = time.perf_counter() - t0
    settings = auto_settings(n)
    Indexer(**settings).index(folder)
    t_index = time.perf_counter() - t0 - t_store
    disk = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    index_disk = sum(p.stat().st_size for p in (folder / "index").iterdir() if p.is_file())
    return {"store_s": round(t_store, 1), "index_s": round(t_index, 1), "index": settings,
            "disk_gb": round(disk / 1e9, 2), "index_disk_mb": round(index_disk / 1e6, 1),
            "build_peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


# -- measuring (each in a fresh process) ----------------------------------------------------------
def latency(folder: Path, n: int, n_queries: int, shortlist: int = 100) -> dict:
    """Two-stage latency over ``folder``'s index: p50/p95 one query at a time, batched queries/s."""
    from tokenflow import get_aligner
    from tokenflow.index import Searcher

    q = queries(np.random.default_rng(1).integers(0, n, n_queries), _concepts(), seed=1)
    out = {}
    for name in ("none", "tokenflow"):
        s = Searcher(folder / "index", aligner=None if name == "none" else get_aligner(name))
        s.search(q[:2], k=10, shortlist=shortlist)  # warm-up: ids, memory maps
        times = []
        for i in range(n_queries):
            t0 = time.perf_counter()
            s.search(q[i:i + 1], k=10, shortlist=shortlist)
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        s.search(q, k=10, shortlist=shortlist)
        batched = n_queries / (time.perf_counter() - t0)
        out[name] = {"p50_ms": round(float(np.percentile(times, 50)) * 1e3, 2),
                     "p95_ms": round(float(np.percentile(times, 95)) * 1e3, 2), "batched_qps": round(batched, 1)}
    out["search_peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    return out


def exhaustive(folder: Path, n: int, n_queries: int, limit: int | None = None) -> dict:
    """Fine-grained scores of every item (the first ``limit`` items) for ``n_queries`` queries:
    seconds per query, and each query's top 10 (when all items were scored)."""
    from tokenflow import get_aligner
    from tokenflow.index import FeatureStore

    store, aligner = FeatureStore(folder), get_aligner("tokenflow")
    q = queries(np.random.default_rng(1).integers(0, n, n_queries), _concepts(), seed=1)
    upto = min(limit or n, n)
    scores = torch.empty(upto, n_queries)
    t0 = time.perf_counter()
    with torch.no_grad():
        for a in range(0, upto, 8192):
            vis = store.tokens(np.arange(a, min(a + 8192, upto)))
            s = aligner.pairwise(vis, q)
            scores[a:a + len(vis)] = vis.pooled @ q.pooled.T + s.t2v
    per_query = (time.perf_counter() - t0) / n_queries * (n / upto)
    top = scores.topk(10, dim=0).indices.T.tolist() if upto == n else None
    return {"s_per_query": round(per_query, 3), "extrapolated_from": None if upto == n else upto, "top10": top}


def overlap(folder: Path, n: int, n_queries: int, top10: list[list[int]]) -> dict:
    """Mean share (percent) of the exhaustive top 10 found by two-stage search, per shortlist."""
    from tokenflow import get_aligner
    from tokenflow.index import Searcher

    q = queries(np.random.default_rng(1).integers(0, n, n_queries), _concepts(), seed=1)
    s = Searcher(folder / "index", aligner=get_aligner("tokenflow"))
    out = {}
    for sl in SHORTLISTS:
        res = s.search(q, k=10, shortlist=sl)
        out[sl] = round(float(np.mean([len({int(i) for i in r.ids} & set(t)) * 10 for r, t in zip(res, top10)])), 1)
    return out


def labelled(work: Path, n_test: int) -> dict:
    """R@1/5/10 (text->image) of two-stage search vs exhaustive scoring on the synthetic benchmark,
    encoded by a tiny model trained here with the tokenflow plan."""
    from tokenflow import get_aligner
    from tokenflow.data import load_split
    from tokenflow.data.synthetic import make_images
    from tokenflow.eval.evaluate import encode_split, similarity
    from tokenflow.eval.metrics import retrieval_metrics
    from tokenflow.index import Indexer, Searcher, encode_store
    from tokenflow.models import load_backbone
    from tokenflow.train import load_config, train

    data = work / "labelled"
    if not (data / "dataset_flickr30k.json").is_file():
        make_images(data, sizes=(4000, 200, n_test), image_size=32, seed=5)
    cfg = {"data": {"dataset": "flickr30k", "root": str(data), "test_split": None, "cache": True},
           "model": {"backbone": "tiny", "aligner": "tokenflow",
                     "tiny": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "heads": 2,
                              "embed_dim": 64}},
           "distill": {"enabled": False},
           "optim": {"epochs": 4, "batch_size": 64, "lr": 1e-3, "lr_new": 1e-3, "warmup": 20},
           "run": {"out": str(work / "tiny-run"), "progress": False, "deterministic": True}}
    if not (work / "tiny-run" / "best").is_dir():
        shutil.rmtree(work / "tiny-run", ignore_errors=True)
        train(load_config(None, data=cfg))
    model = load_backbone(work / "tiny-run" / "best").eval()
    split = load_split("flickr30k", data, "test")
    aligner = get_aligner("tokenflow")
    enc = encode_split(model, split, batch_size=128)
    _, t2v = similarity(enc.vis, enc.txt, aligner)
    pos = split.positives()
    out = {"items": len(split), "texts": len(split.texts), "exhaustive": retrieval_metrics(t2v.T, pos.T)}
    store = work / "labelled-store"
    shutil.rmtree(store, ignore_errors=True)
    encode_store(model, split, store, batch_size=128)
    Indexer("flat").index(store)
    searcher = Searcher(store / "index", model=model, aligner=aligner)
    for sl in (20, 100):
        res = searcher.search(enc.txt, k=10, shortlist=sl)
        row = {split.item_ids[i]: i for i in range(len(split))}
        ranks = []
        for j, r in enumerate(res):
            hits = [k + 1 for k, item in enumerate(r.ids) if pos[row[item], j]]
            ranks.append(hits[0] if hits else 11)
        ranks = np.array(ranks)
        out[f"two_stage_shortlist_{sl}"] = {f"R@{k}": round(float((ranks <= k).mean() * 100), 2) for k in (1, 5, 10)}
    return out


# -- driver ---------------------------------------------------------------------------------------
def _child(args: argparse.Namespace) -> None:
    folder, n, length = Path(args.folder), args.n, args.length
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    if args.what == "build":
        result = build(folder, n, length)
    elif args.what == "latency":
        result = latency(folder, n, args.queries)
    elif args.what == "exhaustive":
        result = exhaustive(folder, n, args.queries, args.limit)
    elif args.what == "overlap":
        result = overlap(folder, n, args.queries, json.loads(Path(args.top10).read_text()))
    else:
        result = labelled(Path(args.folder), n)
    print("RESULT " + json.dumps(result))


def _run(what: str, folder: Path, n: int, length: int, **extra) -> dict:
    argv = [sys.executable, __file__, "--child", what, "--folder", str(folder), "--n", str(n), "--length",
            str(length)] + [f"--{k.replace('_', '-')}={v}" for k, v in extra.items() if v is not None]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{what} {n}x{length} failed:\n{proc.stderr[-3000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def collection(work: Path, n: int, length: int, n_queries: int, keep: bool) -> dict:
    folder = work / f"c{n}x{length}"
    if not (folder / "index" / "index.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        row = {"build": _run("build", folder, n, length)}
    else:
        row = {"build": "reused"}
    row["items"], row["tokens"] = n, length
    row["search"] = _run("latency", folder, n, length, queries=n_queries)
    ex_queries = 10 if n <= 100_000 else 5
    limit = None if n <= 100_000 else 100_000
    ex = _run("exhaustive", folder, n, length, queries=ex_queries, limit=limit)
    row["exhaustive"] = {k: v for k, v in ex.items() if k != "top10"}
    row["speedup_vs_exhaustive"] = round(ex["s_per_query"] * 1e3 / row["search"]["tokenflow"]["p50_ms"], 1)
    if ex["top10"] is not None:
        top10 = folder / "top10.json"
        top10.write_text(json.dumps(ex["top10"]))
        row["top10_overlap"] = _run("overlap", folder, n, length, queries=ex_queries, top10=top10)
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)
    return row


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for r in rows:
        if "top10_overlap" in r:
            xs = [int(k) for k in r["top10_overlap"]]
            ax.plot(xs, list(r["top10_overlap"].values()), marker="o", label=f"{r['items']:,} x {r['tokens']} tokens")
    ax.set_xscale("log")
    ax.set_xlabel("shortlist (items re-ranked)")
    ax.set_ylabel("top-10 overlap with exhaustive (%)")
    ax.set_title("tokenflow re-ranking of a FAISS shortlist")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--patch-sizes", type=int, nargs="*", default=[10_000, 100_000])
    p.add_argument("--queries", type=int, default=50)
    p.add_argument("--labelled", type=int, default=2000, help="test images of the labelled collection (0: skip)")
    p.add_argument("--work", type=Path, default=Path("/tmp/tokenflow-search-bench"))
    p.add_argument("--keep", action="store_true", help="keep the collections (disk) for a later run")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "search.json")
    p.add_argument("--child", default=None)
    p.add_argument("--folder"), p.add_argument("--n", type=int), p.add_argument("--length", type=int)
    p.add_argument("--limit", type=int, default=None), p.add_argument("--top10", default=None)
    args = p.parse_args()
    if args.child:
        args.what = args.child
        return _child(args)
    from tokenflow.utils import machine, write_text_atomic

    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for n, length in [(n, 12) for n in args.sizes] + [(n, 50) for n in args.patch_sizes]:
        rows.append(collection(args.work, n, length, args.queries, args.keep))
        print(json.dumps(rows[-1]), flush=True)
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "collections": rows}
    if args.labelled:
        result["labelled"] = _run("labelled", args.work, args.labelled, 0)
        print(json.dumps(result["labelled"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(result, indent=1) + "\n")
    plot(rows, args.out.with_suffix(".png"))
    print(f"results: {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
