"""Run by test_kill_points.py: training runs killed at named points and resumed, in one process.

``python -m tests.train._kill_runs CONFIG PLAN RESULT`` where PLAN (JSON) maps a run folder to its list
of kill specs (``TOKENFLOW_TEST_KILL_AT`` values, ``null`` for a run left to finish). Each run is
``tokenflow train --config CONFIG run.out=FOLDER`` (with ``--resume`` once the folder holds a
checkpoint) in a child forked from this process, which imported tokenflow once and ran no torch
operation (so forking is safe and a run starts in a second, not in the three of an import).
Writes ``{folder: [exit status of each run, -9 for a SIGKILL]}`` to RESULT as JSON.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tokenflow.cli import main as tokenflow
from tokenflow.train.runfolder import KILL_ENV


def _run(config: str, out: str, spec: str | None) -> int:
    argv = ["train", "--config", config, f"run.out={out}"]
    if (Path(out) / "last.safetensors").is_file():
        argv.append("--resume")
    pid = os.fork()
    if pid == 0:  # the child: one run, then out without the parent's cleanup
        code = 1
        try:
            if spec:
                os.environ[KILL_ENV] = spec
            code = tokenflow(argv)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    status = os.waitpid(pid, 0)[1]
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def main() -> None:
    config, plan = sys.argv[1], json.loads(Path(sys.argv[2]).read_text())
    codes = {out: [_run(config, out, spec) for spec in specs] for out, specs in plan.items()}
    Path(sys.argv[3]).write_text(json.dumps(codes))


if __name__ == "__main__":
    main()
