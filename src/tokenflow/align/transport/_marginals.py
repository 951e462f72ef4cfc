"""The masses a transport plan moves: the ``marginals`` option of :class:`~tokenflow.align.transport.Transport`.

Each function returns the visual masses ``a`` and the text masses ``b`` of a block of n visual
inputs and m texts, zero at padding, summing to one over the real tokens of each pair, in the
block layout a [n, L1, m, 1] and b [n, 1, m, L2] (or broadcastable to it);
:func:`pair_layout` lays them out per pair for the solvers.

- ``eq14``: the local-to-global weights of Zou, Wu, Cheng and Wang, "TokenFlow: Rethinking
  Fine-grained Cross-modal Alignment in Vision-Language Retrieval", arXiv 2022, eq 14,
  clamped at zero and normalised.
- ``uniform``: 1 / l over real tokens.
- ``l2g``: the local-to-global masses of Pan, Wang, Wu, Zhang, Bu and Chen, "Learning
  Image-Text Matching with Optimal Partial Transport", ICASSP 2025 (OMIT).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...tokens import Tokens
from .._ops import normalise_mass
from ..block import global_weights

__all__ = ["MARGINALS", "eq14_marginals", "l2g_marginals", "pair_layout", "uniform_marginals"]

MARGINALS = ("eq14", "uniform", "l2g")


def eq14_marginals(v: Tokens, t: Tokens, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Eq 14 weights clamped at zero and normalised over real tokens: a [n, L1, m, 1], b [n, 1, m, L2].

    d[s] = mu_s . omega_bar and e[t] = mu_bar . omega_t; a side whose weights are all <= 0 gets
    uniform mass.
    """
    d, e = (w.to(dtype) for w in global_weights(v, t))
    return normalise_mass(d, v.mask[:, :, None, None], dim=1), normalise_mass(e, t.mask[None, None], dim=3)


def uniform_marginals(v: Tokens, t: Tokens, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """1/l1 and 1/l2 over real tokens: a [n, L1, 1, 1], b [1, 1, m, L2] (broadcast over pairs)."""
    vm, tm = v.mask.to(dtype), t.mask.to(dtype)
    return (vm / vm.sum(1, keepdim=True))[:, :, None, None], (tm / tm.sum(1, keepdim=True))[None, None]


def l2g_marginals(v: Tokens, t: Tokens, tau: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """OMIT's local-to-global masses: a [n, L1, m, 1], b [n, 1, m, L2]; ``v``, ``t`` zero-padded.

    a[i, s, j] = softmax over real s of cos(mu_is, mean_t omega_jt) / tau, and b the same with the
    roles swapped.
    """
    vf, tf = v.feats.to(dtype), t.feats.to(dtype)
    v_mean = torch.nn.functional.normalize(vf.sum(1), dim=-1)  # [n, D]: padding is zero
    t_mean = torch.nn.functional.normalize(tf.sum(1), dim=-1)  # [m, D]
    vn, tn = torch.nn.functional.normalize(vf, dim=-1), torch.nn.functional.normalize(tf, dim=-1)
    sa = torch.einsum("isd,jd->isj", vn, t_mean) / tau  # [n, L1, m]
    sb = torch.einsum("jtd,id->ijt", tn, v_mean) / tau  # [n, m, L2]
    sa = sa.masked_fill(~v.mask[:, :, None], float("-inf"))
    sb = sb.masked_fill(~t.mask[None], float("-inf"))
    return sa.softmax(1)[..., None], sb.softmax(2)[:, None]


def pair_layout(a: Tensor, b: Tensor, n: int, l1: int, m: int, l2: int) -> tuple[Tensor, Tensor]:
    """Marginals [n, L1, m, 1] and [n, 1, m, L2] (or broadcastable) as [P, L1] and [P, L2]
    (pair (i, j) at i*m + j)."""
    a = a.expand(n, l1, m, 1)[..., 0].permute(0, 2, 1).reshape(n * m, l1)
    b = b.expand(n, 1, m, l2)[:, 0].reshape(n * m, l2)
    return a, b
