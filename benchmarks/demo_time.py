"""Wall time of `tokenflow demo` presets (default <= 5 min, --quick about 90 s, --full <= 30 min on
2 cores, not counting the install).

    python benchmarks/demo_time.py                 # default and --quick (3 seeds, both tasks)
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

PRESETS = {"default": {}, "quick": {"quick": True}, "full": {"full": True},
           "quick-videos": {"quick": True, "videos": True, "tasks": ["bindings"]},
           "videos": {"videos": True, "tasks": ["bindings"]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["default", "quick"], choices=list(PRESETS))
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "demo-time.json")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="demo-time-"))
    rows = []
    for name in args.presets:
        t0 = time.perf_counter()
        res = run_demo(work / name, log=lambda *_: None, **PRESETS[name])
        key = "{task}/{protocol}/{method}".format_map
        rows.append({"preset": name, "seconds": round(time.perf_counter() - t0, 1),
                     "mean_train_s": {key(s): s["train_s"][0] for s in res["summary"]},
                     "t2v_R@1": {key(s): s["t2v"]["R@1"] for s in res["summary"]}})
        print(f"| {name} | {rows[-1]['seconds']:.0f} s | "
              + ", ".join(f"{m} {s:.0f}" for m, s in rows[-1]["mean_train_s"].items()) + " |", flush=True)
    write_text_atomic(args.json, json.dumps({"machine": machine(), "date": time.strftime("%Y-%m-%d"),
                                             "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
