"""Process-group helpers: one code path for a single process and for ``torchrun``.

Below the evaluation and the training (torch and :class:`~tokenflow.tokens.Tokens` only), so
that both share them; joining the group is :func:`tokenflow.train.distributed.init_distributed`.

Features are gathered **with gradients** so that every process scores its own rows against
the whole global batch (open_clip's ``local_loss``: memory B_local x B_global). The gather is
``torch.distributed._functional_collectives.all_gather_single``, the current autograd-aware
collective (``torch.distributed.nn.functional.all_gather`` is deprecated in torch 2.13); its
backward sums, over processes, the gradients that reach each process's slice. Each process's
loss is the mean over its own queries, and DDP averages gradients over processes, so the
update equals the single-process one on the concatenated batch (a test checks weights).

Batches may differ in size between processes (a skipped unreadable file): sizes are gathered
first, every slice is padded to the largest and the padding is cut off after the gather.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from .tokens import Tokens

__all__ = ["DistInfo", "all_gather_grad", "all_gather_objects", "all_gather_rows", "all_gather_tokens",
           "gather_sizes", "mean_over_processes", "shard"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def gather_sizes(n: int, info: DistInfo, device: torch.device) -> list[int]:
    """Every process's local batch size."""
    if not info.enabled:
        return [n]
    t = torch.tensor([n], device=device)
    out = [torch.zeros_like(t) for _ in range(info.world)]
    dist.all_gather(out, t)
    return [int(x) for x in out]


def _pad_rows(x: Tensor, rows: int) -> Tensor:
    if x.shape[0] == rows:
        return x
    pad = [0, 0] * (x.dim() - 1) + [0, rows - x.shape[0]]
    return F.pad(x, pad)


def _cut(x: Tensor, sizes: list[int], rows: int) -> Tensor:
    if all(s == rows for s in sizes):
        return x
    return torch.cat([x[r * rows : r * rows + s] for r, s in enumerate(sizes)])


def all_gather_grad(x: Tensor, info: DistInfo, sizes: list[int]) -> Tensor:
    """Concatenate every process's ``x`` along dim 0, keeping the autograd graph."""
    if not info.enabled:
        return x
    from torch.distributed._functional_collectives import all_gather_single, wait_tensor

    rows = max(sizes)
    out = all_gather_single(_pad_rows(x.contiguous(), rows), 0, dist.group.WORLD)
    return _cut(wait_tensor(out) if hasattr(out, "wait") else out, sizes, rows)


@torch.no_grad()
def _all_gather_plain(x: Tensor, info: DistInfo, sizes: list[int]) -> Tensor:
    rows = max(sizes)
    x = _pad_rows(x.contiguous(), rows)
    out = [torch.empty_like(x) for _ in range(info.world)]
    dist.all_gather(out, x)
    return _cut(torch.cat(out), sizes, rows)


def all_gather_tokens(tok: Tokens, info: DistInfo, sizes: list[int], grad: bool = True) -> Tokens:
    """Gather Tokens from every process (feats and pooled with gradients when ``grad``), token
    axes padded to the longest first."""
    if not info.enabled:
        return tok
    length = torch.tensor([tok.feats.shape[1]], device=tok.feats.device)
    dist.all_reduce(length, op=dist.ReduceOp.MAX)
    grow = int(length) - tok.feats.shape[1]
    feats = F.pad(tok.feats, (0, 0, 0, grow)) if grow else tok.feats
    mask = F.pad(tok.mask, (0, grow)) if grow else tok.mask
    gather = all_gather_grad if grad else _all_gather_plain
    mask_all = _all_gather_plain(mask.to(torch.uint8), info, sizes).bool()
    return Tokens(gather(feats, info, sizes), mask_all, gather(tok.pooled, info, sizes))


def all_gather_rows(x: Tensor, info: DistInfo, sizes: list[int]) -> Tensor:
    """Concatenate every process's rows of ``x`` along dim 0, without gradients (``sizes``: every
    process's number of rows, which may be 0)."""
    return x if not info.enabled else _all_gather_plain(x, info, sizes)


def all_gather_objects(obj, info: DistInfo) -> list:
    """Every process's ``obj`` (picklable), in rank order."""
    if not info.enabled:
        return [obj]
    out: list = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def shard(n: int, info: DistInfo) -> range:
    """This process's contiguous share of ``range(n)``; shares differ in length by one at most."""
    return range(info.rank * n // info.world, (info.rank + 1) * n // info.world)


def mean_over_processes(stats: dict[str, float], info: DistInfo, device: torch.device) -> dict[str, float]:
    """Each value's mean over the processes (a loss of the global batch, not of this process's rows)."""
    if not info.enabled:
        return stats
    keys = sorted(stats)
    t = torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / info.world for k, v in zip(keys, t.tolist(), strict=True)}
