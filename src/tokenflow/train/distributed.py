"""Joining the process group of a ``torchrun`` run (:func:`init_distributed`); the collectives
themselves (gathers with and without gradients, shares of a range) and :class:`DistInfo` are in
:mod:`tokenflow.distributed`, below the evaluation that shares them."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from ..distributed import DistInfo

__all__ = ["init_distributed"]


def init_distributed(device: str) -> tuple[DistInfo, torch.device]:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1); pick the device.

    ``device="auto"``: this rank's GPU if CUDA is available, else the CPU. NCCL on GPUs, gloo on CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local if world > 1 else torch.cuda.current_device())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local), dev
