"""Wall time of `tokenflow demo` presets (issue 5: default <= 15 min, --quick <= 3 min on 2 cores).

    python benchmarks/demo_time.py                 # default, --quick, --quick --videos
    python benchmarks/demo_time.py --presets quick

Each preset runs in a fresh folder under --work; the per-method times and metrics come from
the demo's own results.json. Prints a Markdown table and writes benchmarks/results/demo-time.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tokenflow.demo import machine, run_demo  # noqa: E402
from tokenflow.utils import write_text_atomic  # noqa: E402

PRESETS = {"default": {}, "quick": {"quick": True}, "quick-videos": {"quick": True, "videos": True},
           "videos": {"videos": True}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["default", "quick", "quick-videos"], choices=list(PRESETS))
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "demo-time.json")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="demo-time-"))
    rows = []
    for name in args.presets:
        t0 = time.perf_counter()
        res = run_demo(work / name, log=lambda *_: None, **PRESETS[name])
        rows.append({"preset": name, "seconds": round(time.perf_counter() - t0, 1),
                     "per_method_train_s": {r["method"]: r["train_s"] for r in res["rows"]},
                     "t2v_R@1": {r["method"]: r["t2v"]["R@1"] for r in res["rows"]}})
        print(f"| {name} | {rows[-1]['seconds']:.0f} s | "
              + ", ".join(f"{m} {s:.0f}" for m, s in rows[-1]["per_method_train_s"].items()) + " |", flush=True)
    write_text_atomic(args.json, json.dumps({"machine": machine(), "date": time.strftime("%Y-%m-%d"),
                                             "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
