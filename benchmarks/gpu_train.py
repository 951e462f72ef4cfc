"""Training steps at real size: steps/s and peak memory of each method, and its overhead against global.

    python benchmarks/gpu_train.py --clip CLIP_FOLDER --data SYNTH/videos [--steps 50] [--warmup 3]
        [--batch 128] [--frames 12] [--methods global max-avg tokenflow sinkhorn tokenflow+md]
        [--device auto] [--json FILE] [--markdown FILE]

Each method is one :class:`tokenflow.train.Trainer` built from ``configs/msrvtt.yaml`` (the
paper's MSR-VTT settings: 12 x 49 patch tokens per video, 32 caption tokens, AdamW, grad clip,
bf16 autocast) with the given CLIP folder (``benchmarks/gpu_clip.py``: ViT-B/32's shapes, random
weights) and the synthetic videos of ``tokenflow make-data``. The trainer's own ``step`` runs:
forward, loss, backward, clipping, AdamW, logit-scale clamp (and the EMA teacher with
distillation). Data loading is not timed: ``--batches`` batches are read once through the
trainer's loader (its time per batch is reported), kept on the device and cycled, so that the
step time is the model's. ``--warmup`` steps run first, then ``--steps`` are timed.

Methods: ``global`` (model.aligner null), ``max-avg``, ``tokenflow`` (lam 1, the config's),
``sinkhorn``, and ``tokenflow+md`` (tokenflow with momentum distillation: teacher EMA 0.95,
queue 16). Reported per method: seconds per step, steps/s, pairs/s, peak CUDA memory
(allocated and reserved, over the timed steps; it includes the weights, AdamW's state and the
loaded batches, about 0.9 GB each at 128 x 12 frames of 224 px), first and last loss, and the
step-time overhead against ``global``
(target: tokenflow within 15 %). A method that fails is reported with its error and the others
still run (exit status 1).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

#: method -> (plan, hyperparameters, momentum distillation)
METHODS = {"global": (None, {}, False), "max-avg": ("max-avg", {}, False),
           "tokenflow": ("tokenflow", {"lam": 1.0}, False), "sinkhorn": ("sinkhorn", {}, False),
           "tokenflow+md": ("tokenflow", {"lam": 1.0}, True)}
TARGET_OVERHEAD_PCT = 15.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trainer_for(method: str, args: argparse.Namespace, device: torch.device):
    """A set-up Trainer of ``method`` (single process) on ``device``."""
    from tokenflow.distributed import DistInfo
    from tokenflow.train import load_config
    from tokenflow.train.runlog import Progress
    from tokenflow.train.trainer import Trainer

    aligner, hparams, distill = METHODS[method]
    overrides = [f"data.root={args.data}", f"data.workers={args.workers}", f"data.num_frames={args.frames}",
                 f"data.video_tokens={args.video_tokens}", "data.test_split=null", f"model.backbone={args.clip}",
                 f"model.aligner={'null' if aligner is None else aligner}", f"model.hparams={json.dumps(hparams)}",
                 f"distill.enabled={str(distill).lower()}", f"optim.batch_size={args.batch}",
                 f"optim.amp={args.amp}", f"run.out={args.work / method}", f"run.device={device}",
                 "run.progress=false"]
    cfg = load_config(ROOT / "configs" / "msrvtt.yaml", overrides)
    tr = Trainer(cfg, DistInfo(), device)
    tr.held.__enter__()
    tr.setup()
    tr.progress = Progress(tr.plan.total, 0, enabled=False, plain_every_s=1e9)
    return tr


def load_batches(tr, n: int, device: torch.device) -> tuple[list, float]:
    """``n`` batches from the trainer's own loader, moved to ``device``; seconds per batch."""
    t0 = time.perf_counter()
    it = iter(tr._loader(0, 0))
    batches = []
    for _ in range(n):
        idx, pixels, fmask, bad = next(it)
        batches.append((idx, pixels.to(device), None if fmask is None else fmask.to(device), bad))
    del it
    return batches, (time.perf_counter() - t0) / n


