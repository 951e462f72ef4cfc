"""Losses of set-based retrieval: the Global Discriminative Loss and the Intra-Set Divergence Loss
of Maximal Pair Assignment retrieval (the paper cited as [MPA] in :mod:`tokenflow.align.transport`).

Each item is a set of K unit embeddings. The paper names two extra losses without public code;
the formulas here are ours, written to do what the paper says each loss is for:

Global Discriminative Loss
    Every element of a set must identify its own item by itself, not only through the set
    similarity (where an unassigned element gets no gradient: the sparse-supervision problem).
    Element k of visual set i is a query over the global features of the text columns, element
    k of text set j a query over the global features of the visual columns, with the same
    logit scale and targets as the main loss; the symmetric InfoNCE is averaged over k:

        L_gd = 1/K sum_k InfoNCE(v_i^k . t_bar_j, v_bar_i . t_j^k)

Intra-Set Divergence Loss
    The K elements of one set must not collapse onto one point. Similarities above a margin
    between distinct elements of a set are penalised, averaged over the K (K - 1) ordered
    pairs and over the sets:

        L_isd = mean_sets mean_{k != l} max(0, e_k . e_l - margin)

    A margin above zero lets the elements share the item's global direction (they start from it)
    while keeping them apart.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .infonce import contrastive_loss

__all__ = ["global_discriminative_loss", "intra_set_divergence"]


def global_discriminative_loss(vis_sets: Tensor, txt_sets: Tensor, vis_cols: Tensor, txt_cols: Tensor,
                               logit_scale: Tensor | float, targets_v2t: Tensor | None = None,
                               targets_t2v: Tensor | None = None) -> Tensor:
    """L_gd for n visual sets [n, K, D] and m text sets [m, K, D].

    ``vis_cols`` [N, D] and ``txt_cols`` [M, D] are the global features the elements are
    contrasted with (the batch, gathered over processes, plus any queue); targets as in
    :func:`~tokenflow.losses.contrastive_loss` ([n, M] and [N, m]; ``None``: the identity).
    """
    if vis_sets.shape[1] != txt_sets.shape[1]:
        raise ValueError(f"set sizes differ: visual K={vis_sets.shape[1]}, text K={txt_sets.shape[1]}")
    k = vis_sets.shape[1]
    total = vis_sets.new_zeros((), dtype=torch.float32 if vis_sets.dtype != torch.float64 else torch.float64)
    for i in range(k):
        s_v2t = vis_sets[:, i] @ txt_cols.T
        s_t2v = vis_cols @ txt_sets[:, i].T
        total = total + contrastive_loss(s_v2t.to(total.dtype), s_t2v.to(total.dtype), logit_scale,
                                         targets_v2t, targets_t2v)
    return total / k


def intra_set_divergence(sets: Tensor, margin: float = 0.5) -> Tensor:
    """L_isd for sets [n, K, D] of unit embeddings (0 for K = 1)."""
    n, k, _ = sets.shape
    if k < 2:
        return sets.new_zeros(())
    sim = sets @ sets.transpose(1, 2)  # [n, K, K]
    off = ~torch.eye(k, dtype=torch.bool, device=sets.device)
    return (sim[:, off] - margin).clamp_min(0).mean()
