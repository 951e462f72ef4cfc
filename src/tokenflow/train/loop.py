"""``tokenflow train``: fine-tune a backbone with any plan, on one process or under torchrun.

:func:`train` is the entry point; the run itself, stage by stage, the files it writes in
``run.out`` and the pieces it is built from (:func:`build_model`, :func:`param_groups`,
:func:`lr_at`, :func:`deterministic_algorithms`) are in :mod:`tokenflow.train.trainer`.
"""

from __future__ import annotations

import torch

from .config import TrainConfig
from .distributed import init_distributed
from .trainer import Trainer, build_model, deterministic_algorithms, lr_at, param_groups

__all__ = ["build_model", "deterministic_algorithms", "lr_at", "param_groups", "train"]


def train(cfg: TrainConfig, *, resume: bool = False, argv: list[str] | None = None,
          force_config: bool = False) -> dict:
    """Run (or resume) the training that ``cfg`` describes; returns a summary dict.

    ``force_config``: resume even where ``cfg`` changes keys that alter the result (the change
    is recorded in ``log.jsonl``)."""
    info, device = init_distributed(cfg.run.device)
    try:
        return Trainer(cfg, info, device, resume=resume, argv=argv, force_config=force_config).run()
    finally:
        if info.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
