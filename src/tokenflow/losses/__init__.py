"""Training objectives: symmetric InfoNCE, the pairwise sigmoid loss, momentum distillation, the
Cauchy-Schwarz divergence."""

from __future__ import annotations

from .cs_divergence import cs_divergence, cs_divergence_tokens, median_bandwidth
from .distill import FeatureQueue, distill_targets, ema_update
from .infonce import contrastive_loss, id_targets, soft_cross_entropy
from .sigmoid import INIT_BIAS, INIT_SCALE, ring_sigmoid_losses, sigmoid_loss

__all__ = [
    "INIT_BIAS",
    "INIT_SCALE",
    "FeatureQueue",
    "contrastive_loss",
    "cs_divergence",
    "cs_divergence_tokens",
    "distill_targets",
    "ema_update",
    "id_targets",
    "median_bandwidth",
    "ring_sigmoid_losses",
    "sigmoid_loss",
    "soft_cross_entropy",
]
