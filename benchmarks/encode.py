"""`tokenflow encode` with a CLIP ViT-B/32-shaped backbone: what the store pipeline costs on top of
the model's own forward pass, in one run.

    python benchmarks/encode.py [--images 512] [--batch 64] [--workers 0 2] [--work /tmp/tokenflow-encode]

No weights can be downloaded here, so the backbone is ``benchmarks/gpu_clip.py``'s ``--size b32``
folder: a Hugging Face ``CLIPModel`` with openai/clip-vit-base-patch32's shapes (ViT-B/32: vision
12 x 768, patch 32 at 224 px; text 12 x 512 with CLIP's 49,408-row embedding; projection 512) and
random weights, loaded by ``load_backbone`` as a user's folder would be. Speed does not depend on
the weights' values. Its tokenizer is character-level (a small vocabulary; the embedding lookup is
a negligible share of the text tower), so a caption becomes more tokens than with CLIP's BPE: it
fills ``data.max_words`` (32) positions.

Images: the project's synthetic benchmark rendered at 256 px (JPEG). For images and for captions
it times, interleaved over ``--rounds`` rounds (best round reported):

- **forward**: ``encode_images`` / ``encode_texts`` on inputs already preprocessed or tokenized
  (the model alone, batches of ``--batch``);
- **encode**: ``encode_store`` into a fresh fp16 store (reading and decoding the files,
  preprocessing, the forward pass, writing shards and the manifest), with ``--workers`` loader
  processes.

The forward pass's FLOPs are counted by ``torch.utils.flop_counter`` on one batch and set against
the machine's own float32 matmul rate, measured in the same run (a 4096 x 768 by 768 x 3072
product, the shape of a ViT-B MLP layer over a batch).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_clip import save_clip  # noqa: E402
from tokenflow.data import load_split  # noqa: E402
from tokenflow.data.synthetic import make_images  # noqa: E402
from tokenflow.index import encode_store  # noqa: E402
from tokenflow.models.loading import load_backbone  # noqa: E402
from tokenflow.utils import machine, machine_info  # noqa: E402


def vit_b32_folder(folder: Path) -> Path:
    """``benchmarks/gpu_clip.py``'s random-weight ViT-B/32 folder (written once; its image processor
    is the last file it writes)."""
    if not (folder / "preprocessor_config.json").is_file():
        save_clip(folder, "b32")
    return folder


@torch.no_grad()
def flops_per_item(fn, n: int) -> float:
    """FLOPs of ``fn()`` (a forward pass over ``n`` items) per item, by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / n


def matmul_gflops(rounds: int = 5) -> float:
    """GFLOP/s of a float32 4096 x 768 by 768 x 3072 matmul, best of ``rounds``."""
    a, b = torch.randn(4096, 768), torch.randn(768, 3072)
    a @ b
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * 4096 * 768 * 3072 / best / 1e9


@torch.no_grad()
def forward_images(model, pixels: torch.Tensor, batch: int) -> float:
    """Seconds to encode preprocessed ``pixels`` in batches."""
    t0 = time.perf_counter()
    for a in range(0, len(pixels), batch):
        model.encode_images(pixels[a : a + batch])
    return time.perf_counter() - t0


@torch.no_grad()
def forward_texts(model, ids: torch.Tensor, mask: torch.Tensor, batch: int) -> float:
    """Seconds to encode tokenized captions in batches."""
    t0 = time.perf_counter()
    for a in range(0, len(ids), batch):
        model.encode_texts(ids[a : a + batch], mask[a : a + batch])
    return time.perf_counter() - t0


def timed_store(model, source, folder: Path, **kw) -> float:
    """Seconds of ``encode_store`` from ``source`` into a fresh ``folder``."""
    shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    encode_store(model, source, folder, backbone_info={"name": "vit-b32-random", "sha256": "0" * 64}, **kw)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=512, help="synthetic images (even)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="loader processes of encode")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--work", type=Path, default=Path("/tmp/tokenflow-encode"))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "encode.json")
    args = p.parse_args()
    from PIL import Image

    model = load_backbone(vit_b32_folder(args.work / "clip-vitb32")).eval()
    data = args.work / f"images-{args.images}"
    if not (data / "dataset_flickr30k.json").is_file():
        make_images(data, sizes=(0, 0, args.images), image_size=256)
    split = load_split("flickr30k", data, "test")
    texts = list(split.texts[: args.images])
    pixels = torch.stack([model.preprocess(Image.open(f).convert("RGB")) for f in split.item_paths])
    ids, mask = model.tokenize(texts)
    b = min(args.batch, len(pixels))
    flops = {"image": flops_per_item(lambda: model.encode_images(pixels[:b]), b),
             "text": flops_per_item(lambda: model.encode_texts(ids[:b], mask[:b]), b)}
    best: dict[str, float] = {}
    matmul = 0.0

    def keep(name: str, seconds: float) -> None:
        best[name] = min(best.get(name, float("inf")), seconds)

    for _ in range(args.rounds):
        matmul = max(matmul, matmul_gflops())
        keep("image forward", forward_images(model, pixels, args.batch))
        for w in args.workers:
            keep(f"image encode, {w} workers", timed_store(model, split, args.work / "store-images", batch_size=args.batch,
                                                           workers=w))
        keep("text forward", forward_texts(model, ids, mask, args.batch))
        keep("text encode", timed_store(model, texts, args.work / "store-texts", batch_size=args.batch))
    n = len(split.item_paths)
    rows = [{"what": k, "items": n if k.startswith("image") else len(texts), "seconds": s,
             "items_per_s": (n if k.startswith("image") else len(texts)) / s} for k, s in best.items()]
    for r in rows:
        r["forward_gflops_per_s"] = flops["image" if r["what"].startswith("image") else "text"] * r["items_per_s"] / 1e9
    report = {"benchmark": "encode", "images": n, "texts": len(texts), "batch": args.batch,
              "gflops_per_item": {k: v / 1e9 for k, v in flops.items()}, "matmul_gflops_per_s": matmul,
              "text_tokens": int(mask.shape[1]), "torch_threads": torch.get_num_threads(), "rows": rows,
              "machine": machine_info(),
              "commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                       text=True).stdout.strip()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{machine()}; ViT-B/32 shapes, random weights; {n} images (256 px JPEG), {len(texts)} captions "
          f"({mask.shape[1]} positions), batch {args.batch}, {torch.get_num_threads()} torch threads")
    print(f"forward FLOPs per item: image {flops['image'] / 1e9:.2f} G, caption {flops['text'] / 1e9:.3f} G; "
          f"float32 matmul in this run: {matmul:.1f} GFLOP/s")
    print("| what | items/s | of the forward pass alone | model GFLOP/s | of matmul |")
    print("|---|---|---|---|---|")
    for r in rows:
        base = best["image forward" if r["what"].startswith("image") else "text forward"]
        print(f"| {r['what']} | {r['items_per_s']:.1f} | {base / r['seconds']:.2f} | {r['forward_gflops_per_s']:.1f} "
              f"| {r['forward_gflops_per_s'] / matmul:.2f} |")
    print(f"\nJSON: {args.out}")


if __name__ == "__main__":
    main()
