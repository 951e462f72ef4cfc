import json

import pytest

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


def test_bench_rejects_unknown_aligner():
    with pytest.raises(SystemExit, match="unknown aligner"):
        main(["bench", "--aligners", "filip", "--quick"])


#: The commands the README and docs name; a refactor of the CLI must keep every one.
COMMANDS = {"ablate", "bench", "convert-captions", "demo", "encode", "evaluate", "evaluate-compositional", "explain",
            "import-features", "index", "make-data", "prepare-frames", "search", "serve", "train"}


def test_version_is_the_installed_packages_and_exits_0(capsys):
    import importlib.metadata

    import tokenflow

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out == f"tokenflow {tokenflow.__version__}\n"
    assert tokenflow.__version__ == importlib.metadata.version("tokenflow")  # pyproject.toml's


def test_every_command_is_offered_and_its_help_exits_0(capsys):
    with pytest.raises(SystemExit) as stop:
        main([])  # no command: usage on stderr, exit 2
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "the following arguments are required: command" in err
    offered = set(err.split("{", 1)[1].split("}", 1)[0].split(","))
    assert offered == COMMANDS
    for command in sorted(COMMANDS):
        with pytest.raises(SystemExit) as stop:
            main([command, "--help"])
        assert stop.value.code == 0, command
        assert capsys.readouterr().out.startswith(f"usage: tokenflow {command} "), command


def test_the_installed_command_runs(tmp_path):
    import subprocess
    import sys

    import tokenflow

    done = subprocess.run([sys.executable, "-m", "tokenflow", "--version"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120, check=False)
    assert (done.returncode, done.stdout) == (0, f"tokenflow {tokenflow.__version__}\n"), done.stderr
    missing = tmp_path / "missing.pkl"  # a user error: exit 2 and one line naming the file
    done = subprocess.run([sys.executable, "-m", "tokenflow", "convert-captions", str(missing)], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120, check=False)
    assert done.returncode == 2 and str(missing) in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_every_option_of_every_command_says_what_it_does():
    from tokenflow.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # argparse keeps them here
    missing = [f"{name} {action.dest}" for name, sub in commands.items() for action in sub._actions
               if action.help is None and action.dest != "help"]
    assert not missing, f"options without help text: {missing}"
