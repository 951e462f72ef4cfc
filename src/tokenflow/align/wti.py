"""Weighted token-wise interaction, WTI (DRL: Wang et al. 2022, "Disentangled Representation
Learning for Text-Video Retrieval", arXiv:2203.07111; code github.com/foolwood/DRL,
``tvr/models/modeling.py``, ``DRL.wti_interaction``).

For visual item i (tokens mu_s) and text j (tokens omega_t), over real tokens only:

    cos[s, t] = mu_s . omega_t / (|mu_s| |omega_t|)                 cosine token similarities
    a_s = softmax_s f_v(mu_s)        b_t = softmax_t f_t(omega_t)    learned token weights
    s(i, j) = 1/2 [ sum_t b_t max_s cos[s, t]  +  sum_s a_s max_t cos[s, t] ]

Each text token keeps its best visual token and each visual token its best text token (FILIP's
max-sim, :mod:`tokenflow.align.max_avg`), but the maxima are averaged with learned weights
instead of 1/l. ``f_v`` and ``f_t`` are small MLPs on each token's *un-normalised* feature
(``video_weight_fc`` / ``text_weight_fc`` in DRL); the softmax runs over the item's real tokens.
DRL defines one symmetric score (its text-side and video-side sums averaged, the same matrix
transposed for both losses), so ``s_v2t == s_t2v == s``.

As a plan over ``c[s, t] = mu_s . omega_t`` (so that ``plan()`` explains it, ``sum(c * T) = s``):

    T[s, t] = ( a_s [t = argmax_t' cos[s, t']]  +  b_t [s = argmax_s' cos[s', t]] ) / (2 |mu_s| |omega_t|)

What follows the authors' code: the MLP shapes (``wti_arch`` 1, 2, 3: ``layers`` here; DRL's
scripts use 2, Linear(D, D)-ReLU-Linear(D, 1)), the hidden width D, the initialisation (weights
normal with std 0.02, biases zero: DRL's ``init_weights``), weights from the features before
normalisation, softmax with padding at -inf, and the average of the two sums. Differences: the
final Linear(D, 1) has no bias (DRL's adds the same constant to every token's logit, which the
softmax removes: it never gets a gradient nor changes a score); and DRL zeroes padded
similarities (multiplies them by the masks) and then takes the max over all positions, so a
padded token wins whenever every real similarity is negative; here padding is excluded from
every max.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..tokens import Tokens
from .base import Aligner
from .block import BlockContext, mask_bias, token_sim, work_dtype
from .hparams import HParam
from .registry import register_aligner

__all__ = ["WeightedTokenInteraction", "token_weight_mlp"]

#: Depths of the token-weight MLP (DRL's ``wti_arch``).
WEIGHT_LAYERS = (1, 2, 3)
#: Norms are clamped here before dividing (zeroed padding has norm 0), as ``F.normalize`` does.
NORM_EPS = 1e-12


def token_weight_mlp(dim: int, layers: int) -> nn.Sequential:
    """DRL's weight branch: ``layers - 1`` blocks of Linear(D, D)-ReLU, then Linear(D, 1) without
    DRL's final bias; weights normal with std 0.02, biases zero."""
    mods: list[nn.Module] = []
    for _ in range(layers - 1):
        mods += [nn.Linear(dim, dim), nn.ReLU()]
    mods.append(nn.Linear(dim, 1, bias=False))  # a softmax ignores a shared shift: no bias to learn
    for m in mods:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return nn.Sequential(*mods)


def _norms(tok: Tokens, dtype: torch.dtype) -> Tensor:
    """|x| of every token, [N, L], clamped away from zero."""
    return torch.linalg.vector_norm(tok.feats.to(dtype), dim=-1).clamp_min(NORM_EPS)


def _unit(tok: Tokens, dtype: torch.dtype) -> Tokens:
    return Tokens(tok.feats.to(dtype) / _norms(tok, dtype)[..., None], tok.mask, tok.pooled.to(dtype))


def _one_hot_argmax(x: Tensor, dim: int) -> Tensor:
    return torch.zeros_like(x).scatter_(dim, x.argmax(dim, keepdim=True), 1.0)


