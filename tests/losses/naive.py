"""The losses one query or one pair at a time, written from the equations: the references of
tests/losses and tests/train (import them from here, not from another test module)."""

from __future__ import annotations

import math


def naive_loss(sv, st, scale, yv, yt):
    """Eq 1-5 one query at a time: L_V over rows of s^V, L_T over columns of s^T, averaged."""
    n, m = len(sv), len(sv[0])
    lv = []
    for i in range(n):
        z = sum(math.exp(scale * sv[i][j]) for j in range(m))
        lv.append(-sum(yv[i][j] * math.log(math.exp(scale * sv[i][j]) / z) for j in range(m)))
    n, m = len(st), len(st[0])
    lt = []
    for j in range(m):
        z = sum(math.exp(scale * st[i][j]) for i in range(n))
        lt.append(-sum(yt[i][j] * math.log(math.exp(scale * st[i][j]) / z) for i in range(n)))
    return 0.5 * (sum(lv) / len(lv) + sum(lt) / len(lt))


def naive_sigmoid(s, scale, bias, row_ids, col_ids):
    """-(1/|B|) sum_i sum_j log(1 / (1 + exp(-z_ij (t s_ij + b)))), one pair at a time."""
    total = 0.0
    for i in range(len(s)):
        for j in range(len(s[0])):
            z = 1.0 if row_ids[i] == col_ids[j] else -1.0
            total += math.log(1.0 + math.exp(-z * (scale * s[i][j] + bias)))
    return total / len(s)
