"""Throughput and memory of every plan's ``pairwise`` at MSR-VTT test size (issue 2).

1000 visual x 1000 texts, l1 in {12, 50}, l2 = 32, D = 512, fp32 and bf16; peak extra memory at
N = 1000 and N = 4000. The transport plans (emd, sinkhorn, partial-ot, assignment) are timed
against 20 texts (they have no throughput target). The measuring code is ``tokenflow.bench``
(also ``tokenflow bench``); this script fixes the configuration and writes the results:

    python benchmarks/pairwise.py                 # CPU
    python benchmarks/pairwise.py --device cuda   # GPU table
"""

from __future__ import annotations

import os
import sys

from tokenflow.cli import main

if __name__ == "__main__":
    device = "cuda" if "--device" in sys.argv and sys.argv[sys.argv.index("--device") + 1] == "cuda" else "cpu"
    here = os.path.dirname(os.path.abspath(__file__))
    out = os.path.join(here, "results", f"pairwise-{device}")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    sys.exit(main(["bench", "--n", "1000", "--m", "1000", "--l1", "12", "50", "--l2", "32", "--dim", "512",
                   "--dtypes", "fp32", "bf16", "--slow-m", "20", "--repeats", "2", "--memory-n", "1000", "4000",
                   "--json", out + ".json", "--markdown", out + ".md", *sys.argv[1:]]))
