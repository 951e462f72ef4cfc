"""Max-Sum plan (TokenFlow paper, eq 12; TERAN, Messina et al. 2021).

    T_v2t[s, t] = 1 if t = argmax_t' c[s, t'] else 0      (and T_t2v by columns)

so s_v2t = sum_s max_t c[s, t]: Max-Avg without the division by the token count.
"""

from __future__ import annotations

from .max_avg import MaxAvg
from .registry import register_aligner


@register_aligner("max-sum")
class MaxSum(MaxAvg):
    """Best matches summed instead of averaged."""

    average = False
