"""`tokenflow import-features`: time to turn token features computed elsewhere into a feature store.

    python benchmarks/import_features.py [--n 100000] [--tokens 12] [--dim 512] [--files 4]
        [--format npz|safetensors] [--work /tmp/tokenflow-import] [--json FILE]

Target (issue 29): a 100K x 12 x 512 fp16 collection in under 60 s on 2 cores.

The input is what an extraction script would write: ``--files`` files (uncompressed ``.npz`` or
``.safetensors``) holding together ``--n`` rows of unit-norm fp16 token features
``[n, tokens, dim]``, a mask with a quarter of the rows padded to 3/4 length, fp16 pooled
features and string ids. Writing them is not timed. The timed part is one
:func:`tokenflow.index.importer.import_features` call into a fresh fp16 store, everything
included: reading the headers, the shape, dtype and duplicate-id checks, hashing the input files
(sha256, recorded in the manifest), the per-row value checks (NaN/Inf, empty rows), writing the
shards with their sha256 and the manifest. The page cache is warm (the files were just written),
as after any extraction run; the output goes to the same disk.

Reported: seconds, rows/s, input MiB/s, and the sha256 throughput of this machine alone (the
hashing is a fixed share: every input byte once, every output byte once).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from tokenflow.bench import random_tokens  # noqa: E402
from tokenflow.index.importer import import_features  # noqa: E402
from tokenflow.utils import machine, machine_info  # noqa: E402


def write_inputs(folder: Path, n: int, tokens: int, dim: int, files: int, fmt: str, seed: int = 0) -> list[Path]:
    """``files`` input files of about n / files rows each (untimed)."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for k in range(files):
        a, b = k * n // files, (k + 1) * n // files
        t = random_tokens(b - a, tokens, dim, torch.float32, "cpu", gen)
        t.feats[~t.mask] = 0  # padded positions hold zeros, as an extraction script writes them
        arrays = {"feats": t.feats.half().numpy(), "mask": t.mask.numpy(), "pooled": t.pooled.half().numpy()}
        ids = [f"video{i}" for i in range(a, b)]
        if fmt == "npz":
            path = folder / f"part{k}.npz"
            np.savez(path, **arrays, ids=np.array(ids))
        else:
            from safetensors.numpy import save_file

            path = folder / f"part{k}.safetensors"
            save_file(arrays, str(path), metadata={"ids": json.dumps(ids)})
        out.append(path)
    return out


def sha256_rate(mib: int = 256) -> float:
    """MiB/s of hashlib's sha256 on this machine (one thread)."""
    data = np.random.default_rng(0).bytes(mib << 20)
    t0 = time.perf_counter()
    hashlib.sha256(data).hexdigest()
    return mib / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000, help="rows in all (default 100000)")
    p.add_argument("--tokens", type=int, default=12, help="tokens per row, L (default 12)")
    p.add_argument("--dim", type=int, default=512, help="feature size, D (default 512)")
    p.add_argument("--files", type=int, default=4, help="input files (default 4)")
    p.add_argument("--format", choices=("npz", "safetensors"), default="npz", help="input format (default npz)")
    p.add_argument("--work", type=Path, default=Path("/tmp/tokenflow-import"), help="scratch folder (removed)")
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    args = p.parse_args(argv)

    shutil.rmtree(args.work, ignore_errors=True)
    try:
        t0 = time.perf_counter()
        files = write_inputs(args.work / "inputs", args.n, args.tokens, args.dim, args.files, args.format)
        written = time.perf_counter() - t0
        in_mib = sum(f.stat().st_size for f in files) / 2**20
        t0 = time.perf_counter()
        store = import_features(files, args.work / "store", kind="visual", model="benchmark (random fp16)",
                                modality="video", dtype="fp16")
        seconds = time.perf_counter() - t0
        out_mib = sum(f.stat().st_size for f in (args.work / "store").iterdir()) / 2**20
        assert len(store) == args.n
    finally:
        shutil.rmtree(args.work, ignore_errors=True)
    report = {"benchmark": "import_features", "machine": machine_info(), "settings": vars(args) | {
                  "work": str(args.work), "json": None if args.json is None else str(args.json)},
              "input_mib": round(in_mib, 1), "store_mib": round(out_mib, 1), "inputs_written_s": round(written, 2),
              "import_s": round(seconds, 2), "rows_per_s": round(args.n / seconds), "input_mib_per_s":
              round(in_mib / seconds, 1), "sha256_mib_per_s": round(sha256_rate(), 1), "target_s": 60}
    print(f"{machine()}\nimport-features: {args.n} x {args.tokens} x {args.dim} fp16 in {args.files} {args.format} "
          f"files ({in_mib:.0f} MiB) -> fp16 store ({out_mib:.0f} MiB): {seconds:.1f} s, {report['rows_per_s']} "
          f"rows/s, {report['input_mib_per_s']} MiB/s (sha256 alone: {report['sha256_mib_per_s']} MiB/s; target 60 s "
          "at 100K)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
