"""How long must the demo train? Learning curves and paired differences on ``scenes``.

Trains the tiny dual encoder from scratch (or fine-tunes a global-pretrained copy) once per
method and seed on ``make_scenes`` data, records each run's validation R@1 after every epoch,
and prints per-seed test R@1 with each method's paired difference from ``global``. The numbers
in benchmarks/RESULTS.md ("The demo's budget") come from this script::

    python benchmarks/demo_budget.py --seeds 100 101 102 --epochs 16 --methods global max-avg
    python benchmarks/demo_budget.py --placement jitter ...   # the old generator's objects

It writes under ``--out`` (default a temporary folder, removed afterwards).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def _curve(run: Path) -> list[float]:
    from tokenflow.train.runfolder import read_log

    return [round(x["t2v_R@1"], 1) for x in read_log(run / "log.jsonl") if x.get("kind") == "val"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102])
    ap.add_argument("--methods", nargs="+", default=["global", "max-avg"])
    ap.add_argument("--sizes", type=int, nargs=3, default=[3000, 300, 500], metavar=("TRAIN", "VAL", "TEST"))
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--objects", type=int, default=5)
    ap.add_argument("--named", type=int, default=2)
    ap.add_argument("--placement", default="cell")
    ap.add_argument("--templates", default="plain")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from tokenflow.data.scenes import make_scenes
    from tokenflow.demo.protocol import stage_config
    from tokenflow.eval.paired import paired
    from tokenflow.train.ablate import run_methods

    tmp = tempfile.TemporaryDirectory() if args.out is None else None
    out = Path(tmp.name) if tmp else args.out
    p = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "lr_finetune": args.lr}
    table: dict[str, dict[int, float]] = {}
    for seed in args.seeds:
        folder = out / f"data-{seed}"
        make_scenes(folder, tuple(args.sizes), image_size=32, objects=args.objects, named=args.named, seed=seed,
                    placement=args.placement, templates=args.templates)
        where = {"dataset": "flickr30k", "root": folder, "pretrain": folder, "positives": folder / "positives.json"}
        base = stage_config(where, p, seed, out / f"runs-{seed}", stage="scratch")
        t0 = time.perf_counter()
        rows = run_methods(base, args.methods, out / f"runs-{seed}", log=lambda s: None)
        for r in rows:
            table.setdefault(r["method"], {})[seed] = r["t2v"]["R@1"]
            curve = _curve(out / f"runs-{seed}" / r["method"].replace(":", "_").replace("=", "_"))
            print(f"seed {seed} {r['method']:<12} test t2v R@1 {r['t2v']['R@1']:5.1f}  best epoch "
                  f"{r['best_step'] * args.epochs // r['steps']}  train {r['train_s']:.0f} s  val curve {curve}",
                  flush=True)
        print(f"seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"\n{args}")
    base_row = table.get("global", {})
    for m, per in table.items():
        line = f"{m:<12} mean {statistics.fmean(per.values()):5.1f}"
        if m != "global" and base_row:
            d = paired(per, base_row)
            diffs = " / ".join(f"{x:+.1f}" for x in d.diffs.values())
            line += f"  paired diff {diffs}  mean {d.mean:+.1f} ± {d.se:.1f}"
        print(line, flush=True)
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
