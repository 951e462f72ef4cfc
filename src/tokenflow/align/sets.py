"""Set-based retrieval: every item is a set of K embeddings (Maximal Pair Assignment Similarity,
the paper cited as [MPA] in :mod:`tokenflow.align.transport`; DivE as the baseline).

A :class:`SetHead` per modality turns an item's tokens into K unit embeddings: K learned
queries attend over the item's real (LayerNorm-ed) tokens with one multi-head cross-attention;
each slot (query + attention output, a decoder's residual), projected, is added to the item's
global feature and L2-normalised. The projection starts small, so at initialisation every element lies close to
the normalised global feature (a pretrained CLIP starts near its own global similarity) while
the elements already differ (identical elements would be a fixed point of the divergence loss).

Two similarities between a visual set A and a text set B (a_k . b_l are cosines):

``mpa``: Maximal Pair Assignment Similarity
    A one-to-one assignment between the K x K pairs: the entropic plan with uniform marginals
    1/K and cost -a.b (the ``assignment`` plan applied to the sets, log-domain Sinkhorn),
    which tends to a permutation matrix / K as ``eps`` shrinks; the score is sum(plan * sim),
    i.e. the mean similarity of the assigned pairs. ``exact=True`` solves the assignment by
    the Hungarian method (plan held constant for the gradient), e.g. for evaluation.

``dive``: DivE's smooth-Chamfer similarity (Kim et al. 2023)
    s(A, B) = 1/(2 alpha K) [sum_k log sum_l exp(alpha a_k.b_l) + sum_l log sum_k exp(alpha a_k.b_l)]
    a soft version of the mean best match in both directions (Chamfer as alpha grows).

Both use the same head and the same training losses (``gd_weight`` for the Global
Discriminative Loss, ``isd_weight`` and ``isd_margin`` for the Intra-Set Divergence Loss; see
:mod:`tokenflow.losses.set_losses`), so the two similarities compare on equal terms. Scores
are the same in both directions (``v2t == t2v``). Plans here are over set elements, not
tokens, so token-level explanations (``tokenflow explain``) do not apply.
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .transport import Assignment
from ..errors import HParamError
from ..losses.set_losses import global_discriminative_loss, intra_set_divergence
from ..tokens import Tokens
from .base import Aligner, LossInputs
from .block import work_dtype
from .hparams import HParam
from .results import Plan, Scores
from .registry import register_aligner

__all__ = ["DivE", "MaximalPairAssignment", "SetAligner", "SetHead"]

#: Tokens whose sets are computed at once when scoring a collection: the head's intermediates
#: (LayerNorm, keys, values: a few [items, L, D] tensors) stay bounded whatever N is. What grows
#: with the collections is the sets themselves, N x K x D and M x K x D (K/L of the tokens).
SET_CHUNK_TOKENS = 2**13


class SetHead(nn.Module):
    """Tokens [N, L, D] (+ global [N, D]) -> K unit embeddings per item, as ``Tokens`` [N, K, D].

    The output's ``mask`` is all True and its ``pooled`` is the input's global feature.
    """

    def __init__(self, dim: int, k: int, heads: int) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(k, dim))  # at the scale of the LayerNorm-ed tokens
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.proj = nn.Linear(dim, dim)
        # Small but not zero: identical elements are a stationary point of the divergence loss
        # (the gradient of a cosine vanishes at 1), so the set must start spread a little.
        nn.init.normal_(self.proj.weight, std=0.3 / dim)
        nn.init.zeros_(self.proj.bias)

    def forward(self, tok: Tokens) -> Tokens:
        tok = tok.zero_padding()
        n, k = len(tok), self.queries.shape[0]
        dtype = self.queries.dtype
        feats, pooled = tok.feats.to(dtype), tok.pooled.to(dtype)
        q = self.queries[None].expand(n, k, -1)
        kv = self.norm(feats)
        out, _ = self.attn(q, kv, kv, key_padding_mask=~tok.mask, need_weights=False)
        slots = q + out  # a decoder's residual: each slot keeps its query
        elems = F.normalize(pooled[:, None] + self.proj(slots), dim=-1)
        return Tokens(elems.to(tok.dtype), torch.ones(n, k, dtype=torch.bool, device=tok.device), tok.pooled)


class SetAligner(Aligner):
    """Base of the set methods: a head per modality, a set similarity, the set losses."""

    #: Plans are over set elements, not over the items' tokens.
    token_plan: ClassVar[bool] = False

    #: The hyperparameters every set method has (its own are added by each method).
    common_specs = (
        HParam("k", int, 4, low=1, doc="elements per set"),
        HParam("heads", int, 4, low=1, doc="attention heads of the set heads (must divide the embedding size)"),
        HParam("gd_weight", float, 0.5, low=0.0, doc="weight of the Global Discriminative Loss"),
        HParam("isd_weight", float, 0.1, low=0.0, doc="weight of the Intra-Set Divergence Loss"),
        HParam("isd_margin", float, 0.5, doc="similarity allowed between elements of a set before it is penalised"),
    )

    def __init__(self, dim: int | None, k: int, heads: int, gd_weight: float, isd_weight: float, isd_margin: float,
                 chunk: int | None) -> None:
        super().__init__(chunk)
        if dim is None:
            raise ValueError(f"{self.name}: dim (the embedding size) is required; training sets it from the backbone")
        if k < 1:
            raise ValueError(f"{self.name}: k must be >= 1, got {k}")
        if heads < 1 or dim % heads:
            fits = ", ".join(str(h) for h in range(1, dim + 1) if dim % h == 0)
            raise HParamError(f"plan {self.name!r}: heads={heads} does not divide the embedding size dim={dim}; "
                              f"heads must be one of {fits}")
        for key, weight in (("gd_weight", gd_weight), ("isd_weight", isd_weight)):
            if weight < 0:
                raise ValueError(f"{self.name}: {key} must be >= 0, got {weight}")
        self.dim, self.k, self.heads = int(dim), int(k), int(heads)
        self.gd_weight, self.isd_weight, self.isd_margin = float(gd_weight), float(isd_weight), float(isd_margin)
        self.visual_head = SetHead(self.dim, self.k, self.heads)
        self.text_head = SetHead(self.dim, self.k, self.heads)

    def hparams(self) -> dict:
        return {"dim": self.dim, "k": self.k, "heads": self.heads, "gd_weight": self.gd_weight,
                "isd_weight": self.isd_weight, "isd_margin": self.isd_margin}

    # -- sets ------------------------------------------------------------------------------------
    def sets(self, vis: Tokens, txt: Tokens) -> tuple[Tokens, Tokens]:
        """The K-element sets of every visual item and every text."""
        if vis.dim != self.dim:
            raise ValueError(f"{self.name}: built for D={self.dim}, got features of size {vis.dim}")
        return self._encode(self.visual_head, vis), self._encode(self.text_head, txt)

    @staticmethod
    def _encode(head: SetHead, tok: Tokens) -> Tokens:
        step = max(1, SET_CHUNK_TOKENS // max(1, tok.feats.shape[1]))
        if len(tok) <= step:
            return head(tok)
        chunks = range(0, len(tok), step)
        if torch.is_grad_enabled():
            feats = torch.cat([head(tok[i : i + step]).feats for i in chunks])
        else:  # written in place: no second copy of the sets
            feats = tok.feats.new_empty(len(tok), head.queries.shape[0], tok.dim)
            for i in chunks:
                feats[i : i + step] = head(tok[i : i + step]).feats
        return Tokens(feats, torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device), tok.pooled)

    def set_scores(self, sv: Tokens, st: Tokens, chunk: int | None) -> Tensor:
        """[n, m] similarity of visual sets and text sets."""
        raise NotImplementedError

    # -- Aligner API -----------------------------------------------------------------------------
    def pairwise(self, vis: Tokens, txt: Tokens, *, chunk: int | None = None, check: bool = True) -> Scores:
        """Set similarity of all N x M pairs (the same matrix in both directions)."""
        self._check_pair(vis, txt, check)
        s = self.set_scores(*self.sets(vis, txt), chunk)
        return Scores(s, s)

    def plans(self, c: Tensor, v: Tokens, t: Tokens) -> tuple[Tensor, Tensor]:
        raise ValueError(f"{self.name} scores sets of learned embeddings; use plan() for the set-element plan")

    def training_losses(self, batch: LossInputs) -> dict[str, tuple[float, Tensor]]:
        """The set losses of a training batch (the :class:`TrainingLosses` protocol): name ->
        (weight, value), with the main loss's targets and logit scale."""
        out: dict[str, tuple[float, Tensor]] = {}
        if not (self.gd_weight or self.isd_weight):
            return out
        sv, st = self.sets(batch.vis, batch.txt)
        if self.gd_weight:
            wd = work_dtype(sv.dtype)
            gd = global_discriminative_loss(sv.feats.to(wd), st.feats.to(wd), batch.vis_cols.pooled.to(wd),
                                            batch.txt_cols.pooled.to(wd), batch.logit_scale, batch.targets_v2t,
                                            batch.targets_t2v)
            out["set_gd"] = (self.gd_weight, gd)
        if self.isd_weight:
            m = self.isd_margin
            isd = (intra_set_divergence(sv.feats, m) + intra_set_divergence(st.feats, m)) / 2
            out["set_isd"] = (self.isd_weight, isd)
        return out


