"""EMD plan (TokenFlow paper, section 3.3.1, eq 13-14; DeepEMD, Zhang et al. 2020).

    T = argmin_T sum_{s,t} (1 - c[s, t]) T[s, t]
        s.t. T >= 0, sum_t T[s, t] = a[s], sum_s T[s, t] = b[t]
    a = normalise(max(d, 0)), b = normalise(max(e, 0)), d[s] = mu_s . omega_bar, e[t] = mu_bar . omega_t

used for both directions (T_v2t = T_t2v = T). The plan is exact: POT's network simplex
(``ot.emd``) on the real tokens of each pair, in float64. It is held constant in the backward
pass, so gradients flow through ``c`` only. A side whose weights are all <= 0 gets uniform mass.
There is no batched exact solver to call, so pairs are solved one by one (see ``_ot``).
"""

from __future__ import annotations

import numpy as np
import ot
from torch import Tensor

from ._ops import normalise_mass
from ._ot import per_pair_plans
from ..tokens import Tokens
from .base import Aligner
from .block import global_weights
from .registry import register_aligner


def _emd(cost: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # Shifting the cost by a constant leaves the plan unchanged (the total mass is fixed) and
    # keeps it non-negative: POT's network simplex reports some problems with large negative
    # costs (1 - c for features that are not unit-norm) as infeasible.
    plan, log = ot.emd(a, b, cost - cost.min(), numItermax=1_000_000, log=True)
    if log["warning"] is not None:  # never return a non-optimal plan silently
        raise RuntimeError(f"exact OT solver failed on a {cost.shape} problem: {log['warning']}")
    return plan


def transport_marginals(v: Tokens, t: Tokens, dtype) -> tuple[Tensor, Tensor]:
    """Eq 14 weights clamped at zero and normalised over real tokens: a [n, L1, m, 1], b [n, 1, m, L2]."""
    d, e = (w.to(dtype) for w in global_weights(v, t))
    a = normalise_mass(d, v.mask[:, :, None, None], dim=1)
    b = normalise_mass(e, t.mask[None, None], dim=3)
    return a, b


@register_aligner("emd")
class EMD(Aligner):
    """Exact optimal transport between token sets; no hyperparameters."""

    def plans(self, c: Tensor, v: Tokens, t: Tokens) -> tuple[Tensor, Tensor]:
        a, b = transport_marginals(v, t, c.dtype)
        plan = per_pair_plans(1.0 - c, a, b, v, t, _emd)
        return plan, plan
