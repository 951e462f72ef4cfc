"""``tokenflow bench``: the report has a row per plan, and a bad option is one message, exit 2."""

import json

from tokenflow.cli import main


def test_bench_writes_report_with_a_row_per_plan(tmp_path, capsys):
    out = tmp_path / "bench.json"
    md = tmp_path / "bench.md"
    rc = main([
        "bench", "--n", "12", "--m", "10", "--l1", "4", "--l2", "5", "--dim", "16", "--dtypes", "fp32",
        "--aligners", "tokenflow", "emd", "mpa", "--slow-m", "6", "--memory-n", "12", "24", "--repeats", "1",
        "--json", str(out), "--markdown", str(md),
    ])
    assert rc == 0
    report = json.loads(out.read_text())
    assert [r["aligner"] for r in report["rows"]] == ["tokenflow", "emd", "mpa"]
    assert report["rows"][2]["pairs_per_s"] > 0 and report["rows"][2]["speedup_vs_naive"] is None  # a set method
    tf = report["rows"][0]
    assert tf["pairs_per_s"] > 0 and tf["matmul_gflops"] > 0 and tf["speedup_vs_naive"] > 0
    assert [m["n"] for m in tf["memory"]] == [12, 24]
    assert report["rows"][1]["m"] == 6  # transport plans are timed on --slow-m texts
    assert "| tokenflow | 4 | fp32 |" in md.read_text() and "| mpa | 4 | fp32 |" in md.read_text()
    assert "x of matmul" in capsys.readouterr().out


def test_bench_rejects_unknown_aligner(capsys):
    assert main(["bench", "--aligners", "filip", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "--aligners: unknown aligner(s) ['filip']" in err and "Traceback" not in err
