"""Small numerical pieces shared by several plans."""

from __future__ import annotations

import torch
from torch import Tensor


def softmax_dot(x: Tensor, c: Tensor, dim: int) -> Tensor:
    """``sum_dim softmax(x, dim) * c``: the softmax-weighted mean of ``c`` along ``dim``.

    ``x`` holds -inf at masked entries and is consumed (overwritten) when no gradient is
    needed, which saves two passes over the largest tensor of a block.
    """
    if torch.is_grad_enabled() and (x.requires_grad or c.requires_grad):
        p = torch.softmax(x, dim)
        return (p * c).sum(dim)
    x.sub_(x.amax(dim, keepdim=True)).exp_()
    den = x.sum(dim)
    return x.mul_(c).sum(dim).div_(den)


def safe_log(x: Tensor) -> Tensor:
    """log(x) with -inf where x == 0 and a zero (not NaN) gradient there."""
    pos = x > 0
    return torch.where(pos, torch.log(torch.where(pos, x, torch.ones_like(x))), float("-inf"))


def normalise_mass(w: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Clamp weights at zero, zero the padding, normalise to unit mass along ``dim``.

    An item whose weights are all <= 0 gets uniform mass over its real tokens instead, so
    every transport problem stays feasible.
    """
    w = torch.where(mask, w.clamp_min(0), torch.zeros_like(w))
    total = w.sum(dim, keepdim=True)
    uniform = mask.to(w.dtype) / mask.sum(dim, keepdim=True).to(w.dtype)
    return torch.where(total > 0, w / torch.where(total > 0, total, torch.ones_like(total)), uniform)
