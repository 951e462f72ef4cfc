"""SCAN plan (TokenFlow paper, eq 11 and appendix A, eq 17-22; Lee et al., ECCV 2018).

    T_v2t[s, t] = softmax_t(lam * c[s, :])[t] / l1        (eq 11, 18)
    T_t2v[s, t] = softmax_s(lam * c[:, t])[s] / l2

Each visual token attends over the words (and each word over the visual tokens); the score is
the mean similarity of a token to its attended context (eq 19-22).
"""

from __future__ import annotations

import math

from torch import Tensor

from ._ops import LOG2E, softmax_dot
from ..tokens import Tokens
from .base import Aligner
from .block import BlockContext, mask_bias, real_lengths, token_sim
from .hparams import HParam
from .registry import register_aligner


@register_aligner("scan")
class Scan(Aligner):
    """Stacked cross attention as a plan.

    Args:
        lam: inverse softmax temperature (default 9.0, the text-image value of SCAN's paper;
            the TokenFlow paper gives none).
    """

    hparam_specs = (HParam("lam", float, 9.0, low=0.0, low_open=True,
                           doc="inverse softmax temperature of the cross attention"),)

    def __init__(self, lam: float = 9.0, chunk: int | None = None) -> None:
        super().__init__(chunk)
        if not lam > 0:
            raise ValueError(f"scan: lam must be > 0, got {lam}")
        self.lam = float(lam)

    def hparams(self) -> dict:
        return {"lam": self.lam}

    def plans(self, c: Tensor, v: Tokens, t: Tokens) -> tuple[Tensor, Tensor]:
        bv, bt = mask_bias(v, t, c.dtype)
        l1, l2 = real_lengths(v, t, c.dtype)
        vm = v.mask[:, :, None, None].to(c.dtype)
        tm = t.mask[None, None].to(c.dtype)
        tv = (self.lam * c + bt).softmax(3) * vm / l1.view(-1, 1, 1, 1)
        tt = (self.lam * c + bv).softmax(1) * tm / l2.view(1, 1, -1, 1)
        return tv, tt

    def block(self, v: Tokens, t: Tokens, ctx: BlockContext | None = None) -> tuple[Tensor, Tensor]:
        ctx = ctx or BlockContext(v, t)
        c = token_sim(v, t, ctx)
        bv, bt = mask_bias(v, t, c.dtype)
        l1, l2 = real_lengths(v, t, c.dtype)
        nv, _, nt, _ = ctx.norms if ctx.reuse else (math.inf,) * 4
        safe = ctx.exp2_is_safe(self.lam * LOG2E * nv * nt, max(c.shape[1], c.shape[3]), c.dtype)
        # Padded rows / columns have c == 0 (zeroed features), so they add nothing to the sums.
        r = softmax_dot(c, self.lam, bt if ctx.txt_padded else None, 3, ctx, safe)  # [n, L1, m]
        q = softmax_dot(c, self.lam, bv if ctx.vis_padded else None, 1, ctx, safe)  # [n, m, L2]
        return r.sum(1) / l1, q.sum(2) / l2
