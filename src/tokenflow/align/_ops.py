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
    autograd (``c`` or ``scale`` needs a gradient) the value is the same formula with a
    hand-written backward (:class:`_SoftmaxDot`): about half the time of autograd's softmax,
    multiply and sum on the CPU. With a no-grad ``ctx`` (``ctx.reuse``) the same value is computed
    in place in one reused scratch buffer (no allocation), with ``exp2`` (log2 e folded into the
    scale; cheaper than ``exp`` on the CPU), and the max-shift is skipped when ``safe`` (the caller
    has bounded |scale * c|, so nothing overflows or vanishes). Otherwise (a gradient-tracking
    ``ctx`` where nothing needs a gradient) it is the plain formula.
    """
    if not ctx.reuse:
        if torch.is_grad_enabled() and (c.requires_grad or (isinstance(scale, Tensor) and scale.requires_grad)):
            return _SoftmaxDot.apply(c, scale, bias, dim)
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


class _SoftmaxDot(torch.autograd.Function):
    """``y = sum_dim p * c`` with ``p = softmax(scale * c + bias, dim)``, and its gradient:

        dy/dz_k = p_k (c_k - y)                 (z = scale * c + bias)
        dy/dc_k = p_k + scale_k dy/dz_k         dy/dscale_k = c_k dy/dz_k

    ``bias`` (0 or -inf, the padding mask) gets none. ``p`` is kept for the backward pass, as
    autograd's softmax keeps its output. First-order only (no double backward)."""

    @staticmethod
    def forward(ctx, c: Tensor, scale: float | Tensor, bias: Tensor | None, dim: int) -> Tensor:
        x = c * scale if bias is None else c * scale + bias
        p = x.sub_(x.amax(dim, keepdim=True)).exp_()
        p.div_(p.sum(dim, keepdim=True))
        y = (p * c).sum(dim, keepdim=True)
        tensor_scale = isinstance(scale, Tensor)
        ctx.dim, ctx.scalar = dim, None if tensor_scale else float(scale)
        ctx.save_for_backward(c, p, y, scale if tensor_scale else None)
        return y.squeeze(dim)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        c, p, y, scale = ctx.saved_tensors
        g = g.unsqueeze(ctx.dim)
        gz = (c - y).mul_(p).mul_(g)
        gc = gz * (scale if scale is not None else ctx.scalar) + p * g if ctx.needs_input_grad[0] else None
        gs = (gz * c).sum_to_size(scale.shape) if scale is not None and ctx.needs_input_grad[1] else None
        return gc, gs, None, None


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
