"""TokenFlow plan (TokenFlow paper, section 3.3.2, eq 14-16).

With the token weights of eq 14, d[s] = mu_s . omega_bar and e[t] = mu_bar . omega_t,

    T_v2t[s, t] = d[s] * softmax_t(lam * e[t] * c[s, t]) / l1        (eq 15)
    T_t2v[s, t] = e[t] * softmax_s(lam * d[s] * c[s, t]) / l2        (eq 16)

A token pair counts more when the two tokens are similar *and* when each token is close to the
global feature of the other modality. Rows of T_v2t sum to d[s] / l1, columns of T_t2v to
e[t] / l2.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..tokens import Tokens
from ._ops import LOG2E, softmax_dot
from .base import Aligner
from .block import BlockContext, global_weights, mask_bias, real_lengths, token_sim_and_e, visual_weights
from .hparams import HParam
from .registry import register_aligner


@register_aligner("tokenflow")
class TokenFlow(Aligner):
    """The paper's plan.

    Args:
        lam: inverse softmax temperature lambda of eq 15-16. The paper gives no value; the
            default 20.0 is the temperature 0.05 used by the OMIT authors' public
            re-implementation of TokenFlow. With L2-normalised CLIP features the exponent
            lam * e * c stays within [-lam, lam].
    """

    hparam_specs = (HParam("lam", float, 20.0, low=0.0, low_open=True,
                           doc="inverse softmax temperature of eq 15-16"),)

    def __init__(self, lam: float = 20.0, chunk: int | None = None) -> None:
        super().__init__(chunk)
        if not lam > 0:
            raise ValueError(f"tokenflow: lam must be > 0, got {lam}")
        self.lam = float(lam)

    def hparams(self) -> dict:
        return {"lam": self.lam}

    def plans(self, c: Tensor, v: Tokens, t: Tokens) -> tuple[Tensor, Tensor]:
        d, e = (w.to(c.dtype) for w in global_weights(v, t))
        bv, bt = mask_bias(v, t, c.dtype)
        l1, l2 = real_lengths(v, t, c.dtype)
        tv = d * torch.softmax(self.lam * e * c + bt, 3) / l1.view(-1, 1, 1, 1)
        tt = e * torch.softmax(self.lam * d * c + bv, 1) / l2.view(1, 1, -1, 1)
        return tv, tt  # d and e are zero at padding, so both plans are too

    def explain_weights(self, vis: Tokens, txt: Tokens) -> tuple[Tensor, Tensor, str]:
        """d and e of eq 14 over the pair's real tokens: the weights this plan's flows carry."""
        v, t, _ = self._single_pair(vis, txt, check=False)
        d, e = global_weights(v, t)
        return (d[0, :, 0, 0][v.mask[0]], e[0, 0, 0, :][t.mask[0]],
                "tokenflow's token weights (eq 14): d = patch . caption's global feature, "
                "e = image's global feature . word")

    def block(self, v: Tokens, t: Tokens, ctx: BlockContext | None = None) -> tuple[Tensor, Tensor]:
        ctx = ctx or BlockContext(v, t)
        c, e = token_sim_and_e(v, t, ctx)
        d = visual_weights(v, t).to(c.dtype)
        bv, bt = mask_bias(v, t, c.dtype)
        l1, l2 = real_lengths(v, t, c.dtype)
        # |lam e_t c_st| <= lam |mu_bar| |omega_t|^2 |mu_s|, and likewise for lam d_s c_st.
        nv, nvbar, nt, ntbar = ctx.norms if ctx.reuse else (math.inf,) * 4
        safe_v2t = ctx.exp2_is_safe(self.lam * LOG2E * nvbar * nt * nt * nv, c.shape[3], c.dtype)
        safe_t2v = ctx.exp2_is_safe(self.lam * LOG2E * ntbar * nv * nv * nt, c.shape[1], c.dtype)
        # Padded tokens have zero features: their c, d, e are 0, so they add nothing below.
        r = softmax_dot(c, self.lam * e, bt if ctx.txt_padded else None, 3, ctx, safe_v2t)  # [n, L1, m]
        v2t = torch.linalg.vecdot(r, d[..., 0], dim=1) / l1
        q = softmax_dot(c, self.lam * d, bv if ctx.vis_padded else None, 1, ctx, safe_t2v)  # [n, m, L2]
        t2v = torch.linalg.vecdot(q, e[:, 0], dim=2) / l2
        return v2t, t2v
