"""Momentum distillation (paper appendix B, after ALBEF).

A teacher with the student's architecture follows it as an exponential moving average
(``teacher = m * teacher + (1 - m) * student`` after every optimizer step; the paper's
``m = 0.95``). Four queues keep the teacher's most recent global visual, token visual, global
text and token text features (a :class:`FeatureQueue` per modality holds both, as ``Tokens``),
with the item ids so that a queued copy of a batch item counts as a positive. The student's
scores cover the batch and the queue; so do the teacher's, whose softmax becomes the
pseudo-target, mixed with the labels (eq 23-24):

    y_hat = alpha * softmax(logit_scale * s_teacher) + (1 - alpha) * y

The paper uses one symbol for the EMA rate and the mixing weight; we keep them apart. The
mixing weight defaults to ALBEF's 0.4 (``alpha`` = 0.95 would train the student almost
entirely on the teacher's guesses). The queue length counts samples, not batches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tokens import Tokens

__all__ = ["FeatureQueue", "distill_targets", "ema_update"]


def distill_targets(teacher_scores: Tensor, labels: Tensor, logit_scale: Tensor | float, alpha: float,
                    dim: int = -1) -> Tensor:
    """``alpha * softmax(logit_scale * teacher_scores) + (1 - alpha) * labels`` along ``dim``
    (``-1``: rows are queries, as in visual->text; ``0``: columns are, as in text->visual)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    s = teacher_scores if teacher_scores.dtype == torch.float64 else teacher_scores.float()
    soft = torch.softmax(logit_scale * s, dim=dim)
    return alpha * soft + (1.0 - alpha) * labels.to(soft.dtype)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``t = momentum * t + (1 - momentum) * s`` for every parameter; buffers are copied."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(momentum).add_(s.detach().to(t.dtype), alpha=1.0 - momentum)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        t.copy_(s)


class FeatureQueue:
    """A ring buffer of the last ``size`` samples' token features (feats, mask, pooled) and ids.

    The token axis grows to the longest batch pushed (padding is masked, and every plan is
    invariant to padding), so texts of varying length share one buffer.
    """

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"queue size must be >= 0, got {size}")
        self.size = size
        self.feats: Tensor | None = None
        self.mask: Tensor | None = None
        self.pooled: Tensor | None = None
        self.ids: Tensor | None = None
        self.ptr = 0
        self.filled = 0

    def __len__(self) -> int:
        return self.filled

    @torch.no_grad()
    def push(self, tokens: Tokens, ids: Tensor) -> None:
        """Enqueue a batch (detached); the oldest samples are overwritten once full."""
        if self.size == 0:
            return
        tokens = tokens.detach().zero_padding()  # padding holds whatever the encoder left there
        feats, mask, pooled, ids = tokens.feats, tokens.mask, tokens.pooled, ids.detach()
        if len(ids) > self.size:  # keep the newest
            feats, mask, pooled, ids = feats[-self.size:], mask[-self.size:], pooled[-self.size:], ids[-self.size:]
        if self.feats is None:
            self.feats = feats.new_zeros(self.size, feats.shape[1], feats.shape[2])
            self.mask = torch.zeros(self.size, feats.shape[1], dtype=torch.bool, device=feats.device)
            self.pooled = pooled.new_zeros(self.size, pooled.shape[1])
            self.ids = torch.full((self.size,), -1, dtype=ids.dtype, device=ids.device)
        if feats.shape[1] > self.feats.shape[1]:
            grow = feats.shape[1] - self.feats.shape[1]
            self.feats = F.pad(self.feats, (0, 0, 0, grow))
            self.mask = F.pad(self.mask, (0, grow))
        length = feats.shape[1]
        rows = (self.ptr + torch.arange(len(ids), device=ids.device)) % self.size
        self.feats[rows] = 0
        self.feats[rows, :length] = feats.to(self.feats.dtype)
        self.mask[rows] = False
        self.mask[rows, :length] = mask
        self.pooled[rows] = pooled.to(self.pooled.dtype)
        self.ids[rows] = ids.to(self.ids.dtype)
        self.ptr = (self.ptr + len(ids)) % self.size
        self.filled = min(self.size, self.filled + len(ids))

    def tokens(self) -> Tokens | None:
        """The queued samples as Tokens (``None`` while empty)."""
        if self.filled == 0:
            return None
        n = self.filled
        return Tokens(self.feats[:n], self.mask[:n], self.pooled[:n])

    def item_ids(self) -> Tensor | None:
        return None if self.filled == 0 else self.ids[: self.filled]

    def state_dict(self) -> dict:
        """Tensors plus the two counters (as 0-d tensors, so safetensors can hold them)."""
        if self.feats is None:
            return {"ptr": torch.tensor(self.ptr), "filled": torch.tensor(self.filled)}
        return {"feats": self.feats.cpu(), "mask": self.mask.cpu(), "pooled": self.pooled.cpu(),
                "ids": self.ids.cpu(), "ptr": torch.tensor(self.ptr), "filled": torch.tensor(self.filled)}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        self.ptr, self.filled = int(state["ptr"]), int(state["filled"])
        if "feats" in state:
            if state["feats"].shape[0] != self.size:
                raise ValueError(f"queue checkpoint holds {state['feats'].shape[0]} samples but the queue size "
                                 f"is {self.size}")
            self.feats, self.mask = state["feats"].to(device), state["mask"].to(device, torch.bool)
            self.pooled, self.ids = state["pooled"].to(device), state["ids"].to(device)
        else:
            self.feats = self.mask = self.pooled = self.ids = None

    def to(self, device: torch.device | str) -> FeatureQueue:
        if self.feats is not None:
            self.feats, self.mask = self.feats.to(device), self.mask.to(device)
            self.pooled, self.ids = self.pooled.to(device), self.ids.to(device)
        return self
