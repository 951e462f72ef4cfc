"""Run under torchrun by test_train.py: one DDP backward of the objective on this rank's share
of a fixed batch; rank 0 saves the averaged gradients (safetensors) to argv[1]."""

from __future__ import annotations

import os
import sys

import torch
from safetensors.torch import save_file
from torch import nn

from tests.train.helpers import grad_setup
from tokenflow.train.distributed import init_distributed


def main() -> None:
    info, device = init_distributed("cpu")
    model, objective, batch = grad_setup(sys.argv[2] if len(sys.argv) > 2 else "tokenflow")
    share = len(batch.item_ids) // info.world
    rows = slice(info.rank * share, (info.rank + 1) * share)
    mine = type(batch)(batch.pixels[rows], None, batch.ids[rows], batch.text_mask[rows], batch.item_ids[rows])
    ddp = nn.parallel.DistributedDataParallel(objective)
    out = ddp(mine, info)
    out.loss.backward()
    if info.main:
        save_file({n: p.grad.contiguous() for n, p in model.named_parameters() if p.grad is not None}, sys.argv[1])
    torch.distributed.barrier()  # every rank is done with the group and its output is written
    # Leave without C++ teardown: a gloo group's destructors at exit aborted one rank once
    # ("terminate called without an active exception", SIGABRT) on a loaded 2-core machine.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