@register_aligner("mpa")
class MaximalPairAssignment(SetAligner):
    """Maximal Pair Assignment Similarity between K-element sets ([MPA], see the module docstring).

    Args:
        dim: embedding size D (set from the backbone by training).
        k: elements per set (default 4).
        heads: attention heads of the set heads (default 4).
        eps: entropic regularisation of the assignment (default 0.05).
        n_iter: Sinkhorn iterations (default 50).
        exact: Hungarian assignment instead of Sinkhorn (plan constant under autograd).
        gd_weight: weight of the Global Discriminative Loss in training (default 0.5).
        isd_weight: weight of the Intra-Set Divergence Loss in training (default 0.1).
        isd_margin: similarity allowed between elements of a set before it is penalised (0.5).
    """

    hparam_specs = (
        *SetAligner.common_specs,
        # the assignment's own (eps, n_iter, exact), less tol: MPA always runs n_iter iterations
        *(replace(h, doc="Sinkhorn iterations") if h.name == "n_iter" else h
          for h in Assignment.hparam_specs if h.name != "tol"),
    )

    def __init__(self, dim: int | None = None, k: int = 4, heads: int = 4, eps: float = 0.05, n_iter: int = 50,
                 exact: bool = False, gd_weight: float = 0.5, isd_weight: float = 0.1, isd_margin: float = 0.5,
                 chunk: int | None = None) -> None:
        super().__init__(dim, k, heads, gd_weight, isd_weight, isd_margin, chunk)
        self.match = Assignment(eps=eps, n_iter=n_iter, exact=exact)

    def hparams(self) -> dict:
        return {**super().hparams(), "eps": self.match.eps, "n_iter": self.match.n_iter, "exact": self.match.exact}

    def set_scores(self, sv: Tokens, st: Tokens, chunk: int | None) -> Tensor:
        return self.match.pairwise(sv, st, chunk=chunk, check=False).v2t

    def plan(self, vis: Tokens, txt: Tokens, *, check: bool = True) -> Plan:
        """The assignment between the two K-element sets of one pair (``c`` is element similarity)."""
        if len(vis) != 1 or len(txt) != 1:
            raise ValueError(f"plan() explains one pair: got {len(vis)} visual and {len(txt)} text items")
        self._check_pair(vis, txt, check)
        return self.match.plan(*self.sets(vis, txt), check=False)


