"""The training loss of one batch: global + fine-grained InfoNCE, with optional distillation.

Each process holds B_local pairs. Its visual items are queries over the text columns
``[all texts of the global batch; queued teacher texts]`` (scored with ``s_v2t``); its texts are
queries over ``[all visual items of the global batch; queued teacher visual items]`` (scored
with ``s_t2v``). Batch columns are the student's own features, gathered with gradients; queue
columns are the teacher's (no gradient), as in ALBEF's retrieval fine-tuning. Targets come from
item ids, so two captions of one item in a batch, or a queued copy, are both positives.

    loss = w_global * InfoNCE(v_bar . t_bar) + w_fine * InfoNCE(s_v2t, s_t2v) + the plan's own terms

(the plan's own terms: the set losses of ``mpa`` and ``dive``; none for token plans.) With
``cs.weight`` / ``cs.token_weight`` the Cauchy-Schwarz divergence between the modalities is added
(CS-Aligner), with unpaired extras in that term only.

With distillation the EMA teacher scores the same rows and columns with its own features, and
``alpha * softmax(logit_scale * s_teacher) + (1 - alpha) * labels`` replaces the labels,
separately for the global and the fine-grained terms (paper appendix B).

With ``loss="sigmoid"`` both terms are SigLIP's pairwise sigmoid loss instead (Zhai et al.,
ICCV 2023; :mod:`tokenflow.losses.sigmoid`), with the model's learnable ``logit_bias``. Under
``torchrun`` the texts (pooled features and tokens) travel around a ring of processes instead of
being all-gathered; only the plan's own terms and the CS term, when on, still gather.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

import torch
from torch import Tensor, nn

from ..align import Aligner
from ..align.base import LossInputs, TrainingLosses
from ..distributed import DistInfo, all_gather_rows, all_gather_tokens, gather_sizes
from ..losses import (FeatureQueue, contrastive_loss, cs_divergence, cs_divergence_tokens, distill_targets,
                      id_targets, ring_sigmoid_losses)
from ..losses.sigmoid import INIT_BIAS, INIT_SCALE
from ..models.base import DualEncoder
from ..models.base import VideoTokens
from ..models.retrieval import RetrievalModel
from ..tokens import Tokens
from .config import CSConfig, LossKind

__all__ = ["Batch", "Objective", "StepOutput", "grad_norm", "initial_logits"]


@dataclass
class Batch:
    """One process's share of a training batch, already on the device."""

    pixels: Tensor  # [B, 3, H, W] or [B, F, 3, H, W]
    frame_mask: Tensor | None  # [B, F] for videos
    ids: Tensor  # [B, L] text token ids
    text_mask: Tensor  # [B, L] bool
    item_ids: Tensor  # [B] int64: which visual item each pair shows (positives share it)
    #: unpaired visual items and captions (CS-Aligner's distribution term only); any may be None
    extra_pixels: Tensor | None = None
    extra_frame_mask: Tensor | None = None
    extra_ids: Tensor | None = None
    extra_text_mask: Tensor | None = None


@dataclass
class StepOutput:
    loss: Tensor
    stats: dict[str, float]
    #: the teacher's gathered features and ids, to enqueue after the backward pass
    enqueue: tuple[Tokens, Tokens, Tensor] | None = None


def _acc(x: Tensor) -> Tensor:
    """Scores accumulate in fp32 at least (bf16 features under autocast), fp64 stays fp64."""
    return x if x.dtype == torch.float64 else x.float()


