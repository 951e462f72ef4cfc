"""Training: config, loss of a batch, data order, distributed helpers, checkpoints, the
:class:`Trainer` behind :func:`train`, and ablations (:mod:`tokenflow.train.ablate`)."""

from __future__ import annotations

from .._extras import require_extra

try:
    from .checkpoint import load_checkpoint, save_checkpoint
    from .config import ConfigError, TrainConfig, load_config
    from .loop import build_model, lr_at, param_groups, train
    from .objective import Batch, Objective
    from .trainer import Trainer
except ModuleNotFoundError:
    require_extra("train", "training")  # a missing pydantic or yaml: name the extra to install
    raise

__all__ = ["Batch", "ConfigError", "Objective", "TrainConfig", "Trainer", "build_model", "load_checkpoint",
           "load_config", "lr_at", "param_groups", "save_checkpoint", "train"]
