"""Training: config, loss of a batch, data order, distributed helpers, checkpoints, the loop."""

from __future__ import annotations

from .checkpoint import load_checkpoint, save_checkpoint
from .config import ConfigError, TrainConfig, load_config
from .loop import build_model, lr_at, train
from .objective import Batch, Objective

__all__ = ["Batch", "ConfigError", "Objective", "TrainConfig", "build_model", "load_checkpoint", "load_config",
           "lr_at", "save_checkpoint", "train"]
