"""The prepared GPU check (benchmarks/gpu_check.sh, issue 30) stays runnable without a GPU: the
script parses, every Python helper it calls exists, parses and answers --help, and the helpers
and the script's driver run end to end in CPU smoke mode at the smallest sizes."""

from __future__ import annotations

import ast
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
HELPER = re.compile(r"benchmarks/([A-Za-z0-9_]+\.py)")
STEPS = ("0", "1a", "2", "3", "4", "5", "6", "1b")
#: the device tool brings back at most 8 files, named in letters, digits, '.', '_' and '-'
RETURNED = re.compile(r"^[A-Za-z0-9._-]+$")


def helpers() -> list[Path]:
    return sorted({ROOT / "benchmarks" / name for name in HELPER.findall(SCRIPT.read_text())})


def env(**extra) -> dict:
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1", **extra)


def test_the_script_parses_and_names_every_step():
    assert shutil.which("bash"), "bash is needed"
    res = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    text = SCRIPT.read_text()
    for step in STEPS:
        assert re.search(rf"^step_{step}\(\) {{", text, re.M), f"step {step} has no function"
    assert text.count("ORDER=(0 1a 2 3 4 5 6 1b)") == 1


def test_every_helper_exists_parses_and_answers_help():
    found = helpers()
    assert {p.name for p in found} >= {"gpu_clip.py", "gpu_train.py", "gpu_ddp.py", "gpu_search.py", "gpu_report.py",
                                       "pairwise.py", "memory.py"}
    for path in found:
        ast.parse(path.read_text(), str(path))
    procs = {p.name: subprocess.Popen([sys.executable, str(p), "--help"], env=env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for p in found}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and "usage:" in out, f"{name} --help: {err[-2000:]}"


def test_the_report_counts_a_junit_file(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from gpu_report import tests_line
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    xml = tmp_path / "t.xml"
    xml.write_text('<testsuites><testsuite tests="5" failures="1" errors="1" skipped="1" time="2.5">'
                   '<testcase classname="a" name="ok"/><testcase classname="a" name="bad"><failure/></testcase>'
                   '<testcase classname="b" name="worse"><error/></testcase></testsuite></testsuites>')
    assert tests_line(xml) == "2 passed, 1 failed, 1 errors, 1 skipped (2 s); first failures: a::bad, b::worse"


def _read(tar: Path, name: str) -> dict:
    with tarfile.open(tar) as t:
        return json.loads(t.extractfile(f"results/{name}").read())


@pytest.mark.slow
def test_cpu_smoke_run_of_the_script_and_the_search_helper(tmp_path):
    """The driver with steps 2-5 (prep runs because they need it) in CPU mode, and, meanwhile,
    gpu_search.py (store, Searcher, the search command, serve) at 300 items."""
    out, work = tmp_path / "out", tmp_path / "work"
    script = subprocess.Popen(["bash", str(SCRIPT)], env=env(OUT=str(out), GPU_CHECK_WORK=str(work), GPU_CHECK_CPU="1",
                                                         GPU_CHECK_STEPS="2 3 4 5", PYTHON=sys.executable),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    clip = tmp_path / "clip"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_clip.py"), str(clip), "--size", "tiny"], env=env(),
                   check=True, capture_output=True)
    search = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_search.py"), "--clip", str(clip),
                             "--items", "300", "--queries", "3", "--shortlists", "5", "--devices", "cpu",
                             "--work", str(tmp_path / "search"), "--json", str(tmp_path / "search.json")],
                            env=env(), capture_output=True, text=True)
    log, _ = script.communicate(timeout=300)
    assert script.returncode == 0, log[-4000:]
    assert search.returncode == 0, search.stdout[-2000:] + search.stderr[-2000:]

    summary = json.loads((out / "summary.json").read_text())
    status = {s["id"]: s["status"] for s in summary["steps"]}
    assert status == {"0": "passed", "1a": "skipped: not selected", "2": "passed", "3": "passed", "4": "passed",
                      "5": "passed", "6": "skipped: not selected", "1b": "skipped: not selected"}, log[-4000:]
    assert summary["ok"] and summary["mode"] == "cpu"
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(RETURNED.match(f) for f in files) and all((out / f).is_file() for f in files)
    assert {"summary.md", "summary.json", "gpu_check.log", "results.tar.gz"} <= set(files)
    tables = (out / "summary.md").read_text()
    assert "| 2 | train | passed |" in tables and "## 2-train" in tables and "## 4-memory" in tables

    tar = out / "results.tar.gz"
    train = _read(tar, "2-train.json")
    assert [r["method"] for r in train["rows"]] == ["global", "max-avg", "tokenflow", "sinkhorn", "tokenflow+md"]
    assert all("error" not in r and math.isfinite(r["s_per_step"]) for r in train["rows"])
    assert train["rows"][0]["overhead_vs_global_pct"] == 0 and train["rows"][4]["distill"]
    ddp = _read(tar, "3-torchrun.json")
    assert ddp["ok"] and ddp["backend"] == "gloo" and all(c["gathers"] > 0 for c in ddp["compare"].values())
    fast = _read(tar, "4-bench-fast.json")
    assert {(r["aligner"], r["l1"], r["dtype"]) for r in fast["rows"]} == {
        (a, l1, d) for a in ("uniform", "learnable", "scan", "max-avg", "max-sum", "tokenflow")
        for l1 in (4, 8) for d in ("fp32", "bf16")}
    assert len(_read(tar, "4-memory.json")["rows"]) == 14
    assert _read(tar, "5-evaluate.json")["evaluated"] == {"items": 8, "texts": 8}

    found = json.loads((tmp_path / "search.json").read_text())
    cpu = found["results"]["cpu"]
    assert found["store"]["items"] == 300 and cpu["searcher"]["5"]["p50_ms"] > 0
    assert cpu["serve"]["requests"] == 3 and cpu["serve"]["errors"] == 0 and len(cpu["cli"]["top10"]) == 3
