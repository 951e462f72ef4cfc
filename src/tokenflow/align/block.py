"""The block machinery every plan shares: token similarities, the eq-14 global weights,
masks, and the per-call :class:`BlockContext` (scratch buffers, collection statistics).

Every tensor here is in the [n, L1, m, L2] layout of a block of n visual x m text items, or
broadcastable to it: ``c[i, s, j, t]`` is what one matrix multiply ``[n*L1, D] @ [D, m*L2]``
produces, so no transpose or copy is needed. Reductions over text tokens run over dim 3, over
visual tokens over dim 1.
"""

from __future__ import annotations

import functools
import math
import os

import torch
from torch import Tensor

from ..tokens import Tokens

__all__ = [
    "DEFAULT_BLOCK_ELEMENTS", "BlockContext", "cpu_half_matmul_native", "global_weights", "mask_bias",
    "real_lengths", "token_sim", "token_sim_and_e", "visual_weights", "work_dtype",
]

# Token-pair elements ([n, L1, m, L2]) scored at once by default: 2**21 fp32 values are 8 MiB
# per buffer (a block keeps about three alive). Large enough that the block's matrix multiply
# runs near full speed, small enough to stay in the last-level cache; on the 2-core benchmark
# machine 2**21 beat 2**19 and 2**20 for tokenflow (benchmarks/RESULTS.md).
DEFAULT_BLOCK_ELEMENTS = 2**21


def token_sim(v: Tokens, t: Tokens, ctx: BlockContext | None = None) -> Tensor:
    """c[i, s, j, t] = mu_is . omega_jt (eq 7) as [n, L1, m, L2] in the working dtype, one matrix
    multiply. With a no-grad ``ctx`` the result lives in a reused scratch buffer."""
    n, l1, dim = v.feats.shape
    return _sim(v.feats.reshape(n * l1, dim), t, ctx, "c").view(n, l1, len(t), t.feats.shape[1])


def token_sim_and_e(v: Tokens, t: Tokens, ctx: BlockContext) -> tuple[Tensor, Tensor]:
    """``token_sim`` and e[i, j, t] = mu_bar_i . omega_jt (eq 14) from ONE matrix multiply: each
    visual item's global feature rides along as an extra token row, which is cheaper than a
    separate, skinny [n, D] x [D, m*L2] multiply. Returns c [n, L1, m, L2] and e [n, 1, m, L2]."""
    n, l1, dim = v.feats.shape
    aug = ctx.per_visual_block(v, "feats+pooled", lambda: torch.cat([v.feats, v.pooled[:, None]], 1))
    full = _sim(aug.reshape(n * (l1 + 1), dim), t, ctx, "c+e").view(n, l1 + 1, len(t), t.feats.shape[1])
    return full[:, :l1], full[:, l1:]


#: How bf16 / fp16 matrices are multiplied on the CPU: "auto" (natively where the CPU has
#: half-precision matrix units, else in fp32), "native" or "fp32". Overridden by the
#: TOKENFLOW_CPU_HALF_MATMUL environment variable.
CPU_HALF_MATMUL_MODES = ("auto", "native", "fp32")


def cpu_half_matmul_native(dtype: torch.dtype) -> bool:
    """Whether this CPU multiplies ``dtype`` (bf16 / fp16) matrices natively rather than in fp32.

    CPUs without half-precision matrix units emulate them (on the 2-core AVX2 benchmark machine a
    bf16 multiply ran at about 1/8 of fp32), so there the same half values are multiplied in
    fp32 (exact products). CPUs with AVX512-BF16 / AVX512-FP16 or AMX multiply natively. The
    choice depends on the CPU's capabilities only, never on a timing, so results do not depend
    on machine load; ``TOKENFLOW_CPU_HALF_MATMUL=native|fp32`` forces it.
    """
    mode = os.environ.get("TOKENFLOW_CPU_HALF_MATMUL", "auto")
    if mode not in CPU_HALF_MATMUL_MODES:
        raise ValueError(f"TOKENFLOW_CPU_HALF_MATMUL must be one of {', '.join(CPU_HALF_MATMUL_MODES)}, got {mode!r}")
    if mode != "auto":
        return mode == "native"
    return _cpu_has_half_units(dtype)


@functools.cache
def _cpu_has_half_units(dtype: torch.dtype) -> bool:
    caps = getattr(torch.cpu, "get_capabilities", lambda: {})()
    if dtype == torch.bfloat16:
        return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
    if dtype == torch.float16:
        return bool(caps.get("avx512_fp16") or caps.get("amx_fp16"))
    return True


def _sim(a: Tensor, t: Tokens, ctx: BlockContext | None, name: str) -> Tensor:
    m, l2, dim = t.feats.shape
    b = t.feats.reshape(m * l2, dim)
    wd = work_dtype(a.dtype)
    if wd != a.dtype and a.device.type == "cpu" and not cpu_half_matmul_native(a.dtype):
        # Same bf16 / fp16 values, multiplied in fp32: exact products, and faster on this CPU.
        a, b = a.to(wd), b.to(wd)
    if ctx is None:
        return (a @ b.T).to(wd)
    c = torch.mm(a, b.T, out=ctx.out(name + "_in", (a.shape[0], m * l2), a.dtype))
    if wd != a.dtype:
        c = c.to(wd) if not ctx.reuse else ctx.scratch(name, (a.shape[0], m * l2), wd).copy_(c)
    return c


