"""Training objectives: symmetric InfoNCE, momentum distillation, the Cauchy-Schwarz divergence."""

from __future__ import annotations

from .cs_divergence import cs_divergence, cs_divergence_tokens, median_bandwidth
from .distill import FeatureQueue, distill_targets, ema_update
from .infonce import contrastive_loss, id_targets, soft_cross_entropy

__all__ = [
    "FeatureQueue",
    "contrastive_loss",
    "cs_divergence",
    "cs_divergence_tokens",
    "distill_targets",
    "ema_update",
    "id_targets",
    "median_bandwidth",
    "soft_cross_entropy",
]