@register_aligner("dive")
class DivE(SetAligner):
    """DivE's smooth-Chamfer similarity between K-element sets (the set methods' baseline here).

    Args:
        dim, k, heads, gd_weight, isd_weight, isd_margin: as for ``mpa``.
        alpha: sharpness of the soft maximum (default 16; Chamfer as it grows).
    """

    hparam_specs = (
        *SetAligner.common_specs,
        HParam("alpha", float, 16.0, low=0.0, low_open=True, doc="sharpness of the soft maximum"),
    )

    def __init__(self, dim: int | None = None, k: int = 4, heads: int = 4, alpha: float = 16.0,
                 gd_weight: float = 0.5, isd_weight: float = 0.1, isd_margin: float = 0.5,
                 chunk: int | None = None) -> None:
        super().__init__(dim, k, heads, gd_weight, isd_weight, isd_margin, chunk)
        if not alpha > 0:
            raise ValueError(f"dive: alpha must be > 0, got {alpha}")
        self.alpha = float(alpha)

    def hparams(self) -> dict:
        return {**super().hparams(), "alpha": self.alpha}

    def set_scores(self, sv: Tokens, st: Tokens, chunk: int | None) -> Tensor:
        wd = work_dtype(sv.dtype)
        nb, mb = self._block_shape(len(sv), len(st), self.k, self.k, chunk)
        rows = []
        for i0 in range(0, len(sv), nb):
            a = sv.feats[i0 : i0 + nb].to(wd)
            cols = []
            for j0 in range(0, len(st), mb):
                b = st.feats[j0 : j0 + mb].to(wd)
                sim = self.alpha * torch.einsum("ikd,jld->ijkl", a, b)  # [n, m, K, K]
                both = sim.logsumexp(3).sum(2) + sim.logsumexp(2).sum(2)
                cols.append(both / (2 * self.alpha * self.k))
            rows.append(torch.cat(cols, 1))
        return torch.cat(rows, 0)

    def plan(self, vis: Tokens, txt: Tokens, *, check: bool = True) -> Plan:
        if len(vis) != 1 or len(txt) != 1:
            raise ValueError(f"plan() explains one pair: got {len(vis)} visual and {len(txt)} text items")
        raise ValueError("dive: the smooth-Chamfer similarity is a log-sum-exp, not a weighted sum of pairs; "
                         "it has no plan to explain")
