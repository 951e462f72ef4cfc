"""Training: config, loss of a batch, data order, distributed helpers, the schedule, the run
log, checkpoints, the :class:`Trainer` behind :func:`train` (its state: :class:`TrainState`),
and ablations (:mod:`tokenflow.train.ablate`)."""

from __future__ import annotations

from .._extras import require_extra

try:
    from .build import build_model, param_groups
    from .checkpoint import load_checkpoint, save_checkpoint
    from .config import ConfigError, TrainConfig, load_config
    from .objective import Batch, Objective
    from .schedule import lr_at
    from .state import TrainState
    from .trainer import Trainer, train
except ModuleNotFoundError:
    require_extra("train", "training")  # a missing pydantic or yaml: name the extra to install
    raise

__all__ = ["Batch", "ConfigError", "Objective", "TrainConfig", "TrainState", "Trainer", "build_model",
           "load_checkpoint", "load_config", "lr_at", "param_groups", "save_checkpoint", "train"]
