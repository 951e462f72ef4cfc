"""The learning-rate schedule and the run's length in optimizer steps.

The schedule is a pure function of the step and the configuration, so the step is its whole
state (a resumed run needs nothing else to continue it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..data.base import RetrievalSplit
from .config import ConfigError, TrainConfig

__all__ = ["StepPlan", "lr_at", "plan_steps"]


def lr_at(step: int, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based): linear warm-up
    over ``warmup`` steps, then a cosine down to ``min_ratio`` at ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class StepPlan:
    """Optimizer steps per epoch, in all (``total``: ``run.max_steps`` caps it) and of warm-up."""

    steps_per_epoch: int
    total: int
    warmup: int


def plan_steps(cfg: TrainConfig, split: RetrievalSplit, world: int) -> StepPlan:
    """The :class:`StepPlan` of training on ``split`` with ``world`` processes; a
    :class:`ConfigError` when the global batch does not split evenly or does not fit an epoch."""
    o, d = cfg.optim, cfg.data
    if o.batch_size % world:
        raise ConfigError(f"optim.batch_size: {o.batch_size} does not split evenly over {world} processes")
    pairs_per_epoch = len(split.texts) if d.sampling == "caption" else len(set(split.text_item))
    steps_per_epoch = pairs_per_epoch // o.batch_size // o.accum
    if steps_per_epoch == 0:
        raise ConfigError(f"optim.batch_size x optim.accum = {o.batch_size * o.accum} is more than the "
                          f"{pairs_per_epoch} training pairs per epoch of {split.name}")
    total = o.epochs * steps_per_epoch
    total = min(total, cfg.run.max_steps) if cfg.run.max_steps else total
    return StepPlan(steps_per_epoch, total, int(o.warmup * total) if o.warmup < 1 else int(o.warmup))
