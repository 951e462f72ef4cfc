"""Latency of `tokenflow serve` under load (issue 18): p50 / p95 of /api/search.

    python benchmarks/serve_load.py                    # 1000 synthetic images, 200 queries at once
    python benchmarks/serve_load.py --items 4000 --burst 200 --plans tokenflow max-avg

Builds a synthetic image collection, encodes it with the (untrained) tiny model saved as a
folder, indexes it (flat FAISS), starts the real command `tokenflow serve` in a subprocess on
a free port of 127.0.0.1, then measures: queries one at a time (the latency a user sees on an
idle server), and a burst of queries sent at once (every thread released together). Each query
asks for the page's default: two plans side by side, k=10, a shortlist of 100. Prints a
Markdown table (and, with --json FILE, the numbers as JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tokenflow.serve.load import load_test  # noqa: E402
from tokenflow.utils import machine, write_text_atomic  # noqa: E402


def build_collection(work: Path, items: int) -> tuple[Path, list[str]]:
    """Synthetic images -> tiny model folder -> fp16 store -> flat index; returns (index, captions)."""
    import torch

    from tokenflow.data import load_split
    from tokenflow.data.synthetic import make_synthetic
    from tokenflow.index import Indexer, backbone_fingerprint, encode_store
    from tokenflow.models import TinyCLIP, TinyConfig, WordTokenizer

    make_synthetic(work / "data", images=(2, 2, items), videos=(0, 0, 0), image_size=64, seed=0)
    split = load_split("flickr30k", work / "data" / "images", "test")
    torch.manual_seed(0)
    model = TinyCLIP(TinyConfig(), WordTokenizer.build(split.texts)).eval()
    folder = model.save_pretrained(work / "model")
    encode_store(model, split, work / "store", backbone_info=backbone_fingerprint(model, name=str(folder)),
                 batch_size=64)
    return Indexer("flat").index(work / "store"), split.texts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(index: Path, port: int, plans: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tokenflow.cli", "serve", "--index", str(index), "--port", str(port),
           "--aligner", *plans]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tokenflow serve exited: {proc.stderr.read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=2):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("tokenflow serve did not start within 120 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=1000, help="images in the collection")
    ap.add_argument("--burst", type=int, default=200, help="queries sent at once")
    ap.add_argument("--sequential", type=int, default=50, help="queries sent one at a time")
    ap.add_argument("--plans", nargs="+", default=["tokenflow", "max-avg"])
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="serve-load-"))
    t0 = time.perf_counter()
    index, texts = build_collection(work, args.items)
    print(f"collection of {args.items} images built in {time.perf_counter() - t0:.1f} s")
    port = free_port()
    server = start_server(index, port, args.plans)
    url = f"http://127.0.0.1:{port}"
    body = lambda i: {"query": texts[i % len(texts)], "k": args.k, "plans": args.plans}  # noqa: E731
    try:
        load_test(url, [body(i) for i in range(10)], concurrency=1)  # warm-up
        runs = {"sequential": load_test(url, [body(i) for i in range(args.sequential)], concurrency=1),
                f"burst of {args.burst}": load_test(url, [body(i) for i in range(args.burst)])}
    finally:
        server.terminate()
        server.wait(30)
    report(args, runs)


def report(args, runs: dict) -> None:
    rows = {name: r.summary() for name, r in runs.items()}
    print(f"\n{args.items} images, plans {' + '.join(args.plans)}, k={args.k}, shortlist 100; {machine()}; "
          f"server OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}\n")
    print("| run | requests | errors | p50 ms | p95 ms | max ms | queries/s |")
    print("|---|---|---|---|---|---|---|")
    for name, s in rows.items():
        print(f"| {name} | {s['requests']} | {s['errors']} | {s['p50_ms']:.0f} | {s['p95_ms']:.0f} | "
              f"{s['max_ms']:.0f} | {s['throughput_qps']:.1f} |")
    if args.json is None:
        return
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.json, json.dumps({"items": args.items, "plans": args.plans, "k": args.k,
                                             "machine": machine(), "runs": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
