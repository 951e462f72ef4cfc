"""Cauchy-Schwarz divergence between two samples of embeddings (CS-Aligner: "Distributional
Vision-Language Alignment by Cauchy-Schwarz Divergence").

With a Gaussian kernel ``k(a, b) = exp(-|a - b|^2 / (2 sigma^2))`` and the kernel density
estimates of the two samples ``x`` (m points) and ``y`` (n points), the standard estimator is

    D(x, y) = log mean_ij k(x_i, x_j) + log mean_ij k(y_i, y_j) - 2 log mean_ij k(x_i, y_j)

By the Cauchy-Schwarz inequality for the positive-definite Gaussian kernel, ``D >= 0``, with
equality when the two density estimates coincide (identical samples); it is symmetric. It needs
no pairing between ``x`` and ``y``, so unpaired images and texts can enter it. Each ``log mean
exp`` is a ``logsumexp`` minus ``log(count)``: no kernel value underflows to ``log 0``.

Bandwidth: ``sigma=None`` uses the median heuristic, the median distance between distinct
points of the pooled sample ``x ∪ y`` (held constant for the gradient), a common default that
keeps the kernel neither flat nor spiky whatever the embedding scale.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..tokens import Tokens

__all__ = ["cs_divergence", "cs_divergence_tokens", "median_bandwidth"]


def _sq_dists(a: Tensor, b: Tensor) -> Tensor:
    d = (a * a).sum(-1, keepdim=True) + (b * b).sum(-1).unsqueeze(0) - 2 * a @ b.T
    return d.clamp_min(0.0)


@torch.no_grad()
def median_bandwidth(x: Tensor, y: Tensor) -> Tensor:
    """Median pairwise distance between distinct points of ``x ∪ y`` (the median heuristic)."""
    z = torch.cat([x, y]).detach()
    d = _sq_dists(z, z)
    iu = torch.triu_indices(len(z), len(z), offset=1, device=z.device)
    med = d[iu[0], iu[1]].median().sqrt() if len(z) > 1 else z.new_tensor(1.0)
    return med.clamp_min(1e-6)


def _log_mean_kernel(a: Tensor, b: Tensor, sigma: Tensor) -> Tensor:
    logits = -_sq_dists(a, b) / (2 * sigma * sigma)
    return torch.logsumexp(logits.flatten(), 0) - math.log(logits.numel())


def cs_divergence(x: Tensor, y: Tensor, sigma: float | Tensor | None = None) -> Tensor:
    """``D(x, y)`` for ``x`` [m, D] and ``y`` [n, D] (computed in at least fp32)."""
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected x [m, D] and y [n, D] with the same D, got {tuple(x.shape)} and {tuple(y.shape)}")
    if len(x) == 0 or len(y) == 0:
        raise ValueError("both samples need at least one point")
    dt = torch.float64 if torch.float64 in (x.dtype, y.dtype) else torch.float32
    x, y = x.to(dt), y.to(dt)
    s = median_bandwidth(x, y) if sigma is None else torch.as_tensor(sigma, dtype=dt, device=x.device)
    if float(s) <= 0:
        raise ValueError(f"sigma must be positive, got {float(s)}")
    return _log_mean_kernel(x, x, s) + _log_mean_kernel(y, y, s) - 2 * _log_mean_kernel(x, y, s)


def cs_divergence_tokens(vis: Tokens, txt: Tokens, sigma: float | Tensor | None = None) -> Tensor:
    """The token-level variant: ``D`` between all real visual tokens and all real text tokens."""
    return cs_divergence(vis.feats[vis.mask], txt.feats[txt.mask], sigma)
