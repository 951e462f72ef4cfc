"""Small numerical pieces shared by several plans."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .block import BlockContext

LOG2E = 1.0 / math.log(2.0)


def softmax_dot(
    c: Tensor, scale: float | Tensor, bias: Tensor | None, dim: int, ctx: BlockContext, safe: bool
) -> Tensor:
    """``sum_dim softmax(scale * c + bias, dim) * c``: the softmax-weighted mean of ``c`` along ``dim``.

    ``bias`` is 0 at real tokens and -inf at padding (or ``None`` when there is none). Under
    autograd this is the plain formula. Without it, the same value is computed in place in one
    reused scratch buffer (no allocation), with ``exp2`` (log2 e folded into the scale; cheaper
    than ``exp`` on the CPU), and the max-shift is skipped when ``safe`` (the caller has bounded
    |scale * c|, so nothing overflows or vanishes).
    """
    if not ctx.reuse:
        x = c * scale if bias is None else c * scale + bias
        return (torch.softmax(x, dim) * c).sum(dim)
    x = ctx.scratch("x", c.shape, c.dtype)
    # Two simple passes beat one addcmul whose two broadcast operands defeat vectorisation.
    torch.mul(c, scale * LOG2E, out=x)
    if bias is not None:
        x.add_(bias)
    if not safe:
        x.sub_(x.amax(dim, keepdim=True))
    torch.exp2(x, out=x)
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
