"""Symmetric InfoNCE over visual x text score matrices (paper eq 1-5).

Scores are laid out visual x text everywhere. The visual->text side (eq 1-2) reads *rows* of
``s^V``: each visual item is a query over the text columns. The text->visual side (eq 3-4)
reads *columns* of ``s^T``: each text is a query over the visual rows. ``s^V`` and ``s^T`` may
differ (a fine-grained plan gives a different score per direction), and the two matrices need
not be square: under data parallelism each process scores its own rows (or columns) against
everything gathered from the other processes, plus any queued features.

Targets are distributions, not indices, so that several texts of one item in a batch are all
positives (labels built from item ids) and momentum distillation can mix soft targets in.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["contrastive_loss", "id_targets", "soft_cross_entropy"]


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over rows of ``H(targets_row, softmax(logits_row))`` = ``-sum(t * log_softmax(l))``."""
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
    logp = torch.log_softmax(logits if logits.dtype == torch.float64 else logits.float(), dim=-1)
    return -(targets.to(logp.dtype) * logp).sum(-1).mean()


def id_targets(row_ids: Tensor, col_ids: Tensor) -> Tensor:
    """[R, C] targets: uniform over the columns whose item id equals the row's (the positives).

    Every row needs at least one positive column (its own pair is always among the columns).
    """
    pos = (row_ids.reshape(-1, 1) == col_ids.reshape(1, -1)).float()
    n = pos.sum(1, keepdim=True)
    if bool((n == 0).any()):
        raise ValueError("a query has no positive column: its own pair must be among the columns")
    return pos / n


def contrastive_loss(s_v2t: Tensor, s_t2v: Tensor, logit_scale: Tensor | float,
                     targets_v2t: Tensor | None = None, targets_t2v: Tensor | None = None) -> Tensor:
    """``L = (L_V + L_T) / 2`` with ``logit_scale`` multiplying every score.

    ``s_v2t`` [n, M]: rows are visual queries over M texts. ``s_t2v`` [N, m]: columns are text
    queries over N visual items. Targets have the same shapes (rows of ``targets_v2t`` and
    columns of ``targets_t2v`` sum to one); ``None`` means the pair of query k is column (row)
    k, i.e. the identity of CLIP's in-batch loss.
    """
    if targets_v2t is None:
        targets_v2t = torch.eye(*s_v2t.shape, device=s_v2t.device)
    if targets_t2v is None:
        targets_t2v = torch.eye(*s_t2v.shape, device=s_t2v.device)
    loss_v = soft_cross_entropy(logit_scale * s_v2t, targets_v2t)
    loss_t = soft_cross_entropy((logit_scale * s_t2v).T, targets_t2v.T)
    return (loss_v + loss_t) / 2
