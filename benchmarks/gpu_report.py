"""One-line summaries and the final report of ``benchmarks/gpu_check.sh``.

    python benchmarks/gpu_report.py tests JUNIT_XML            # SUMMARY line of a pytest run
    python benchmarks/gpu_report.py bench JSON [JSON ...] [--memory JSON]
    python benchmarks/gpu_report.py evaluate REPORT_JSON --wall-ms MILLISECONDS
    python benchmarks/gpu_report.py summary STEPS_TSV --results DIR --out DIR --mode gpu|cpu

``summary`` reads the steps file the script writes (id, name, status, seconds, summary; tab
separated), prints the table of steps and writes ``summary.md`` (the table, then every step's
Markdown tables) and ``summary.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

#: issue 30's targets: ms to score 1M pairs at l1 = 50 in bf16, and these plans
TARGET_MS_PER_1M, TARGET_PLANS = 10.0, ("tokenflow", "max-avg", "scan")


def tests_line(xml: Path) -> str:
    """``N passed, F failed, E errors, S skipped (T s)``, and the first failures' names."""
    root = ET.parse(xml).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    count = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    seconds = sum(float(s.get("time", 0)) for s in suites)
    failed = [f"{c.get('classname', '')}::{c.get('name')}" for s in suites for c in s.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    passed = count["tests"] - count["failures"] - count["errors"] - count["skipped"]
    line = (f"{passed} passed, {count['failures']} failed, {count['errors']} errors, {count['skipped']} skipped "
            f"({seconds:.0f} s)")
    return line + (f"; first failures: {', '.join(failed[:5])}" if failed else "")


def bench_line(paths: list[Path], memory: Path | None) -> str:
    """The target plans at the largest l1 in bf16 (ms per 1M pairs), and memory flatness in N."""
    rows = [r for p in paths if p.is_file() for r in json.loads(p.read_text())["rows"]]
    if not rows:
        return "no rows"
    l1 = max(r["l1"] for r in rows)
    parts = []
    for name in TARGET_PLANS:
        hit = [r for r in rows if r["aligner"] == name and r["l1"] == l1 and r["dtype"] == "bf16"]
        if hit:
            ms = 1e9 / hit[0]["pairs_per_s"] / 1e3  # ms per 1M pairs
            parts.append(f"{name} {ms:.2f} ms/1M pairs{'' if ms <= TARGET_MS_PER_1M else ' (over target)'}")
    line = f"{len(rows)} rows; l1={l1} bf16: " + (", ".join(parts) or "no target plan timed")
    line += f" (target <= {TARGET_MS_PER_1M:g} ms)"
    if memory is not None and memory.is_file():
        mem = json.loads(memory.read_text())["rows"]
        growth = []
        for r in mem:
            vals = [float(v) for v in r["extra_mib"].values()]
            growth.append((vals[-1] - vals[0], f"{r['plan']} {r['dtype']}"))
        worst = max(growth) if growth else None
        ns = list(mem[0]["extra_mib"]) if mem else []
        if worst is not None:
            line += f"; memory N={ns[0]}..{ns[-1]}: largest growth {worst[0]:+.0f} MiB ({worst[1]})"
    return line


def evaluate_line(report: Path, wall: float) -> str:
    r = json.loads(report.read_text())
    m, ev = r["metrics"], r["evaluated"]
    return (f"{ev['items']} x {ev['texts']} in {wall:.1f} s wall (encode {r['timings']['encode_s']:.1f} s, "
            f"score {r['timings']['score_s']:.2f} s); R@1 t2v {m['t2v']['R@1']:.1f}, v2t {m['v2t']['R@1']:.1f} "
            "(random weights: chance level expected)")


def read_steps(tsv: Path) -> list[dict]:
    rows = []
    for line in tsv.read_text().splitlines():
        if line.strip():
            sid, name, status, seconds, summary = (line.split("\t") + [""] * 5)[:5]
            rows.append({"id": sid, "name": name, "status": status, "seconds": int(seconds or 0), "summary": summary})
    return rows


def summary(tsv: Path, results: Path, out: Path, mode: str) -> str:
    """The table of steps (printed), summary.md and summary.json."""
    steps = read_steps(tsv) if tsv.is_file() else []
    head = "| step | name | status | seconds | summary |\n|---|---|---|---|---|\n"
    table = head + "".join(f"| {s['id']} | {s['name']} | {s['status']} | {s['seconds']} | {s['summary']} |\n"
                           for s in steps)
    tables = [f"\n## {p.stem}\n\n{p.read_text()}" for p in sorted(results.glob("*.md"))]
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    (out / "summary.md").write_text(f"# GPU check ({mode} mode), {when}\n\n{table}" + "".join(tables))
    ok = all(s["status"] in ("passed", "skipped: not selected") for s in steps)
    (out / "summary.json").write_text(json.dumps({"mode": mode, "date": when, "ok": ok, "steps": steps}, indent=2)
                                      + "\n")
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("tests", help="SUMMARY line of a junit XML")
    t.add_argument("xml", type=Path)
    b = sub.add_parser("bench", help="SUMMARY line of tokenflow bench reports")
    b.add_argument("json", type=Path, nargs="+")
    b.add_argument("--memory", type=Path, default=None, help="benchmarks/memory.py --json report")
    e = sub.add_parser("evaluate", help="SUMMARY line of a tokenflow evaluate report")
    e.add_argument("json", type=Path)
    e.add_argument("--wall-ms", type=int, required=True, help="wall milliseconds of the command")
    s = sub.add_parser("summary", help="the final table, summary.md and summary.json")
    s.add_argument("tsv", type=Path)
    s.add_argument("--results", type=Path, required=True, help="folder of the steps' files")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--mode", default="gpu")
    args = p.parse_args(argv)
    if args.what == "tests":
        print(f"SUMMARY tests: {tests_line(args.xml)}")
    elif args.what == "bench":
        print(f"SUMMARY bench: {bench_line(args.json, args.memory)}")
    elif args.what == "evaluate":
        print(f"SUMMARY evaluate: {evaluate_line(args.json, args.wall_ms / 1000)}")
    else:
        print(summary(args.tsv, args.results, args.out, args.mode))
    return 0


if __name__ == "__main__":
    sys.exit(main())
