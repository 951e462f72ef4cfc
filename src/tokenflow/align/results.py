"""What an aligner returns: the scores of all pairs (``Scores``) and the plan of one (``Plan``)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["Plan", "Scores"]


@dataclass(frozen=True)
class Scores:
    """Fine-grained scores of all pairs, both [N_visual, N_text].

    ``v2t`` is s^V of the paper (eq 8; ranks texts for a visual query, row-wise) and ``t2v`` is
    s^T (eq 9; ranks visual items for a text query, column-wise).
    """

    v2t: Tensor
    t2v: Tensor
    #: Transport plans: the largest marginal error of any pair of the call (else None).
    marginal_error: float | None = None

    def direction(self, which: str) -> Tensor:
        """``"v2t"``, ``"t2v"`` or ``"mean"`` (average of both)."""
        if which == "v2t":
            return self.v2t
        if which == "t2v":
            return self.t2v
        if which == "mean":
            return 0.5 * (self.v2t + self.t2v)
        raise ValueError(f"direction must be 'v2t', 't2v' or 'mean', got {which!r}")


@dataclass(frozen=True)
class Plan:
    """The explanation of one match, over real tokens only ([l1, l2] each).

    Attributes:
        c: token similarities mu_s . omega_t (eq 7).
        v2t: weights T^V (eq 8); ``(c * v2t).sum()`` is the visual-to-text score.
        t2v: weights T^T (eq 9); ``(c * t2v).sum()`` is the text-to-visual score.
        d: [l1] visual token weights mu_s . omega_bar (eq 14).
        e: [l2] text token weights mu_bar . omega_t (eq 14).
        iterations: Sinkhorn iterations the plan took (transport plans; else None).
        marginal_error: its marginal error, sum_s |T 1 - a|_s (transport plans; else None).
    """

    c: Tensor
    v2t: Tensor
    t2v: Tensor
    d: Tensor
    e: Tensor
    iterations: int | None = None
    marginal_error: float | None = None

    @property
    def score_v2t(self) -> Tensor:
        return (self.c * self.v2t).sum()

    @property
    def score_t2v(self) -> Tensor:
        return (self.c * self.t2v).sum()