@register_aligner("wti")
class WeightedTokenInteraction(Aligner):
    """DRL's weighted token-wise interaction: learned token weights over max-sim matches.

    Args:
        dim: embedding size D (set from the backbone by training; required).
        layers: depth of each token-weight MLP, 1, 2 or 3 (DRL's ``wti_arch``; default 2).
    """

    hparam_specs = (HParam("layers", int, 2, choices=WEIGHT_LAYERS, doc="depth of each token-weight MLP "
                           "(DRL's wti_arch)"),)

    def __init__(self, dim: int | None = None, layers: int = 2, chunk: int | None = None) -> None:
        super().__init__(chunk)
        if dim is None:
            raise ValueError("wti: dim (the embedding size) is required; training sets it from the backbone")
        if int(dim) < 1:
            raise ValueError(f"wti: dim must be >= 1, got {dim}")
        if layers not in WEIGHT_LAYERS:
            raise ValueError(f"wti: layers must be one of {', '.join(map(str, WEIGHT_LAYERS))}, got {layers!r}")
        self.dim, self.layers = int(dim), int(layers)
        self.visual_weight = token_weight_mlp(self.dim, self.layers)
        self.text_weight = token_weight_mlp(self.dim, self.layers)

    def hparams(self) -> dict:
        return {"dim": self.dim, "layers": self.layers}

    def token_weights(self, mlp: nn.Sequential, tok: Tokens, dtype: torch.dtype) -> Tensor:
        """softmax over real tokens of the MLP's score of each token, [N, L] in ``dtype``."""
        if tok.dim != self.dim:
            raise ValueError(f"wti: built for D={self.dim}, got features of size {tok.dim}")
        pdtype = mlp[0].weight.dtype
        logits = mlp(tok.feats.to(pdtype)).squeeze(-1).to(dtype)
        return torch.softmax(logits.masked_fill(~tok.mask, float("-inf")), -1)

    def explain_weights(self, vis: Tokens, txt: Tokens) -> tuple[Tensor, Tensor, str]:
        """The learned weights a_s and b_t of one pair's real tokens (each side sums to 1)."""
        v, t, c = self._single_pair(vis, txt, check=False)
        a = self.token_weights(self.visual_weight, v, c.dtype)[0][v.mask[0]]
        b = self.token_weights(self.text_weight, t, c.dtype)[0][t.mask[0]]
        return a, b, "wti's learned token weights (softmax of its weight MLPs over each side's tokens)"

    def plans(self, c: Tensor, v: Tokens, t: Tokens) -> tuple[Tensor, Tensor]:
        a = self.token_weights(self.visual_weight, v, c.dtype)
        b = self.token_weights(self.text_weight, t, c.dtype)
        scale = _norms(v, c.dtype)[:, :, None, None] * _norms(t, c.dtype)[None, None]
        cos = c / scale
        bv, bt = mask_bias(v, t, c.dtype)
        best_t = _one_hot_argmax(cos + bt, 3) * a[:, :, None, None]  # each visual token's best word
        best_s = _one_hot_argmax(cos + bv, 1) * b[None, None]  # each word's best visual token
        tp = (best_t + best_s) / (2 * scale)
        return tp, tp

    def block(self, v: Tokens, t: Tokens, ctx: BlockContext | None = None) -> tuple[Tensor, Tensor]:
        wd = work_dtype(v.dtype)
        ctx = ctx or BlockContext(v, t, needs_grad=torch.is_grad_enabled())
        # The visual side (unit tokens, weights) is computed once per visual block.
        vu, a = ctx.per_visual_block(v, "wti", lambda: (_unit(v, wd), self.token_weights(self.visual_weight, v, wd)))
        b = self.token_weights(self.text_weight, t, wd)
        cos = token_sim(vu, _unit(t, wd), ctx)
        bv, bt = mask_bias(v, t, wd)
        # Padded rows (columns) hold finite maxima over real entries; their weight is zero.
        best_t = torch.add(cos, bt, out=ctx.out("x", cos.shape, wd)).amax(3)  # [n, L1, m]
        v_side = torch.einsum("is,isj->ij", a, best_t)
        best_s = torch.add(cos, bv, out=ctx.out("x", cos.shape, wd)).amax(1)  # [n, m, L2]
        t_side = torch.einsum("jt,ijt->ij", b, best_s)
        s = 0.5 * (v_side + t_side)
        return s, s