def _scores(aligner: Aligner | None, vis: Tokens, txt: Tokens, vis_cols: Tokens, txt_cols: Tokens,
            single: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Global and fine scores: rows = local visuals x text columns (v2t); visual columns x
    local texts (t2v). ``single``: one process, so the first B columns are the local batch."""
    g_v2t = _acc(vis.pooled) @ _acc(txt_cols.pooled).T
    g_t2v = _acc(vis_cols.pooled) @ _acc(txt.pooled).T
    if aligner is None:
        return g_v2t, g_t2v, g_v2t, g_t2v
    s = aligner.pairwise(vis, txt_cols, check=False)
    if single:
        b = len(txt)
        f_t2v = s.t2v[:, :b]
        if len(vis_cols) > len(vis):
            f_t2v = torch.cat([f_t2v, aligner.pairwise(vis_cols[len(vis):], txt, check=False).t2v])
    else:
        f_t2v = aligner.pairwise(vis_cols, txt, check=False).t2v
    return g_v2t, g_t2v, _acc(s.v2t), _acc(f_t2v)


def _with_queue(tok: Tokens, queue: FeatureQueue | None) -> Tokens:
    q = None if queue is None else queue.tokens()
    return tok if q is None else Tokens.cat([tok, q.to(tok.device, tok.dtype)])


def initial_logits(kind: LossKind, backbone: DualEncoder, logit_scale: float | None = None,
                   logit_bias: float | None = None) -> tuple[float | None, float | None]:
    """The starting ``(logit scale, logit bias)`` of a loss: the given values where set. InfoNCE:
    no bias, the scale left to :class:`RetrievalModel` (the backbone's own, or 1/0.07). Sigmoid:
    the backbone's own pair when it was trained with this loss (a SigLIP folder), else the
    paper's t = 10, b = -10 (a softmax-trained CLIP's scale does not carry over)."""
    if kind == "infonce":
        return logit_scale, None
    own_bias = getattr(backbone, "initial_logit_bias", None)
    own_scale = getattr(backbone, "initial_logit_scale", None) if own_bias is not None else None
    scale = logit_scale if logit_scale is not None else own_scale if own_scale is not None else INIT_SCALE
    bias = logit_bias if logit_bias is not None else own_bias if own_bias is not None else INIT_BIAS
    return float(scale), float(bias)


class Objective(nn.Module):
    """Wraps a :class:`RetrievalModel` so that DDP sees the whole loss in one ``forward``.

    ``loss``: ``"infonce"`` or ``"sigmoid"`` (the model then needs a ``logit_bias``)."""

    def __init__(self, model: RetrievalModel, video_tokens: VideoTokens = "frames", alpha: float = 0.4,
                 cs: CSConfig | None = None, loss: LossKind = "infonce") -> None:
        super().__init__()
        if loss not in get_args(LossKind):
            raise ValueError(f"loss must be {' or '.join(map(repr, get_args(LossKind)))}, got {loss!r}")
        if loss == "sigmoid" and getattr(model, "logit_bias", None) is None:
            raise ValueError("the sigmoid loss needs a model with a logit_bias (RetrievalModel(logit_bias=...))")
        self.model, self.video_tokens, self.alpha, self.loss = model, video_tokens, alpha, loss
        self.cs = cs if cs is not None and (cs.weight or cs.token_weight) else None

    def _cs_terms(self, batch: Batch, vis: Tokens, txt: Tokens, vis_all: Tokens, txt_all: Tokens
                  ) -> dict[str, tuple[float, Tensor]]:
        """CS-Aligner: D_CS between the visual and text samples of the batch (all processes'
        global features; this process's tokens), plus this process's unpaired extras."""
        cs, m = self.cs, self.model
        ev = et = None
        if batch.extra_pixels is not None:
            ev = m.encode_visual(batch.extra_pixels, batch.extra_frame_mask, self.video_tokens)
        if batch.extra_ids is not None:
            et = m.encode_text(batch.extra_ids, batch.extra_text_mask)
        out = {}
        if cs.weight:
            x = torch.cat([_acc(vis_all.pooled)] + ([_acc(ev.pooled)] if ev is not None else []))
            y = torch.cat([_acc(txt_all.pooled)] + ([_acc(et.pooled)] if et is not None else []))
            out["cs"] = (cs.weight, cs_divergence(x, y, cs.sigma))
        if cs.token_weight:
            vt = Tokens.cat([vis] + ([ev] if ev is not None else []))
            tt = Tokens.cat([txt] + ([et] if et is not None else []))
            out["cs_tokens"] = (cs.token_weight, cs_divergence_tokens(vt, tt, cs.sigma))
        return out

    def _distill_targets(self, batch: Batch, teacher: RetrievalModel, info: DistInfo, sizes: list[int],
                         queues: tuple[FeatureQueue, FeatureQueue] | None, ids_all: Tensor,
                         labels: tuple[Tensor, Tensor], scale: Tensor) -> tuple[dict, tuple]:
        """The EMA teacher's soft targets for the global and fine losses (ALBEF-style
        distillation), and its gathered features to enqueue after the backward pass."""
        labels_v2t, labels_t2v = labels
        qv, qt = queues if queues is not None else (None, None)
        with torch.no_grad():
            tvis = teacher.encode_visual(batch.pixels, batch.frame_mask, self.video_tokens)
            ttxt = teacher.encode_text(batch.ids, batch.text_mask)
            tvis_all = all_gather_tokens(tvis, info, sizes, grad=False)
            ttxt_all = all_gather_tokens(ttxt, info, sizes, grad=False)
            tg_v2t, tg_t2v, tf_v2t, tf_t2v = _scores(teacher.aligner, tvis, ttxt, _with_queue(tvis_all, qv),
                                                     _with_queue(ttxt_all, qt), not info.enabled)
            s = scale.detach()
            targets = {
                "g": (distill_targets(tg_v2t, labels_v2t, s, self.alpha, dim=1),
                      distill_targets(tg_t2v, labels_t2v, s, self.alpha, dim=0)),
                "f": (distill_targets(tf_v2t, labels_v2t, s, self.alpha, dim=1),
                      distill_targets(tf_t2v, labels_t2v, s, self.alpha, dim=0)),
            }
        return targets, (tvis_all, ttxt_all, ids_all)

    def _sigmoid_terms(self, vis: Tokens, txt: Tokens, item_ids: Tensor, info: DistInfo, sizes: list[int]
                       ) -> dict[str, Tensor]:
        """The global and fine sigmoid losses of this process's visual rows against every
        process's texts, the texts passed around the ring (their tokens too for a plan)."""
        m = self.model
        fine = m.aligner is not None and m.w_fine > 0

        def score(chunk: Tokens) -> dict[str, list[Tensor]]:
            out = {"global": [_acc(vis.pooled) @ _acc(chunk.pooled).T]}
            if fine:
                s = m.aligner.pairwise(vis, chunk, check=False)
                out["fine"] = [_acc(s.v2t), _acc(s.t2v)]
            return out

        return ring_sigmoid_losses(score, txt, item_ids, item_ids, m.scale(), m.logit_bias, rank=info.rank,
                                   world=info.world, sizes=sizes, tokens=fine)

    def forward(self, batch: Batch, info: DistInfo = DistInfo(), teacher: RetrievalModel | None = None,
                queues: tuple[FeatureQueue, FeatureQueue] | None = None) -> StepOutput:
        m = self.model
        vis = m.encode_visual(batch.pixels, batch.frame_mask, self.video_tokens)
        txt = m.encode_text(batch.ids, batch.text_mask)
        sizes = gather_sizes(len(batch.item_ids), info, batch.item_ids.device)
        scale, sigmoid = m.scale(), self.loss == "sigmoid"
        if sigmoid and (teacher is not None or queues is not None):
            raise ValueError("the sigmoid loss takes no teacher or queues (distillation's targets are softmaxes)")
        # All-gathered columns: InfoNCE's, and what the plan's own terms and the CS term contrast.
        plan_terms = m.aligner is not None and m.w_fine > 0 and isinstance(m.aligner, TrainingLosses)
        gather = not sigmoid or plan_terms or self.cs is not None
        qv, qt = queues if queues is not None else (None, None)
        if gather:
            ids_all = all_gather_rows(batch.item_ids, info, sizes)
            q_ids = None if qv is None else qv.item_ids()
            col_ids = ids_all if q_ids is None else torch.cat([ids_all, q_ids])
            vis_all, txt_all = all_gather_tokens(vis, info, sizes), all_gather_tokens(txt, info, sizes)
            vis_cols, txt_cols = _with_queue(vis_all, qv), _with_queue(txt_all, qt)
            labels_v2t = id_targets(batch.item_ids, col_ids)  # local pairs x columns; the same ids serve both sides
            labels_t2v = labels_v2t.T

        enqueue = None
        if sigmoid:
            terms = self._sigmoid_terms(vis, txt, batch.item_ids, info, sizes)
            loss_g, loss_f = terms["global"], terms.get("fine")
        else:
            g_v2t, g_t2v, f_v2t, f_t2v = _scores(m.aligner, vis, txt, vis_cols, txt_cols, not info.enabled)
            targets = {"g": (labels_v2t, labels_t2v), "f": (labels_v2t, labels_t2v)}
            if teacher is not None:
                targets, enqueue = self._distill_targets(batch, teacher, info, sizes, queues, ids_all,
                                                         (labels_v2t, labels_t2v), scale)
            loss_g = contrastive_loss(g_v2t, g_t2v, scale, *targets["g"])
            loss_f = None
            if m.aligner is not None and m.w_fine > 0:
                loss_f = contrastive_loss(f_v2t, f_t2v, scale, *targets["f"])

        loss = m.w_global * loss_g
        stats = {"loss_global": float(loss_g.detach())}
        if loss_f is not None:
            loss = loss + m.w_fine * loss_f
            stats["loss_fine"] = float(loss_f.detach())
        if plan_terms:  # method-specific terms (the set losses of mpa/dive), with the hard labels
            extra = m.aligner.training_losses(LossInputs(vis, txt, vis_cols, txt_cols, labels_v2t, labels_t2v, scale))
            for name, (weight, value) in extra.items():
                loss = loss + weight * value
                stats[f"loss_{name}"] = float(value.detach())
        if self.cs is not None:
            for name, (weight, value) in self._cs_terms(batch, vis, txt, vis_all, txt_all).items():
                loss = loss + weight * value
                stats[f"loss_{name}"] = float(value.detach())
        stats["loss"] = float(loss.detach())
        if info.enabled and len(set(sizes)) > 1:
            # Each process averages over its own queries and DDP averages the processes: weight
            # by this process's share so that unequal shares (skipped files) still give the
            # mean over the global batch.
            share = len(batch.item_ids) * info.world / sum(sizes)
            loss = loss * share
            stats = {k: v * share for k, v in stats.items()}
        return StepOutput(loss, stats, enqueue)


def grad_norm(model: nn.Module) -> Tensor:
    """The L2 norm of all gradients together (what ``clip_grad_norm_`` measures), without clipping."""
    norms = [torch.linalg.vector_norm(p.grad.detach().float()) for p in model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())
