"""The pairwise sigmoid loss of SigLIP, on one process or passed around a ring of processes.

Reference: Xiaohua Zhai, Basil Mustafa, Alexander Kolesnikov and Lucas Beyer, "Sigmoid Loss for
Language Image Pre-Training", ICCV 2023.

Every (visual i, text j) pair is its own binary decision. With a learnable temperature
``t = exp(t')`` and bias ``b`` (initialised t' = log 10, b = -10 in the paper, so that the many
negatives start with a small loss), and ``z_ij = +1`` for a positive pair, ``-1`` otherwise:

    L = -(1 / |B|) * sum_i sum_j log sigmoid(z_ij * (t * s_ij + b))

The sum runs over every pair and is divided by the number of visual rows |B|, not by the number
of pairs, as in the paper. Positives come from item ids, so two captions of one item in a batch
are both positives (without ids: the diagonal). A plan gives two fine-grained score matrices
(``s_v2t``, ``s_t2v``); each gets the loss and the two are averaged, as the two InfoNCE sides are.

Across processes no softmax couples a row to every column, so no process needs the whole
[B*W, B*W] matrix, nor even its own [B, B*W] rows at once: each process scores its visual items
against its own texts, then passes its text chunk to the next rank and receives one from the
previous, W - 1 times (open_clip's ``SigLipLoss`` does the same with its neighbour exchange).
The chunk is every text's pooled feature *and* its tokens, so fine-grained plans score remote
texts too. Gradients travel back along the ring, so each process receives the gradient that
the other processes' losses put on its texts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from ..tokens import Tokens

__all__ = ["INIT_BIAS", "INIT_SCALE", "ring_sigmoid_losses", "sigmoid_loss"]

INIT_SCALE = 10.0  # t = exp(t'), t' = log 10 (the paper's initialisation)
INIT_BIAS = -10.0

#: chunk of texts -> {term name: score blocks [B_visual, B_chunk]}; a term's loss averages its blocks
BlockScorer = Callable[[Tokens], dict[str, list[Tensor]]]


def _labels(row_ids: Tensor | None, col_ids: Tensor | None, shape: torch.Size, device) -> Tensor:
    """z: +1 where the row's item id equals the column's, -1 elsewhere; without ids, the diagonal."""
    if row_ids is None or col_ids is None:
        pos = torch.eye(shape[0], shape[1], dtype=torch.bool, device=device)
    else:
        pos = row_ids.reshape(-1, 1).to(device) == col_ids.reshape(1, -1).to(device)
    return pos.to(torch.float32) * 2 - 1


def sigmoid_loss(scores: Tensor, logit_scale: Tensor | float, logit_bias: Tensor | float,
                 row_ids: Tensor | None = None, col_ids: Tensor | None = None,
                 rows: int | None = None) -> Tensor:
    """``-sum_ij log sigmoid(z_ij * (logit_scale * s_ij + logit_bias)) / rows``.

    ``scores`` [R, C] visual x text. ``logit_scale`` is ``t = exp(t')`` (already exponentiated),
    ``logit_bias`` is ``b``. ``z_ij = +1`` where ``row_ids[i] == col_ids[j]`` (both given), else
    on the diagonal. ``rows`` divides the sum (default R, the paper's |B|); with no rows (a
    process whose share of the batch is empty) the loss is 0, still connected to the graph, so
    every parameter gets a (zero) gradient and DDP's reduction does not wait for one.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [R, C], got {tuple(scores.shape)}")
    s = scores if scores.dtype == torch.float64 else scores.float()
    z = _labels(row_ids, col_ids, s.shape, s.device).to(s.dtype)
    logits = logit_scale * s + logit_bias
    total = -F.logsigmoid(z * logits).sum()
    n = s.shape[0] if rows is None else rows
    return total / n if n else total * 0.0


# -- the ring -------------------------------------------------------------------------------------
def _send_recv(x: Tensor, to: int, frm: int, shape: Sequence[int]) -> Tensor:
    """Send ``x`` to rank ``to`` and receive a tensor of ``shape`` from rank ``frm``."""
    out = x.new_empty(tuple(shape))
    ops = [dist.P2POp(dist.isend, x.contiguous(), to), dist.P2POp(dist.irecv, out, frm)]
    for req in dist.batch_isend_irecv(ops):
        req.wait()
    return out


class _Exchange(torch.autograd.Function):
    """Forward: pass ``x`` one step along the ring. Backward: pass the gradient one step back."""

    @staticmethod
    def forward(ctx, x: Tensor, to: int, frm: int, shape: tuple[int, ...]) -> Tensor:
        ctx.to, ctx.frm, ctx.shape = to, frm, tuple(x.shape)
        return _send_recv(x, to, frm, shape)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _send_recv(grad, ctx.frm, ctx.to, ctx.shape), None, None, None


def _pack(txt: Tokens, ids: Tensor, length: int, tokens: bool) -> tuple[Tensor, Tensor]:
    """One float tensor [B, length + 1, D] (tokens then pooled; pooled alone if not ``tokens``)
    and one int64 tensor [B, length + 1] (mask then item id): two messages per ring step."""
    pooled = txt.pooled.unsqueeze(1)
    if not tokens:
        return pooled, ids.reshape(-1, 1).long()
    grow = length - txt.feats.shape[1]
    feats = F.pad(txt.feats, (0, 0, 0, grow)) if grow else txt.feats
    mask = F.pad(txt.mask, (0, grow)) if grow else txt.mask
    return torch.cat([feats, pooled], 1), torch.cat([mask.long(), ids.reshape(-1, 1).long()], 1)


def _unpack(floats: Tensor, ints: Tensor, tokens: bool) -> tuple[Tokens, Tensor]:
    pooled = floats[:, -1]
    if not tokens:  # no tokens travel: an empty token axis (the scorer reads pooled only)
        empty = floats[:, :0]
        return Tokens(empty, ints[:, :0].bool(), pooled), ints[:, -1]
    return Tokens(floats[:, :-1], ints[:, :-1].bool(), pooled), ints[:, -1]


def ring_sigmoid_losses(score: BlockScorer, txt: Tokens, row_ids: Tensor, col_ids: Tensor,
                        logit_scale: Tensor | float, logit_bias: Tensor | float, *, rank: int = 0,
                        world: int = 1, sizes: Sequence[int] | None = None,
                        tokens: bool = True) -> dict[str, Tensor]:
    """Sigmoid losses of this process's visual rows against the texts of every process.

    ``score(chunk)`` scores this process's visual items against a chunk of texts and returns,
    per loss term, a list of [B_local, B_chunk] blocks (``{"global": [g], "fine": [v2t, t2v]}``);
    each term's loss is the mean over its blocks of :func:`sigmoid_loss`, summed over all chunks
    and divided by the local number of rows. ``txt`` and ``col_ids`` are this process's texts
    and their item ids, ``row_ids`` the item ids of its visual rows. With ``world`` > 1 the
    chunks travel around the ring in ``torch.distributed``'s default group; ``sizes`` are the
    processes' text counts in rank order, and ``tokens=False`` sends the pooled features only
    (enough for a global-only score). The mean over processes of the returned losses, weighted
    by their row counts, is the single-process loss of the concatenated batch.
    """
    rows = len(row_ids)
    totals: dict[str, Tensor] = {}

    def add(chunk: Tokens, ids: Tensor) -> None:
        for name, blocks in score(chunk).items():
            term = sum(sigmoid_loss(s, logit_scale, logit_bias, row_ids, ids, rows) for s in blocks) / len(blocks)
            totals[name] = totals[name] + term if name in totals else term

    add(txt, col_ids)
    if world == 1:
        return totals
    if sizes is None or len(sizes) != world:
        raise ValueError(f"sizes must list the {world} processes' text counts, got {sizes}")
    length = txt.feats.shape[1]
    if tokens:  # every chunk padded to the longest text of all processes
        t = torch.tensor([length], device=txt.feats.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        length = int(t)
    floats, ints = _pack(txt, col_ids, length, tokens)
    to, frm = (rank + 1) % world, (rank - 1) % world
    for k in range(1, world):
        n = sizes[(rank - k) % world]  # the chunk now arriving started on rank - k
        floats = _Exchange.apply(floats, to, frm, (n, *floats.shape[1:]))
        with torch.no_grad():
            ints = _send_recv(ints, to, frm, (n, *ints.shape[1:]))
        add(*_unpack(floats, ints, tokens))
    return totals

