"""Retrieval metrics: recall at K, median and mean rank.

Every query ranks all items by score. The rank of a query is the 1-based position of its
best-ranked positive item. Ties are resolved against the query: a negative item whose score
equals the best positive's score is counted as ranked above it, so a constant score matrix
gets the worst rank, never a perfect one.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["RECALL_KS", "ranks", "retrieval_metrics"]

RECALL_KS = (1, 5, 10, 50)


def ranks(sim: Tensor, positives: Tensor | None = None, *, chunk: int = 1024) -> Tensor:
    """1-based rank of the best-ranked positive item of every query (pessimistic on ties).

    Args:
        sim: [Q, I] scores, higher is better; one row per query.
        positives: optional bool [Q, I], True where item i is a correct answer for query q.
            Default: the diagonal (query q matches item q; needs Q <= I).
        chunk: queries processed at once (memory O(chunk * I)).

    Returns:
        int64 [Q]: ``1 + #{negative items scored >= the best positive}``.
    """
    if not isinstance(sim, Tensor) or sim.dim() != 2:
        raise ValueError(f"sim must be a [queries, items] tensor, got {getattr(sim, 'shape', type(sim))}")
    q, n = sim.shape
    if q == 0 or n == 0:
        raise ValueError(f"sim must have at least one query and one item, got shape {tuple(sim.shape)}")
    if positives is None:
        if q > n:
            raise ValueError("default positives are the diagonal, which needs queries <= items; "
                             f"got {tuple(sim.shape)}")
        positives = torch.zeros(q, n, dtype=torch.bool, device=sim.device)
        positives[torch.arange(q), torch.arange(q)] = True
    if not isinstance(positives, Tensor) or positives.dtype != torch.bool or positives.shape != sim.shape:
        raise ValueError(
            f"positives must be a bool tensor of shape {tuple(sim.shape)}, got "
            f"{getattr(positives, 'dtype', type(positives))} {tuple(getattr(positives, 'shape', ()))}"
        )
    positives = positives.to(sim.device)
    no_pos = ~positives.any(dim=1)
    if no_pos.any():
        bad = no_pos.nonzero().flatten()[:5].tolist()
        raise ValueError(f"every query needs at least one positive item; queries {bad} have none")
    if torch.isnan(sim).any():
        raise ValueError("sim contains NaN scores; ranks would be undefined")
    out = torch.empty(q, dtype=torch.long)
    for a in range(0, q, chunk):
        s = sim[a : a + chunk]
        p = positives[a : a + chunk]
        best = s.masked_fill(~p, float("-inf")).amax(dim=1, keepdim=True)
        above = ((s >= best) & ~p).sum(dim=1)
        out[a : a + chunk] = (above + 1).cpu()
    return out


def retrieval_metrics(sim: Tensor, positives: Tensor | None = None) -> dict[str, float]:
    """Recall@{1,5,10,50} (percent), median rank ``MdR`` and mean rank ``MnR``.

    Args:
        sim: [queries, items] scores (text->visual: one row per caption; visual->text: one
            row per visual item).
        positives: optional bool [queries, items]; default the diagonal.
    """
    r = ranks(sim, positives).double()
    out = {f"R@{k}": float((r <= k).double().mean() * 100) for k in RECALL_KS}
    # Median as in CLIP4Clip (np.median: mean of the two middle ranks when Q is even).
    out["MdR"] = float(r.quantile(0.5))
    out["MnR"] = float(r.mean())
    return out
