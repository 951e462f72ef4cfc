"""Run under torchrun by test_sharded_eval.py: every case of ``eval_cases(argv[1])`` evaluated
by all processes together; rank 0 writes the reports (JSON) to argv[2]."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from tests.train.helpers import eval_cases, run_case
from tokenflow.train.distributed import init_distributed


def main() -> None:
    info, _ = init_distributed("cpu")
    reports = {name: run_case(*case, info) for name, case in eval_cases(Path(sys.argv[1])).items()}
    if info.main:
        Path(sys.argv[2]).write_text(json.dumps(reports))
    else:
        assert all(r is None for r in reports.values())
    torch.distributed.barrier()  # every rank is done with the group and its output is written
    # Leave without C++ teardown: a gloo group's destructors at exit aborted one rank once
    # ("terminate called without an active exception", SIGABRT) on a loaded 2-core machine.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
