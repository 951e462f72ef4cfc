"""What a shortlist costs: the metrics of two-stage retrieval (global shortlist, then the fused
score) computed from the exhaustive score matrices, beside the exhaustive metrics.

For each query, the ``top`` items (or texts) of highest global similarity ``mu_bar . omega_bar``
form its shortlist, as a flat FAISS index returns them; the shortlist is ranked by the fused score
and everything outside it comes after, in global order. This is exactly what
:class:`tokenflow.index.Searcher` returns over an exact index, so ``evaluate --rerank-top K``
tells, on any benchmark, how many points a shortlist of K costs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .metrics import retrieval_metrics

__all__ = ["two_stage_metrics", "two_stage_scores"]


def two_stage_scores(global_scores: Tensor, fused: Tensor, top: int) -> Tensor:
    """[Q, I] ranking keys of two-stage retrieval, one row per query: the ``top`` items of highest
    ``global_scores`` rank by ``fused`` above every other item, which keep their global order."""
    if global_scores.shape != fused.shape or global_scores.dim() != 2:
        raise ValueError(f"global and fused scores must be the same [queries, items], got "
                         f"{tuple(global_scores.shape)} and {tuple(fused.shape)}")
    if top < 1:
        raise ValueError(f"the shortlist must hold at least one item, got {top}")
    g, f = global_scores.double(), fused.double()
    short = torch.zeros_like(g, dtype=torch.bool)
    short.scatter_(1, g.topk(min(top, g.shape[1]), dim=1).indices, True)
    lift = (f.abs().max() + g.abs().max()) * 2 + 1  # every shortlisted key above every other one
    return torch.where(short, f + lift, g)


def _overlap(keys: Tensor, exhaustive: Tensor, k: int = 10) -> float:
    """Mean share (percent) of the exhaustive top ``k`` that the two-stage top ``k`` keeps."""
    k = min(k, keys.shape[1])
    a, b = keys.topk(k, dim=1).indices, exhaustive.topk(k, dim=1).indices
    same = (a[:, :, None] == b[:, None, :]).any(-1).double().mean()
    return float(same * 100)


def two_stage_metrics(sim_global: Tensor, sim_v2t: Tensor, sim_t2v: Tensor, positives: Tensor, top: int) -> dict:
    """The ``metrics_rerank`` block of a report. All matrices are [N_visual, N_text]:
    ``sim_global`` the plain global similarity, ``sim_v2t``/``sim_t2v`` the fused scores."""
    t2v = two_stage_scores(sim_global.T, sim_t2v.T, top)
    v2t = two_stage_scores(sim_global, sim_v2t, top)
    return {"top": top, "label": f"two-stage, shortlist {top}",
            "t2v": retrieval_metrics(t2v, positives.T), "v2t": retrieval_metrics(v2t, positives),
            "top10_overlap_with_exhaustive": {"t2v": _overlap(t2v, sim_t2v.T.double()),
                                              "v2t": _overlap(v2t, sim_v2t.double())}}
