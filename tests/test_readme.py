"""The README's two set-up commands are the ones CI and users run."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.strip().splitlines() if line.strip() and not line.startswith("#")]


def test_readme_opens_with_exactly_two_commands():
    head = (ROOT / "README.md").read_text().split("```bash", 1)[0]
    assert head.count("\n") < 8, "the two set-up commands must be among the README's first lines"
    cmds = readme_commands()
    assert len(cmds) == 2
    assert "tokenflow demo" in cmds[0] and "pytest" in cmds[1]
    for cmd in cmds:
        assert "-c constraints.txt" in cmd  # tested versions, torch pinned to the CPU wheel


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert readme_commands()[1] in [line.strip() for line in ci.splitlines()]


def test_constraints_pin_torch():
    pins = (ROOT / "constraints.txt").read_text().split()
    assert "torch==2.13.0" in pins
