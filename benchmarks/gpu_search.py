"""`tokenflow search` and `tokenflow serve` on a GPU against the CPU of the same machine.

    python benchmarks/gpu_search.py --clip CLIP [--items 100000] [--tokens 12] [--queries 30]
        [--shortlists 100 1000] [--devices cpu cuda] [--work DIR] [--json FILE] [--markdown FILE]

One synthetic visual store of ``--items`` x ``--tokens`` tokens (fp16, flat FAISS index), drawn
by ``benchmarks/search.py``'s ``items`` at the CLIP folder's embedding size (each item mixes 3 of
4,096 "concepts" over its tokens, plus noise per token; shards of 32,768 rows). The store names the
CLIP folder (``benchmarks/gpu_clip.py``) as its backbone with that folder's weight hash, so text
queries are encoded by that model, as for a store it encoded itself. Then, per device:

1. ``Searcher.search`` in this process, one text query at a time (text encoding, FAISS
   shortlist, re-ranking with ``tokenflow``): p50 / p95 latency per shortlist size;
2. the command ``tokenflow search --device D`` once (wall time, its own search time), and
   whether its top 10 equal the CPU's;
3. ``tokenflow serve --device D`` in a subprocess: p50 / p95 of ``/api/search`` (two plans side
   by side, k = 10), queries one at a time.

Reported as JSON and a Markdown table, with the GPU against the CPU ratio of each p50.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from search import CHUNK, _concepts, items  # noqa: E402
from serve_load import free_port  # noqa: E402
from tokenflow.serve.load import load_test  # noqa: E402

COLORS, SHAPES = ("red", "green", "blue", "yellow", "purple", "orange"), ("circle", "square", "triangle")


def texts(n: int, seed: int = 0) -> list[str]:
    """Synthetic-benchmark-like captions."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        c, s = rng.choice(COLORS, 2, replace=False), rng.choice(SHAPES, 2, replace=False)
        out.append(f"a {c[0]} {s[0]} appears, then a {c[1]} {s[1]} appears")
    return out


def build_store(folder: Path, clip: Path, n: int, length: int) -> dict:
    """The store (fp16 shards of CHUNK rows) and its flat index; seconds."""
    from tokenflow.index import Indexer, StoreWriter, backbone_fingerprint
    from tokenflow.models import load_backbone

    t0 = time.perf_counter()
    backbone = backbone_fingerprint(load_backbone(clip), name=str(clip))
    dim, gen = int(backbone["embed_dim"]), torch.Generator().manual_seed(0)
    concepts = _concepts(dim)
    with StoreWriter(folder, kind="visual", backbone=backbone, dtype="fp16", shard_size=CHUNK) as w:
        for a in range(0, n, CHUNK):
            m = min(CHUNK, n - a)
            w.add(items(a, m, length, concepts, gen), [f"item{i}" for i in range(a, a + m)])
    t_store = time.perf_counter() - t0
    Indexer("flat").index(folder)
    return {"items": n, "tokens": length, "dim": dim, "store_s": round(t_store, 2),
            "index_s": round(time.perf_counter() - t0 - t_store, 2)}


def percentiles(times: list[float]) -> dict:
    return {"p50_ms": round(float(np.percentile(times, 50)) * 1e3, 2),
            "p95_ms": round(float(np.percentile(times, 95)) * 1e3, 2)}


def in_process(store: Path, clip: Path, device: str, queries: list[str], shortlists: list[int]) -> dict:
    """Searcher latency one query at a time, per shortlist; the top 10 ids of each query."""
    from tokenflow import get_aligner
    from tokenflow.index import Searcher
    from tokenflow.models import load_backbone

    model = load_backbone(clip).to(device).eval()
    searcher = Searcher(store / "index", model=model, aligner=get_aligner("tokenflow"), device=device)
    out = {}
    for sl in shortlists:
        searcher.search(queries[:3], k=10, shortlist=sl)  # warm-up: kernels, memory maps
        times, top = [], []
        for q in queries:
            t0 = time.perf_counter()
            res = searcher.search(q, k=10, shortlist=sl)[0]
            times.append(time.perf_counter() - t0)
            top.append(res.ids)
        out[str(sl)] = {**percentiles(times), "top10": top}
    return out


