"""Max-Avg plan (TokenFlow paper, eq 12; FILIP's late interaction, Yao et al. 2022).

    T_v2t[s, t] = 1 / l1  if t = argmax_t' c[s, t'] else 0
    T_t2v[s, t] = 1 / l2  if s = argmax_s' c[s', t] else 0

so s_v2t = mean_s max_t c[s, t] and s_t2v = mean_t max_s c[s, t]. The fast route takes the
maxima directly and never builds T; ties give the same score either way.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..tokens import Tokens
from .base import Aligner
from .block import BlockContext, mask_bias, real_lengths, token_sim
from .hparams import HParam
from .registry import register_aligner


@register_aligner("max-avg")
class MaxAvg(Aligner):
    """Each token keeps only its best match on the other side; the best matches are averaged."""

    #: Divide by the number of real tokens (Max-Avg) or not (Max-Sum).
    average: bool = True
    hparam_specs: tuple[HParam, ...] = ()

    def plans(self, c: Tensor, v: Tokens, t: Tokens) -> tuple[Tensor, Tensor]:
        bv, bt = mask_bias(v, t, c.dtype)
        l1, l2 = real_lengths(v, t, c.dtype)
        vm = v.mask[:, :, None, None].to(c.dtype)
        tm = t.mask[None, None].to(c.dtype)
        tv = _one_hot_argmax(c + bt, 3) * vm
        tt = _one_hot_argmax(c + bv, 1) * tm
        if self.average:
            tv, tt = tv / l1.view(-1, 1, 1, 1), tt / l2.view(1, 1, -1, 1)
        return tv, tt

    def block(self, v: Tokens, t: Tokens, ctx: BlockContext | None = None) -> tuple[Tensor, Tensor]:
        ctx = ctx or BlockContext(v, t)
        c = token_sim(v, t, ctx)
        bv, bt = mask_bias(v, t, c.dtype)
        # Padded rows (columns) have c == 0, hence a max of exactly 0 over real entries.
        cv = torch.add(c, bt, out=ctx.out("x", c.shape, c.dtype)) if ctx.txt_padded else c
        v2t = cv.amax(3).sum(1)
        ct = torch.add(c, bv, out=ctx.out("x", c.shape, c.dtype)) if ctx.vis_padded else c
        t2v = ct.amax(1).sum(2)
        if self.average:
            l1, l2 = real_lengths(v, t, c.dtype)
            v2t, t2v = v2t / l1, t2v / l2
        return v2t, t2v


def _one_hot_argmax(x: Tensor, dim: int) -> Tensor:
    idx = x.argmax(dim, keepdim=True)
    return torch.zeros_like(x).scatter_(dim, idx, 1.0)