def time_steps(tr, batches: list, steps: int, warmup: int, device: torch.device, max_seconds: float) -> dict:
    """Warm-up steps, then ``steps`` timed steps of the trainer over the cycled batches (fewer, but
    at least 2, when they take more than ``max_seconds``)."""
    cycle = itertools.cycle(batches)
    first, t0 = None, time.perf_counter()
    for k in range(warmup):  # a method slow enough to spend a quarter of its time on one step warms up once
        loss = tr.step(cycle)["loss"]
        first = loss if k == 0 else first
        if time.perf_counter() - t0 > max_seconds / 4:
            break
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses = []
    t0 = time.perf_counter()
    while len(losses) < steps and (len(losses) < 2 or time.perf_counter() - t0 < max_seconds):
        losses.append(tr.step(cycle)["loss"])
    _sync(device)
    seconds = (time.perf_counter() - t0) / len(losses)
    row = {"steps_timed": len(losses), "s_per_step": seconds, "steps_per_s": 1 / seconds,
           "pairs_per_s": len(batches[0][0]) / seconds, "loss_first": losses[0] if first is None else first,
           "loss_last": losses[-1]}
    if device.type == "cuda":
        row["peak_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        row["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
    return row


def run_method(method: str, args: argparse.Namespace, device: torch.device, batches: list | None) -> tuple[dict, list]:
    """One method's row (and the batches, loaded by the first method and shared by the rest)."""
    aligner, hparams, distill = METHODS[method]
    row: dict = {"method": method, "aligner": aligner, "hparams": hparams, "distill": distill}
    tr = None
    try:
        t0 = time.perf_counter()
        tr = trainer_for(method, args, device)
        row["setup_s"] = round(time.perf_counter() - t0, 2)
        if batches is None:
            batches, row["loader_s_per_batch"] = load_batches(tr, args.batches, device)
        row.update(time_steps(tr, batches, args.steps, args.warmup, device, args.method_seconds))
    except Exception as e:  # reported; the other methods still run
        row["error"] = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    finally:
        if tr is not None:
            tr.log.close() if tr.log is not None else None
            tr.held.close()
        del tr
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row, batches


def markdown(report: dict) -> str:
    s = report["settings"]
    head = (f"bf16 training steps on {report['device']} ({report['torch']}): batch {s['batch']}, {s['frames']} frames, "
            f"video tokens {s['video_tokens']}, amp {s['amp']}, up to {s['steps']} timed steps "
            f"({s['method_seconds']:g} s at most) after {s['warmup']}\n\n"
            "| method | steps timed | s/step | steps/s | pairs/s | peak alloc GiB | peak reserved GiB | "
            "overhead vs global | loss first -> last |\n|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error'][:120]} | | | | | | | |")
            continue
        over = r.get("overhead_vs_global_pct")
        mem = [f"{r[k]:.2f}" if k in r else "-" for k in ("peak_allocated_gib", "peak_reserved_gib")]
        lines.append(f"| {r['method']} | {r['steps_timed']} | {r['s_per_step']:.4f} | {r['steps_per_s']:.2f} | "
                     f"{r['pairs_per_s']:.0f} | "
                     f"{mem[0]} | {mem[1]} | {'-' if over is None else f'{over:+.1f} %'} | "
                     f"{r['loss_first']:.3f} -> {r['loss_last']:.3f} |")
    return head + "\n".join(lines) + "\n"


def summarise(rows: list[dict]) -> str:
    by = {r["method"]: r for r in rows if "error" not in r}
    base = by.get("global")
    for r in by.values():
        r["overhead_vs_global_pct"] = None if base is None else 100 * (r["s_per_step"] / base["s_per_step"] - 1)
    parts = [f"{m} {r['steps_per_s']:.2f} steps/s" for m, r in by.items()]
    tf = by.get("tokenflow", {}).get("overhead_vs_global_pct")
    verdict = "" if tf is None else f"; tokenflow {tf:+.1f} % vs global (target <= {TARGET_OVERHEAD_PCT:.0f} %)"
    failed = [r["method"] for r in rows if "error" in r]
    return ", ".join(parts) + verdict + (f"; FAILED: {', '.join(failed)}" if failed else "")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clip", type=Path, required=True, help="CLIP folder (benchmarks/gpu_clip.py)")
    p.add_argument("--data", type=Path, required=True,
                   help="MSR-VTT-layout folder (tokenflow make-data OUT: OUT/videos)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--steps", type=int, default=50, help="timed steps per method (default 50)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--method-seconds", type=float, default=20.0,
                   help="stop timing a method after this long (at least 2 steps; default 20)")
    p.add_argument("--batch", type=int, default=128, help="pairs per step (default 128, the config's)")
    p.add_argument("--frames", type=int, default=12, help="frames per video (default 12, the config's)")
    p.add_argument("--video-tokens", choices=("patches", "frames"), default="patches")
    p.add_argument("--amp", choices=("bf16", "auto", "none"), default="bf16")
    p.add_argument("--batches", type=int, default=2, help="distinct batches loaded once and cycled (default 2)")
    p.add_argument("--workers", type=int, default=8, help="loader processes for those batches")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cpu")
    p.add_argument("--work", type=Path, default=Path("/tmp/tokenflow-gpu-train"), help="run folders")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report = {"benchmark": "gpu_train", "device": name,
              "torch": torch.__version__, "settings": settings, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": []}
    batches = None
    for method in args.methods:
        row, batches = run_method(method, args, device, batches)
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
        report["summary"] = summarise(report["rows"])
        if args.json:  # after every method, so that a run cut short keeps its rows
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        if args.markdown:
            args.markdown.write_text(markdown(report))
    print(markdown(report))
    print(f"SUMMARY train: {report['summary']}")
    return 1 if any("error" in r for r in report["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
