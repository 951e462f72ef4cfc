"""The base class of every plan, and the protocol of methods that bring their own training losses.

A visual input i and a text j each bring token features, a mask of real tokens and a global
feature (:class:`~tokenflow.tokens.Tokens`). Their token-wise similarity is
``c[s, t] = mu_s . omega_t`` (eq 7 of the TokenFlow paper, section 3.2). A *plan* is a pair of
weight matrices ``T_v2t`` and ``T_t2v`` over the real tokens (eq 8-9), and the two fine-grained
scores are

    s_v2t = sum_{s,t} c[s, t] * T_v2t[s, t]        s_t2v = sum_{s,t} c[s, t] * T_t2v[s, t]

Orientation is always [visual, text]: score matrices are [N_visual, N_text]. ``s_v2t`` ranks the
texts of a visual query (a row), ``s_t2v`` ranks the visual items of a text query (a column).
The block layout and shared kernels live in :mod:`tokenflow.align.block`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ..tokens import Tokens
from .block import DEFAULT_BLOCK_ELEMENTS, BlockContext, global_weights, token_sim, work_dtype
from .results import Plan, Scores

__all__ = ["Aligner", "BlockContext", "LossInputs", "Plan", "Scores", "Tokens", "TrainingLosses"]


@dataclass(frozen=True)
class LossInputs:
    """What a method's own training losses see of a batch.

    Attributes:
        vis, txt: this process's visual items and texts.
        vis_cols, txt_cols: the contrasted columns (gathered over processes; their global
            features are used).
        targets_v2t, targets_t2v: the targets of the main contrastive loss.
        logit_scale: the main loss's temperature (1 / tau).
    """

    vis: Tokens
    txt: Tokens
    vis_cols: Tokens
    txt_cols: Tokens
    targets_v2t: Tensor
    targets_t2v: Tensor
    logit_scale: Tensor


@runtime_checkable
class TrainingLosses(Protocol):
    """An aligner with losses of its own (the set methods): training adds each weighted term to
    the contrastive loss. Token plans do not implement it."""

    def training_losses(self, batch: LossInputs) -> dict[str, tuple[float, Tensor]]:
        """name -> (weight, value) for a training batch."""
        ...


class Aligner(nn.Module):
    """Base class of a plan. Subclasses implement :meth:`plans` and may override :meth:`block`.

    ``plans`` returns T_v2t and T_t2v for a block in the [n, L1, m, L2] layout, zero at padding;
    it is the definition, used by :meth:`plan` and by the default :meth:`block`. ``block``
    returns the two [n, m] score matrices of a block and may take a faster route; tests check
    that it equals ``sum(c * T)``.
    """

    name: ClassVar[str] = ""
    #: Whether gradients reach the features through the scores.
    differentiable: ClassVar[bool] = True
    #: Whether :meth:`plan` weighs the items' own token pairs (False for set methods).
    token_plan: ClassVar[bool] = True

    def __init__(self, chunk: int | None = None) -> None:
        super().__init__()
        if chunk is not None and chunk < 1:
            raise ValueError(f"chunk must be a positive number of pairs, got {chunk}")
        self.chunk = chunk

    # -- to implement ----------------------------------------------------------------------------
    def plans(self, c: Tensor, v: Tokens, t: Tokens) -> tuple[Tensor, Tensor]:
        """T_v2t, T_t2v as [n, L1, m, L2] for a block; ``c`` from :func:`token_sim` in the
        working dtype; ``v`` and ``t`` have zeroed padding."""
        raise NotImplementedError

    def block(self, v: Tokens, t: Tokens, ctx: BlockContext | None = None) -> tuple[Tensor, Tensor]:
        """Scores v2t, t2v as [n, m] for a block of padding-zeroed tokens (default: sum(c * T)).
        ``ctx`` is shared by the blocks of one call; ``None`` treats the block on its own."""
        return self.block_from_plans(v, t)

    def block_from_plans(self, v: Tokens, t: Tokens) -> tuple[Tensor, Tensor]:
        """sum(c * T) over each pair, straight from :meth:`plans`."""
        c = token_sim(v, t)
        tv, tt = self.plans(c, v, t)
        return (c * tv).sum((1, 3)), (c * tt).sum((1, 3))

    def block_elements(self) -> int:
        """Token-pair elements per block when no ``chunk`` is given."""
        return DEFAULT_BLOCK_ELEMENTS

    # -- public API ------------------------------------------------------------------------------
    def pairwise(self, vis: Tokens, txt: Tokens, *, chunk: int | None = None, check: bool = True) -> Scores:
        """Fine-grained scores of all N x M pairs (eq 8-9), padding excluded.

        Args:
            vis: N visual items. txt: M texts.
            chunk: most (visual, text) pairs scored at once; default: the aligner's ``chunk``,
                else a block of about 2**21 token pairs. Memory beyond the [N, M] result is
                bounded by the block, whatever N and M (with autograd on, each block keeps its
                own intermediates for the backward pass).
            check: validate values (NaN/Inf, empty rows); costs one device sync.

        Returns:
            :class:`Scores` with ``v2t`` and ``t2v`` of shape [N, M], float32 for bf16/fp16
            inputs, else the input dtype.
        """
        self._check_pair(vis, txt, check)
        params_need_grad = any(p.requires_grad for p in self.parameters())
        ctx = BlockContext(vis, txt, needs_grad=None if not params_need_grad else torch.is_grad_enabled())
        nb, mb = self._block_shape(len(vis), len(txt), vis.feats.shape[1], txt.feats.shape[1], chunk)
        out_v2t = out_t2v = None  # without autograd, blocks are written straight into the result
        rows_v2t, rows_t2v = [], []
        for i0 in range(0, len(vis), nb):
            # Padding is zeroed block by block: no copy of a whole collection is ever made.
            vb = vis[i0 : i0 + nb].zero_padding()
            cols = []
            for j0 in range(0, len(txt), mb):
                sv, st = self.block(vb, txt[j0 : j0 + mb].zero_padding(), ctx)
                if not ctx.reuse:
                    cols.append((sv, st))
                    continue
                if out_v2t is None:
                    out_v2t = sv.new_empty(len(vis), len(txt))
                    out_t2v = st.new_empty(len(vis), len(txt))
                out_v2t[i0 : i0 + len(vb), j0 : j0 + sv.shape[1]] = sv
                out_t2v[i0 : i0 + len(vb), j0 : j0 + st.shape[1]] = st
            if cols:
                rows_v2t.append(torch.cat([b[0] for b in cols], 1))
                rows_t2v.append(torch.cat([b[1] for b in cols], 1))
        if out_v2t is not None:
            return self.finish_scores(Scores(out_v2t, out_t2v), ctx)
        return self.finish_scores(Scores(torch.cat(rows_v2t, 0), torch.cat(rows_t2v, 0)), ctx)

    def finish_scores(self, scores: Scores, ctx: BlockContext) -> Scores:
        """Hook after the blocks of a ``pairwise`` call (transport plans add their marginal error)."""
        return scores

    def forward(self, vis: Tokens, txt: Tokens, *, chunk: int | None = None, check: bool = True) -> Scores:
        """``aligner(vis, txt)`` is :meth:`pairwise`."""
        return self.pairwise(vis, txt, chunk=chunk, check=check)

    def plan(self, vis: Tokens, txt: Tokens, *, check: bool = True) -> Plan:
        """The plan of one pair (``vis[i]``, ``txt[j]``), restricted to real tokens."""
        v, t, c = self._single_pair(vis, txt, check)
        tv, tt = self.plans(c, v, t)
        return self._plan_of(v, t, c, tv[0, :, 0, :], tt[0, :, 0, :])

    def explain_weights(self, vis: Tokens, txt: Tokens) -> tuple[Tensor, Tensor, str] | None:
        """This plan's own token weights for one pair, for drawing an explanation: visual [l1] and
        text [l2] over real tokens, and a line saying what they are. None (the default) when the
        plan weighs no token on its own; explanations then show something else and say so."""
        return None

    def _single_pair(self, vis: Tokens, txt: Tokens, check: bool) -> tuple[Tokens, Tokens, Tensor]:
        """The checked, padding-zeroed tokens of one pair and their similarities c [1, L1, 1, L2]."""
        if len(vis) != 1 or len(txt) != 1:
            raise ValueError(f"plan() explains one pair: got {len(vis)} visual and {len(txt)} text items")
        self._check_pair(vis, txt, check)
        v, t = vis.zero_padding(), txt.zero_padding()
        return v, t, token_sim(v, t)

    def _plan_of(self, v: Tokens, t: Tokens, c: Tensor, tv: Tensor, tt: Tensor, **extra) -> Plan:
        """The :class:`Plan` of one pair from its [L1, L2] weights, cut to the real tokens."""
        wd = work_dtype(v.dtype)
        d, e = global_weights(v, t)
        sv, st = v.mask[0], t.mask[0]
        real = lambda x: x[sv][:, st]
        return Plan(c=real(c[0, :, 0, :]), v2t=real(tv), t2v=real(tt), d=d[0, :, 0, 0][sv].to(wd),
                    e=e[0, 0, 0, :][st].to(wd), **extra)

    # -- helpers ---------------------------------------------------------------------------------
    def _check_pair(self, vis: Tokens, txt: Tokens, check: bool) -> None:
        if not isinstance(vis, Tokens) or not isinstance(txt, Tokens):
            raise TypeError(f"expected two Tokens, got {type(vis).__name__} and {type(txt).__name__}")
        if vis.dim != txt.dim:
            raise ValueError(f"feature sizes differ between modalities: visual D={vis.dim}, text D={txt.dim}")
        if vis.dtype != txt.dtype:
            raise ValueError(f"dtypes differ between modalities: visual {vis.dtype}, text {txt.dtype}")
        if vis.device != txt.device:
            raise ValueError(f"devices differ between modalities: visual {vis.device}, text {txt.device}")
        if len(vis) == 0 or len(txt) == 0:
            raise ValueError(f"nothing to score: {len(vis)} visual and {len(txt)} text items")
        if check:
            vis.check_values("visual tokens")
            txt.check_values("text tokens")

    def _block_shape(self, n: int, m: int, l1: int, l2: int, chunk: int | None) -> tuple[int, int]:
        pairs = chunk or self.chunk or max(1, self.block_elements() // (l1 * l2))
        # Roughly square blocks keep both sides of the matrix multiply wide.
        nb = min(n, max(1, math.isqrt(pairs)))
        mb = min(m, max(1, pairs // nb))
        nb = min(n, max(1, pairs // mb))
        return nb, mb

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.hparams().items())

    def hparams(self) -> dict:
        """The hyperparameters this aligner was built with (for reports and configs)."""
        return {}
