"""Learnable plan (TokenFlow paper, section 3.2.2; FILIP's learned weighting).

    T_v2t[s, t] = T_t2v[s, t] = exp(W[s, t]) / sum_{real s', t'} exp(W[s', t'])

W is a learned [max_visual, max_text] matrix indexed by token *position*, softmax-normalised over
the real tokens of each pair. It starts at zero, i.e. at the uniform plan. Because T does not
depend on the features, the score factorises: with E = exp(W),

    s = sum_s mu_s . (sum_t E[s, t] omega_t) / (vmask^T E tmask)

which is one [n, L1*D] x [L1*D, m] multiply instead of the full token-pair tensor.
Positions matter here: padding appended at the end leaves scores unchanged, padding moved in
front of real tokens does not.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..tokens import Tokens
from .base import Aligner
from .block import BlockContext, work_dtype
from .hparams import HParam
from .registry import register_aligner


@register_aligner("learnable")
class Learnable(Aligner):
    """Learned position-pair weights.

    Args:
        max_visual: most visual tokens supported (default 256: a ViT-B/16 grid of 196 + CLS fits).
        max_text: most text tokens supported (default 77, CLIP's context length).
    """

    hparam_specs = (
        HParam("max_visual", int, 256, low=1, doc="most visual tokens (size of the weight matrix)"),
        HParam("max_text", int, 77, low=1, doc="most text tokens (size of the weight matrix)"),
    )

    def __init__(self, max_visual: int = 256, max_text: int = 77, chunk: int | None = None) -> None:
        super().__init__(chunk)
        if max_visual < 1 or max_text < 1:
            raise ValueError(f"learnable: max_visual and max_text must be >= 1, got {max_visual}, {max_text}")
        self.max_visual, self.max_text = max_visual, max_text
        self.weight = nn.Parameter(torch.zeros(max_visual, max_text))

    def hparams(self) -> dict:
        return {"max_visual": self.max_visual, "max_text": self.max_text}

    def _exp_weight(self, l1: int, l2: int, dtype: torch.dtype) -> Tensor:
        if l1 > self.max_visual or l2 > self.max_text:
            raise InputError(
                f"learnable plan supports at most {self.max_visual} visual and {self.max_text} text tokens, "
                f"got {l1} and {l2}; raise max_visual / max_text"
            )
        w = self.weight[:l1, :l2].to(dtype)
        return torch.exp(w - w.max().detach())  # the shift cancels in the normalisation

    def plans(self, c: Tensor, v: Tokens, t: Tokens) -> tuple[Tensor, Tensor]:
        e = self._exp_weight(c.shape[1], c.shape[3], c.dtype)[None, :, None, :]
        e = e * (v.mask[:, :, None, None] & t.mask[None, None]).to(c.dtype)
        tp = e / e.sum((1, 3), keepdim=True)
        return tp, tp

    def explain_weights(self, vis: Tokens, txt: Tokens) -> tuple[Tensor, Tensor, str]:
        """Each real position's share of the learned plan softmax(W) (its row and column sums)."""
        v, t, c = self._single_pair(vis, txt, check=False)
        tp = self.plans(c, v, t)[0][0, :, 0, :][v.mask[0]][:, t.mask[0]]
        return (tp.sum(1), tp.sum(0), "learnable's learned position weights: each patch's and each word's share "
                "of softmax(W) over the pair's real positions")

    def block(self, v: Tokens, t: Tokens, ctx: BlockContext | None = None) -> tuple[Tensor, Tensor]:
        wd = work_dtype(v.dtype)
        (n, l1, dim), (m, l2, _) = v.feats.shape, t.feats.shape
        e = self._exp_weight(l1, l2, wd)
        agg = torch.einsum("st,mtd->msd", e, t.feats.to(wd))  # sum_t E[s, t] omega_t; padding is zero
        num = v.feats.to(wd).reshape(n, l1 * dim) @ agg.reshape(m, l1 * dim).T
        z = v.mask.to(wd) @ e @ t.mask.to(wd).T  # total weight of the real block of each pair
        s = num / z
        return s, s
