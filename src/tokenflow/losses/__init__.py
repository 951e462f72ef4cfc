"""Training objectives: symmetric InfoNCE and momentum distillation."""

from __future__ import annotations

from .distill import FeatureQueue, distill_targets, ema_update
from .infonce import contrastive_loss, id_targets, soft_cross_entropy

__all__ = ["FeatureQueue", "contrastive_loss", "distill_targets", "ema_update", "id_targets", "soft_cross_entropy"]
