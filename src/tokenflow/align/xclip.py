"""X-CLIP's multi-grained similarity (Ma et al. 2022, "X-CLIP: End-to-End Multi-grained
Contrastive Learning for Video-Text Retrieval", ACM MM 2022, arXiv:2207.07285; code
github.com/xuguohai/X-CLIP, ``modules/modeling_xclip.py``, ``XCLIP._loose_similarity`` and
``XCLIP._attenion_over_fine_grained_sim_matrix``).

Orientation [visual, text]: the visual item's tokens are its frames (patches for an image),
its global feature ``pooled`` is the video (image) feature; the text's tokens are its words,
its ``pooled`` the sentence feature. Every feature is L2-normalised first. With ``tau`` the
temperature (0.01 in X-CLIP) and, for a vector x over the real positions p of one side,

    AOSM(x; W) = sum_p x_p * (softmax(x / tau) W)_p          (attention over a similarity vector)

where W is a learned position-mixing matrix (identity at initialisation, sliced to the
positions present and zeroed at padding), the four cross-grained similarities are

    video-sentence   S_vs = sentence^T G video                                     (G: D x D)
    video-word       S_vw = AOSM_t( omega_t . video ; W_word_logit )
    sentence-frame   S_sf = AOSM_s( sentence . mu_s ; W_frame_logit )
    frame-word       C[s, t] = omega_t^T L mu_s                                     (L: D x D)
                     per_frame[s] = AOSM_t(C[s, :]; W_word)   per_word[t] = AOSM_s(C[:, t]; W_frame)
                     S_fw = ( AOSM_s(per_frame; W_frame2) + AOSM_t(per_word; W_word2) ) / 2

and the score is their average, s = (S_vs + S_vw + S_sf + S_fw) / 4 (the paper's fusion; the
code's ``logit_scale`` is left to the contrastive loss). X-CLIP defines one symmetric score
(its loss uses the matrix and its transpose), so ``s_v2t == s_t2v == s``.

What follows the released code: the AOSM form (softmax / 0.01, then the weighted sum), the eight
learned matrices G, L (``global_mat_weight``, ``local_mat_weight``) and W (``word_logit_weight``,
``frame_logit_weight``, ``word_mat_weight``, ``frame_mat_weight``, ``word_mat_weight2``,
``frame_mat_weight2``), all initialised to the identity, which the paper does not mention; the
position matrices are sized by ``max_visual`` / ``max_text`` as X-CLIP sizes them by its
``max_frames`` / ``max_words``. Differences: the released code masks no padding anywhere (its
softmaxes run over padded words and frames, and the frame-word function receives no mask at
all); here every softmax excludes padding and every pooled weight is zero there, so padding
never changes a score. The released code reads the video feature as the mean of the
(temporally encoded) frame features; here it is the ``pooled`` feature the backbone gives
(for videos, the mean of the frame features). Positions matter through W: padding appended at
the end leaves scores unchanged, padding moved in front of real tokens does not.

The score is not a weighted sum of the token similarities ``c`` (S_vs uses the global
features, and L and the normalisation sit inside C), so this method has no plan to explain.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..tokens import Tokens
from .base import Aligner
from .block import BlockContext, work_dtype
from .hparams import HParam
from .results import Plan
from .registry import register_aligner

__all__ = ["XClip", "attention_pool"]

#: Norms are clamped here before dividing (zeroed padding has norm 0), as ``F.normalize`` does.
NORM_EPS = 1e-12
#: The learned position-mixing matrices and the side (visual / text) each mixes.
MIXERS = {"word_logit_weight": "text", "frame_logit_weight": "visual", "word_mat_weight": "text",
          "frame_mat_weight": "visual", "word_mat_weight2": "text", "frame_mat_weight2": "visual"}


def _unit(x: Tensor, dtype: torch.dtype) -> Tensor:
    x = x.to(dtype)
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(NORM_EPS)


def attention_pool(x: Tensor, keep: Tensor, mix: Tensor, dim: int, tau: float) -> Tensor:
    """AOSM along ``dim``: softmax of x / tau over the real positions (``keep``, broadcastable to
    x), mixed across positions by ``mix`` [L, L], zeroed at padding; returns sum(x * weights)."""
    w = torch.softmax((x / tau).masked_fill(~keep, float("-inf")), dim)
    w = torch.movedim(torch.movedim(w, dim, -1) @ mix.to(w.dtype), -1, dim)
    return (x * w.masked_fill(~keep, 0.0)).sum(dim)


@register_aligner("xclip")
class XClip(Aligner):
    """X-CLIP's average of video-sentence, video-word, sentence-frame and frame-word similarities.

    Args:
        dim: embedding size D (set from the backbone by training; required for G and L).
        max_visual: most visual tokens (frames / patches) supported (default 256).
        max_text: most text tokens supported (default 77, CLIP's context length).
        temperature: tau of every attention-over-similarity softmax (default 0.01, as X-CLIP).
    """

    #: The score is not sum(c * T): there is no token plan to explain.
    token_plan: ClassVar[bool] = False

    hparam_specs = (
        HParam("max_visual", int, 256, low=1, doc="most visual tokens (frames or patches)"),
        HParam("max_text", int, 77, low=1, doc="most text tokens"),
        HParam("temperature", float, 0.01, low=0.0, low_open=True, doc="tau of every attention over similarities"),
    )

    def __init__(self, dim: int | None = None, max_visual: int = 256, max_text: int = 77,
                 temperature: float = 0.01, chunk: int | None = None) -> None:
        super().__init__(chunk)
        if dim is None:
            raise ValueError("xclip: dim (the embedding size) is required; training sets it from the backbone")
        for name, value in (("dim", dim), ("max_visual", max_visual), ("max_text", max_text)):
            if int(value) < 1:
                raise ValueError(f"xclip: {name} must be >= 1, got {value}")
        if not temperature > 0:
            raise ValueError(f"xclip: temperature must be > 0, got {temperature}")
        self.dim, self.max_visual, self.max_text = int(dim), int(max_visual), int(max_text)
        self.temperature = float(temperature)
        self.global_mat_weight = nn.Parameter(torch.eye(self.dim))
        self.local_mat_weight = nn.Parameter(torch.eye(self.dim))
        for name, side in MIXERS.items():
            size = self.max_visual if side == "visual" else self.max_text
            self.register_parameter(name, nn.Parameter(torch.eye(size)))

    def hparams(self) -> dict:
        return {"dim": self.dim, "max_visual": self.max_visual, "max_text": self.max_text,
                "temperature": self.temperature}

    def _check_block(self, v: Tokens, t: Tokens) -> None:
        if v.dim != self.dim:
            raise ValueError(f"xclip: built for D={self.dim}, got features of size {v.dim}")
        l1, l2 = v.feats.shape[1], t.feats.shape[1]
        if l1 > self.max_visual or l2 > self.max_text:
            raise InputError(f"xclip supports at most {self.max_visual} visual and {self.max_text} text tokens, "
                             f"got {l1} and {l2}; raise max_visual / max_text")

    def _mixer(self, name: str, length: int) -> Tensor:
        return getattr(self, name)[:length, :length]

    def block(self, v: Tokens, t: Tokens, ctx: BlockContext | None = None) -> tuple[Tensor, Tensor]:
        self._check_block(v, t)
        wd, tau = work_dtype(v.dtype), self.temperature
        (n, l1, dim), (m, l2, _) = v.feats.shape, t.feats.shape
        frames, words = _unit(v.feats, wd), _unit(t.feats, wd)  # [n, L1, D], [m, L2, D]
        video, sentence = _unit(v.pooled, wd), _unit(t.pooled, wd)  # [n, D], [m, D]
        vkeep, tkeep = v.mask, t.mask
        s_vs = video @ self.global_mat_weight.to(wd).T @ sentence.T  # sentence^T G video, [n, m]
        s_vw = attention_pool(torch.einsum("id,jtd->ijt", video, words), tkeep[None],
                              self._mixer("word_logit_weight", l2), 2, tau)
        s_sf = attention_pool(torch.einsum("isd,jd->ijs", frames, sentence), vkeep[:, None],
                              self._mixer("frame_logit_weight", l1), 2, tau)
        # C[i, s, j, t] = omega_jt^T L mu_is, one matrix multiply in the block layout.
        local = frames.reshape(n * l1, dim) @ self.local_mat_weight.to(wd).T
        fine = (local @ words.reshape(m * l2, dim).T).view(n, l1, m, l2)
        # Attention over words for each frame [n, L1, m], over frames for each word [n, m, L2].
        per_frame = attention_pool(fine, tkeep[None, None], self._mixer("word_mat_weight", l2), 3, tau)
        per_word = attention_pool(fine, vkeep[:, :, None, None], self._mixer("frame_mat_weight", l1), 1, tau)
        s_sent2frame = attention_pool(per_frame, vkeep[:, :, None], self._mixer("frame_mat_weight2", l1), 1, tau)
        s_video2word = attention_pool(per_word, tkeep[None], self._mixer("word_mat_weight2", l2), 2, tau)
        s = (s_vs + s_vw + s_sf + 0.5 * (s_sent2frame + s_video2word)) / 4
        return s, s

    def plans(self, c: Tensor, v: Tokens, t: Tokens) -> tuple[Tensor, Tensor]:
        raise ValueError("xclip: the multi-grained score is not a weighted sum of token similarities; "
                         "it has no plan to explain")

    def plan(self, vis: Tokens, txt: Tokens, *, check: bool = True) -> Plan:
        if len(vis) != 1 or len(txt) != 1:
            raise ValueError(f"plan() explains one pair: got {len(vis)} visual and {len(txt)} text items")
        raise ValueError("xclip: the multi-grained score is not a weighted sum of token similarities; "
                         "it has no plan to explain")