def global_weights(v: Tokens, t: Tokens) -> tuple[Tensor, Tensor]:
    """Eq 14 for every pair: d[i, s, j] = mu_is . omega_bar_j as [n, L1, m, 1] and
    e[i, j, t] = mu_bar_i . omega_jt as [n, 1, m, L2]. Zero at padding when padding is zeroed."""
    n, m, l2, dim = len(v), len(t), t.feats.shape[1], t.dim
    e = (v.pooled @ t.feats.reshape(m * l2, dim).T).view(n, 1, m, l2)
    return visual_weights(v, t), e


def visual_weights(v: Tokens, t: Tokens) -> Tensor:
    """d[i, s, j] = mu_is . omega_bar_j (eq 14) as [n, L1, m, 1]."""
    n, l1, dim = v.feats.shape
    return (v.feats.reshape(n * l1, dim) @ t.pooled.T).view(n, l1, len(t), 1)


def mask_bias(v: Tokens, t: Tokens, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Additive masks, 0 at real tokens and -inf at padding: visual [n, L1, 1, 1], text [1, 1, m, L2]."""
    ninf = torch.tensor(float("-inf"), dtype=dtype, device=v.device)
    zero = torch.zeros((), dtype=dtype, device=v.device)
    bv = torch.where(v.mask, zero, ninf)[:, :, None, None]
    bt = torch.where(t.mask, zero, ninf)[None, None, :, :]
    return bv, bt


def real_lengths(v: Tokens, t: Tokens, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """l1 as [n, 1] and l2 as [1, m], in ``dtype``."""
    return v.mask.sum(1).to(dtype)[:, None], t.mask.sum(1).to(dtype)[None, :]


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax, transport and reductions run in float32 for half-precision inputs."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class BlockContext:
    """What the blocks of one ``pairwise`` call share: reusable scratch buffers (only when no
    gradient is recorded; autograd needs every intermediate) and statistics of the whole
    collections ``vis`` and ``txt``, computed once: whether either side has padding, and the
    largest token / global feature norms, which bound every softmax exponent so that a plan
    can skip the max-shift safely."""

    def __init__(self, vis: Tokens, txt: Tokens, needs_grad: bool | None = None) -> None:
        self.vis, self.txt = vis, txt
        if needs_grad is None:
            needs_grad = torch.is_grad_enabled() and any(
                x.requires_grad for x in (vis.feats, vis.pooled, txt.feats, txt.pooled)
            )
        self.reuse = not needs_grad
        self._bufs: dict[str, Tensor] = {}
        self._norms: tuple[float, float, float, float] | None = None
        self._memo_key: tuple | None = None
        self._memo = None
        self.vis_padded = not bool(vis.mask.all())
        self.txt_padded = not bool(txt.mask.all())

    def scratch(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        """An uninitialised [shape] tensor; the same memory is handed out again for ``name``."""
        numel = math.prod(shape)
        if not self.reuse:
            return torch.empty(shape, dtype=dtype, device=self.vis.device)
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype:
            buf = self._bufs[name] = torch.empty(numel, dtype=dtype, device=self.vis.device)
        return buf[:numel].view(shape)

    def per_visual_block(self, v: Tokens, name: str, make):
        """``make()`` computed once per visual block (the same ``v`` meets every text block)."""
        # Keep ``v`` itself, not its id: an id can be reused once its object is freed.
        if self._memo_key is None or self._memo_key[0] != name or self._memo_key[1] is not v:
            self._memo_key, self._memo = (name, v), make()
        return self._memo

    def out(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor | None:
        """A scratch buffer for an ``out=`` argument, or ``None`` (a fresh tensor) under autograd."""
        return self.scratch(name, shape, dtype) if self.reuse else None

    @property
    def norms(self) -> tuple[float, float, float, float]:
        """Largest norms of visual tokens, visual globals, text tokens, text globals."""
        if self._norms is None:
            def norm(x: Tensor) -> Tensor:  # accumulated in fp32 without an fp32 copy of x
                return torch.linalg.vector_norm(x, dim=-1, dtype=work_dtype(x.dtype)).float()

            def token_max(tok: Tokens) -> Tensor:  # over real tokens only: padding may hold junk
                return torch.where(tok.mask, norm(tok.feats), 0.0).amax()

            stats = torch.stack(
                [token_max(self.vis), norm(self.vis.pooled).amax(), token_max(self.txt), norm(self.txt.pooled).amax()]
            )
            self._norms = tuple(stats.tolist())
        return self._norms

    def exp2_is_safe(self, bound: float, length: int, dtype: torch.dtype) -> bool:
        """Whether 2**x cannot overflow or vanish for |x| <= ``bound`` summed over ``length``
        terms weighted by |c| <= (token norm product), so no max-shift is needed."""
        if not math.isfinite(bound):
            return False
        limit = 60.0 if dtype == torch.float32 else 500.0
        nv, _, nt, _ = self.norms
        return bound <= limit and bound + math.log2(length * nv * nt + 1.0) <= 2 * limit
