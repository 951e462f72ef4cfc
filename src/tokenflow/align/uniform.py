"""Uniform plan (TokenFlow paper, section 3.2.1, eq 10).

    T_v2t[s, t] = T_t2v[s, t] = 1 / (l1 * l2)

Every real token pair counts the same, so the score is the dot product of the mean real
tokens of each side: no token-pair work is needed at all (FILIP notes the same equivalence).
"""

from __future__ import annotations

from torch import Tensor

from ..tokens import Tokens
from .base import Aligner
from .block import BlockContext, real_lengths, work_dtype
from .hparams import HParam
from .registry import register_aligner


@register_aligner("uniform")
class Uniform(Aligner):
    """Mean of all token-pair similarities; both directions are equal."""

    hparam_specs: tuple[HParam, ...] = ()

    def plans(self, c: Tensor, v: Tokens, t: Tokens) -> tuple[Tensor, Tensor]:
        l1, l2 = real_lengths(v, t, c.dtype)
        w = (v.mask[:, :, None, None] & t.mask[None, None]).to(c.dtype)
        tp = w / (l1.view(-1, 1, 1, 1) * l2.view(1, 1, -1, 1))
        return tp, tp

    def block(self, v: Tokens, t: Tokens, ctx: BlockContext | None = None) -> tuple[Tensor, Tensor]:
        wd = work_dtype(v.dtype)
        mean_v = v.feats.to(wd).sum(1) / v.mask.sum(1, keepdim=True).to(wd)  # padding is zero
        mean_t = t.feats.to(wd).sum(1) / t.mask.sum(1, keepdim=True).to(wd)
        s = mean_v @ mean_t.T
        return s, s

    def block_elements(self) -> int:
        return 2**26  # only [n, D] x [D, m] work per block
