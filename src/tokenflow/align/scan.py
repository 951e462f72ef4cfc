"""SCAN plan (TokenFlow paper, eq 11 and appendix A, eq 17-22; Lee et al., ECCV 2018).

    T_v2t[s, t] = softmax_t(lam * c[s, :])[t] / l1        (eq 11, 18)
    T_t2v[s, t] = softmax_s(lam * c[:, t])[s] / l2

Each visual token attends over the words (and each word over the visual tokens); the score is
the mean similarity of a token to its attended context (eq 19-22).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._ops import softmax_dot
from .base import Aligner, Tokens, mask_bias, real_lengths, token_sim, work_dtype
from .registry import register_aligner


@register_aligner("scan")
class Scan(Aligner):
    """Stacked cross attention as a plan.

    Args:
        lam: inverse softmax temperature (default 9.0, the text-image value of SCAN's paper;
            the TokenFlow paper gives none).
    """

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

    def block(self, v: Tokens, t: Tokens) -> tuple[Tensor, Tensor]:
        c = token_sim(v, t).to(work_dtype(v.dtype))
        bv, bt = mask_bias(v, t, c.dtype)
        l1, l2 = real_lengths(v, t, c.dtype)
        # Padded rows / columns have c == 0 (zeroed features), so they add nothing to the sums.
        r = softmax_dot(torch.add(bt, c, alpha=self.lam), c, 3)  # [n, L1, m]
        q = softmax_dot(torch.add(bv, c, alpha=self.lam), c, 1)  # [n, m, L2]
        return r.sum(1) / l1, q.sum(2) / l2