def cli_search(store: Path, clip: Path, device: str, queries: list[str], work: Path) -> dict:
    """The command, once: wall time (model and index loading included), its search time, top 10s."""
    out_json = work / f"search-{device.replace(':', '')}.json"
    cmd = [sys.executable, "-m", "tokenflow.cli", "search", "--index", str(store), "--model", str(clip),
           "--device", device, "--k", "10", "--json", str(out_json)] + [a for q in queries for a in ("--text", q)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    wall = time.perf_counter() - t0
    if proc.returncode:
        return {"error": proc.stderr[-2000:], "wall_s": round(wall, 2)}
    report = json.loads(out_json.read_text())
    return {"wall_s": round(wall, 2), "search_s": report["seconds"],
            "top10": [[r["id"] for r in q["results"]] for q in report["queries"]]}


def serve_latency(store: Path, clip: Path, device: str, queries: list[str]) -> dict:
    """``tokenflow serve --device D`` in a subprocess: p50 / p95 of sequential /api/search calls."""
    import urllib.request

    port = free_port()
    cmd = [sys.executable, "-m", "tokenflow.cli", "serve", "--index", str(store), "--model", str(clip),
           "--device", device, "--port", str(port), "--aligner", "tokenflow", "max-avg"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url, t0 = f"http://127.0.0.1:{port}", time.perf_counter()
    try:
        while True:
            if proc.poll() is not None:
                return {"error": f"serve exited: {proc.stderr.read()[-2000:]}"}
            try:
                with urllib.request.urlopen(url + "/api/info", timeout=2):
                    break
            except OSError:
                if time.perf_counter() - t0 > 120:
                    return {"error": "serve did not start within 120 s"}
                time.sleep(0.2)
        startup = time.perf_counter() - t0
        body = lambda q: {"query": q, "k": 10, "plans": ["tokenflow", "max-avg"]}  # noqa: E731
        load_test(url, [body(q) for q in queries[:3]], concurrency=1)  # warm-up
        res = load_test(url, [body(q) for q in queries], concurrency=1).summary()
        return {"startup_s": round(startup, 2), "p50_ms": round(res["p50_ms"], 2), "p95_ms": round(res["p95_ms"], 2),
                "errors": res["errors"], "requests": res["requests"]}
    finally:
        proc.terminate()
        proc.wait(30)


def markdown(report: dict) -> str:
    devs, b = report["devices"], report["store"]
    lines = [f"Search and serve on {report['gpu'] or 'cpu'}: {b['items']:,} items x {b['tokens']} tokens "
             f"(D = {b['dim']}, "
             f"fp16, flat index; store {b['store_s']} s, index {b['index_s']} s); plan tokenflow, k = 10; "
             f"{report['queries']} text queries one at a time\n",
             "| measure | " + " | ".join(devs) + (f" | {devs[1]} / {devs[0]} |" if len(devs) > 1 else " |"),
             "|---|" + "---|" * (len(devs) + (len(devs) > 1))]

    def row(name: str, get) -> None:
        vals = []
        for d in devs:
            try:
                vals.append(get(report["results"][d]))
            except (KeyError, TypeError):  # that part failed
                vals.append(None)
        ratio = (f" | {vals[1] / vals[0]:.2f} |" if len(vals) > 1 and None not in vals[:2] and vals[0] else
                 (" | - |" if len(devs) > 1 else " |"))
        lines.append(f"| {name} | " + " | ".join("-" if v is None else f"{v:g}" for v in vals) + ratio)

    for sl in report["shortlists"]:
        row(f"Searcher p50 ms, shortlist {sl}", lambda r, sl=sl: r["searcher"][str(sl)]["p50_ms"])
        row(f"Searcher p95 ms, shortlist {sl}", lambda r, sl=sl: r["searcher"][str(sl)]["p95_ms"])
    row("`tokenflow search` wall s", lambda r: r["cli"].get("wall_s"))
    row("`tokenflow serve` p50 ms", lambda r: r["serve"].get("p50_ms"))
    row("`tokenflow serve` p95 ms", lambda r: r["serve"].get("p95_ms"))
    return "\n".join(lines) + "\n"


def brief(result: dict) -> dict:
    """A device's results without the top-10 lists."""
    def drop(d):
        return {k: drop(v) for k, v in d.items() if k != "top10"} if isinstance(d, dict) else d

    return drop(result)


def agreement(results: dict, devices: list[str]) -> dict:
    """Share of queries whose top 10 on each device equal the first device's."""
    if len(devices) < 2:
        return {}
    a, b = (results[d] for d in devices[:2])
    out = {f"searcher_{sl}": float(np.mean([x == y for x, y in zip(a["searcher"][sl]["top10"],
                                                                     b["searcher"][sl]["top10"])]))
           for sl in a["searcher"] if sl in b["searcher"] and sl != "error"}
    if "top10" in a["cli"] and "top10" in b["cli"]:
        out["cli"] = float(np.mean([x == y for x, y in zip(a["cli"]["top10"], b["cli"]["top10"])]))
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clip", type=Path, required=True, help="CLIP folder (benchmarks/gpu_clip.py): encodes the queries")
    p.add_argument("--items", type=int, default=100_000, help="items in the store (default 100000)")
    p.add_argument("--tokens", type=int, default=12, help="tokens per item (default 12)")
    p.add_argument("--queries", type=int, default=30, help="text queries timed (default 30)")
    p.add_argument("--shortlists", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when available")
    p.add_argument("--no-serve", action="store_true", help="skip tokenflow serve")
    p.add_argument("--work", type=Path, default=Path("/tmp/tokenflow-gpu-search"))
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None)
    return p.parse_args(argv)


def measure(store: Path, args: argparse.Namespace, device: str, queries: list[str]) -> dict:
    """Searcher, command and serve on one device; a part that fails is reported with its error."""
    parts = {"searcher": lambda: in_process(store, args.clip, device, queries, args.shortlists),
             "cli": lambda: cli_search(store, args.clip, device, queries[:5], args.work),
             "serve": lambda: {"skipped": True} if args.no_serve else serve_latency(store, args.clip, device, queries)}
    out = {}
    for name, run in parts.items():
        try:
            out[name] = run()
        except Exception as e:  # reported; the other parts still run
            traceback.print_exc()
            out[name] = {"error": f"{type(e).__name__}: {e}"}
    return out


def _get(result: dict, *keys):
    for k in keys:
        result = result.get(k, {}) if isinstance(result, dict) else {}
    return result if result != {} else None


def summary_line(report: dict) -> str:
    devices, results, sl = report["devices"], report["results"], str(report["shortlists"][0])
    errors = [f"{d} {k}" for d, r in results.items() for k in r if "error" in r[k]]
    return (f"{report['store']['items']} items; Searcher p50 (shortlist {sl}) "
            + ", ".join(f"{d} {_get(results[d], 'searcher', sl, 'p50_ms')} ms" for d in devices) + "; serve p50 "
            + ", ".join(f"{d} {_get(results[d], 'serve', 'p50_ms')} ms" for d in devices)
            + f"; same top 10: {report['same_top10_as_first_device'] or '-'}"
            + (f"; FAILED: {', '.join(errors)}" if errors else ""))


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    store = args.work / f"store-{args.items}x{args.tokens}"
    if not (store / "index" / "index.json").is_file():
        shutil.rmtree(store, ignore_errors=True)
        built = build_store(store, args.clip, args.items, args.tokens)
    else:
        built = json.loads((args.work / "built.json").read_text())
    (args.work / "built.json").write_text(json.dumps(built))
    queries = texts(args.queries)
    # a device named twice (the CPU smoke run: cpu cpu) gets a second label: cpu, cpu-2
    labels = [d if d not in devices[:i] else f"{d}-{i + 1}" for i, d in enumerate(devices)]
    cuda = any(d.startswith("cuda") for d in devices)
    report = {"benchmark": "gpu_search", "gpu": torch.cuda.get_device_name(0) if cuda else None, "devices": [],
              "store": built, "queries": len(queries), "shortlists": args.shortlists, "results": {}}
    for label, dev in zip(labels, devices):
        report["results"][label] = measure(store, args, dev, queries)
        report["devices"].append(label)
        print(json.dumps({label: brief(report["results"][label])}), flush=True)
        report["same_top10_as_first_device"] = agreement(report["results"], report["devices"])
        if args.json:  # after every device, so that a run cut short keeps its results
            args.json.write_text(json.dumps(report, indent=1) + "\n")
    table = markdown(report)
    if args.markdown:
        args.markdown.write_text(table)
    print(table)
    line = summary_line(report)
    print(f"SUMMARY search: {line}")
    return 1 if "FAILED" in line else 0


if __name__ == "__main__":
    sys.exit(main())
