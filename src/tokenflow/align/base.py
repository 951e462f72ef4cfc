"""The alignment scheme shared by every plan (TokenFlow paper, section 3.2).

A visual input i and a text j each bring token features, a mask of real tokens and a global
feature. Their token-wise similarity is ``c[s, t] = mu_s . omega_t`` (eq 7). A *plan* is a pair
of weight matrices ``T_v2t`` and ``T_t2v`` over the real tokens (eq 8-9), and the two
fine-grained scores are

    s_v2t = sum_{s,t} c[s, t] * T_v2t[s, t]        s_t2v = sum_{s,t} c[s, t] * T_t2v[s, t]

Orientation is always [visual, text]: score matrices are [N_visual, N_text]. ``s_v2t`` ranks the
texts of a visual query (a row), ``s_t2v`` ranks the visual items of a text query (a column).

Layout used inside a block of n visual x m text items: token similarities are kept as
``c[i, s, j, t]`` with shape [n, L1, m, L2], which is exactly what one matrix multiply
``[n*L1, D] @ [D, m*L2]`` produces, so no transpose or copy is needed. Reductions over text
tokens run over dim 3, over visual tokens over dim 1.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

__all__ = ["DEFAULT_BLOCK_ELEMENTS", "Aligner", "BlockContext", "Plan", "Scores", "Tokens"]

# Token-pair elements ([n, L1, m, L2]) scored at once by default: 2**21 fp32 values are 8 MiB
# per buffer (a block keeps about three alive). Large enough that the block's matrix multiply
# runs near full speed, small enough to stay in the last-level cache; on the 2-core benchmark
# machine 2**21 beat 2**19 and 2**20 for tokenflow (benchmarks/RESULTS.md).
DEFAULT_BLOCK_ELEMENTS = 2**21

IndexLike = int | slice | Sequence[int] | Tensor


@dataclass(frozen=True)
class Tokens:
    """Token features of a batch of items of one modality.

    Attributes:
        feats: [N, L, D] token features (patches, frames or words), padding anywhere.
        mask: bool [N, L], True where a token is real.
        pooled: [N, D] global feature of each item (CLIP's class / EOS feature).

    Shapes and dtypes are checked on construction (no device sync); values (NaN, Inf, rows with
    no real token) are checked by :meth:`check_values`, which the aligners call by default.
    Integer indexing keeps the batch dimension: ``vis[3]`` is a ``Tokens`` of one item.
    """

    feats: Tensor
    mask: Tensor
    pooled: Tensor

    def __post_init__(self) -> None:
        for name in ("feats", "mask", "pooled"):
            if not isinstance(getattr(self, name), Tensor):
                raise TypeError(f"Tokens.{name} must be a torch.Tensor, got {type(getattr(self, name)).__name__}")
        f, m, p = self.feats, self.mask, self.pooled
        if f.dim() != 3:
            raise ValueError(f"Tokens.feats must have shape [N, L, D], got {tuple(f.shape)}")
        if not f.is_floating_point():
            raise ValueError(f"Tokens.feats must be a floating tensor, got {f.dtype}")
        if m.dtype != torch.bool:
            raise ValueError(f"Tokens.mask must be a bool tensor (True = real token), got {m.dtype}")
        if tuple(m.shape) != tuple(f.shape[:2]):
            raise ValueError(
                f"Tokens.mask must have shape [N, L] = {tuple(f.shape[:2])} to match feats {tuple(f.shape)}, "
                f"got {tuple(m.shape)}"
            )
        if tuple(p.shape) != (f.shape[0], f.shape[2]):
            raise ValueError(
                f"Tokens.pooled must have shape [N, D] = {(f.shape[0], f.shape[2])} to match feats "
                f"{tuple(f.shape)}, got {tuple(p.shape)}"
            )
        if p.dtype != f.dtype:
            raise ValueError(f"Tokens.pooled dtype {p.dtype} differs from feats dtype {f.dtype}")
        if not (f.device == m.device == p.device):
            raise ValueError(f"Tokens tensors are on different devices: {f.device}, {m.device}, {p.device}")

    def __len__(self) -> int:
        return self.feats.shape[0]

    def __getitem__(self, idx: IndexLike) -> Tokens:
        if isinstance(idx, int):
            if not -len(self) <= idx < len(self):
                raise IndexError(f"index {idx} out of range for Tokens of length {len(self)}")
            start = idx % len(self)
            idx = slice(start, start + 1)
        return Tokens(self.feats[idx], self.mask[idx], self.pooled[idx])

    @property
    def dim(self) -> int:
        """Feature size D."""
        return self.feats.shape[2]

    @property
    def lengths(self) -> Tensor:
        """[N] number of real tokens per item (int64)."""
        return self.mask.sum(1)

    @property
    def device(self) -> torch.device:
        return self.feats.device

    @property
    def dtype(self) -> torch.dtype:
        return self.feats.dtype

    def to(self, *args, **kwargs) -> Tokens:
        """Like ``Tensor.to``: moves all three tensors; a dtype applies to feats and pooled only."""
        feats = self.feats.to(*args, **kwargs)
        pooled = self.pooled.to(*args, **kwargs)
        return Tokens(feats, self.mask.to(feats.device), pooled)

    def detach(self) -> Tokens:
        return Tokens(self.feats.detach(), self.mask, self.pooled.detach())

    @staticmethod
    def cat(parts: Sequence[Tokens]) -> Tokens:
        """Concatenate along the batch, padding every part to the longest L (zeros, masked out)."""
        if not parts:
            raise ValueError("Tokens.cat needs at least one Tokens")
        length = max(p.feats.shape[1] for p in parts)
        feats, masks = [], []
        for p in parts:
            pad = length - p.feats.shape[1]
            feats.append(torch.nn.functional.pad(p.feats, (0, 0, 0, pad)))
            masks.append(torch.nn.functional.pad(p.mask, (0, pad), value=False))
        return Tokens(torch.cat(feats), torch.cat(masks), torch.cat([p.pooled for p in parts]))

    def zero_padding(self) -> Tokens:
        """The same tokens with padded features set to exactly zero (NaN or junk in padding is dropped)."""
        feats = torch.where(self.mask.unsqueeze(-1), self.feats, self.feats.new_zeros(()))
        return Tokens(feats, self.mask, self.pooled)

    def check_values(self, name: str = "tokens") -> None:
        """Raise ``ValueError`` for a row without real tokens or NaN/Inf in real tokens or pooled.

        This reads the tensors back to the host (one device sync); training loops that build
        their own tokens may skip it with ``check=False`` on the aligner call.
        """
        empty = ~self.mask.any(1)
        if bool(empty.any()):
            rows = torch.nonzero(empty).flatten()[:5].tolist()
            raise ValueError(f"{name}: item(s) {rows} have no real token (mask is all False)")
        step = 1024  # in slices, so that checking adds no memory proportional to the collection
        bad_tok = torch.cat(
            [(~torch.isfinite(self.feats[i : i + step])).any(-1) for i in range(0, len(self), step)]
        ) & self.mask
        if bool(bad_tok.any()):
            i, s = torch.nonzero(bad_tok)[0].tolist()
            raise ValueError(f"{name}: feats has NaN or Inf at item {i}, real token {s}")
        bad_pool = (~torch.isfinite(self.pooled)).any(-1)
        if bool(bad_pool.any()):
            i = int(torch.nonzero(bad_pool)[0])
            raise ValueError(f"{name}: pooled has NaN or Inf at item {i}")


@dataclass(frozen=True)
class Scores:
    """Fine-grained scores of all pairs, both [N_visual, N_text].

    ``v2t`` is s^V of the paper (eq 8; ranks texts for a visual query, row-wise) and ``t2v`` is
    s^T (eq 9; ranks visual items for a text query, column-wise).
    """

    v2t: Tensor
    t2v: Tensor

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
    """

    c: Tensor
    v2t: Tensor
    t2v: Tensor
    d: Tensor
    e: Tensor

    @property
    def score_v2t(self) -> Tensor:
        return (self.c * self.v2t).sum()

    @property
    def score_t2v(self) -> Tensor:
        return (self.c * self.t2v).sum()


# ----------------------------------------------------------------------------------------------
# Block helpers: every tensor below is in the [n, L1, m, L2] layout or broadcastable to it.


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


@functools.cache
def half_matmul_is_slow(dtype: torch.dtype) -> bool:
    """Whether this CPU multiplies ``dtype`` (bf16 / fp16) matrices slower than fp32 ones.

    CPUs without native bf16 units emulate it (on the 2-core AVX2 benchmark machine a bf16
    multiply ran at about 1/8 of fp32), while CPUs with AVX512-BF16 or AMX are faster in bf16.
    Measured once per process on a small multiply (a few milliseconds).
    """
    a = torch.randn(256, 512)
    b = torch.randn(512, 512)

    def best(x: Tensor, y: Tensor) -> float:
        x @ y
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - t0)
        return min(times)

    return best(a.to(dtype), b.to(dtype)) > best(a, b)


def _sim(a: Tensor, t: Tokens, ctx: BlockContext | None, name: str) -> Tensor:
    m, l2, dim = t.feats.shape
    b = t.feats.reshape(m * l2, dim)
    wd = work_dtype(a.dtype)
    if wd != a.dtype and a.device.type == "cpu" and half_matmul_is_slow(a.dtype):
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


# ----------------------------------------------------------------------------------------------


class Aligner(nn.Module):
    """Base class of a plan. Subclasses implement :meth:`plans` and may override :meth:`block`.

    ``plans`` returns T_v2t and T_t2v for a block in the [n, L1, m, L2] layout, zero at padding;
    it is the definition, used by :meth:`plan` and by the default :meth:`block`. ``block``
    returns the two [n, m] score matrices of a block and may take a faster route; tests check
    that it equals ``sum(c * T)``.
    """

    name: ClassVar[str] = ""
    #: Whether gradients reach the features through the scores.
    differentiable: ClassVar[bool] = True
    #: Whether :meth:`plan` weighs the items' own token pairs (False for set methods).
    token_plan: ClassVar[bool] = True

    def __init__(self, chunk: int | None = None) -> None:
        super().__init__()
        if chunk is not None and chunk < 1:
            raise ValueError(f"chunk must be a positive number of pairs, got {chunk}")
        self.chunk = chunk

    # -- to implement ----------------------------------------------------------------------------
    def plans(self, c: Tensor, v: Tokens, t: Tokens) -> tuple[Tensor, Tensor]:
        """T_v2t, T_t2v as [n, L1, m, L2] for a block; ``c`` from :func:`token_sim` in the
        working dtype; ``v`` and ``t`` have zeroed padding."""
        raise NotImplementedError

    def block(self, v: Tokens, t: Tokens, ctx: BlockContext | None = None) -> tuple[Tensor, Tensor]:
        """Scores v2t, t2v as [n, m] for a block of padding-zeroed tokens (default: sum(c * T)).
        ``ctx`` is shared by the blocks of one call; ``None`` treats the block on its own."""
        return self.block_from_plans(v, t)

    def block_from_plans(self, v: Tokens, t: Tokens) -> tuple[Tensor, Tensor]:
        """sum(c * T) over each pair, straight from :meth:`plans`."""
        c = token_sim(v, t)
        tv, tt = self.plans(c, v, t)
        return (c * tv).sum((1, 3)), (c * tt).sum((1, 3))

    def block_elements(self) -> int:
        """Token-pair elements per block when no ``chunk`` is given."""
        return DEFAULT_BLOCK_ELEMENTS

    # -- public API ------------------------------------------------------------------------------
    def pairwise(self, vis: Tokens, txt: Tokens, *, chunk: int | None = None, check: bool = True) -> Scores:
        """Fine-grained scores of all N x M pairs (eq 8-9), padding excluded.

        Args:
            vis: N visual items. txt: M texts.
            chunk: most (visual, text) pairs scored at once; default: the aligner's ``chunk``,
                else a block of about 2**21 token pairs. Memory beyond the [N, M] result is
                bounded by the block, whatever N and M (with autograd on, each block keeps its
                own intermediates for the backward pass).
            check: validate values (NaN/Inf, empty rows); costs one device sync.

        Returns:
            :class:`Scores` with ``v2t`` and ``t2v`` of shape [N, M], float32 for bf16/fp16
            inputs, else the input dtype.
        """
        self._check_pair(vis, txt, check)
        params_need_grad = any(p.requires_grad for p in self.parameters())
        ctx = BlockContext(vis, txt, needs_grad=None if not params_need_grad else torch.is_grad_enabled())
        nb, mb = self._block_shape(len(vis), len(txt), vis.feats.shape[1], txt.feats.shape[1], chunk)
        out_v2t = out_t2v = None  # without autograd, blocks are written straight into the result
        rows_v2t, rows_t2v = [], []
        for i0 in range(0, len(vis), nb):
            # Padding is zeroed block by block: no copy of a whole collection is ever made.
            vb = vis[i0 : i0 + nb].zero_padding()
            cols = []
            for j0 in range(0, len(txt), mb):
                sv, st = self.block(vb, txt[j0 : j0 + mb].zero_padding(), ctx)
                if not ctx.reuse:
                    cols.append((sv, st))
                    continue
                if out_v2t is None:
                    out_v2t = sv.new_empty(len(vis), len(txt))
                    out_t2v = st.new_empty(len(vis), len(txt))
                out_v2t[i0 : i0 + len(vb), j0 : j0 + sv.shape[1]] = sv
                out_t2v[i0 : i0 + len(vb), j0 : j0 + st.shape[1]] = st
            if cols:
                rows_v2t.append(torch.cat([b[0] for b in cols], 1))
                rows_t2v.append(torch.cat([b[1] for b in cols], 1))
        if out_v2t is not None:
            return Scores(out_v2t, out_t2v)
        return Scores(torch.cat(rows_v2t, 0), torch.cat(rows_t2v, 0))

    def forward(self, vis: Tokens, txt: Tokens, *, chunk: int | None = None, check: bool = True) -> Scores:
        """``aligner(vis, txt)`` is :meth:`pairwise`."""
        return self.pairwise(vis, txt, chunk=chunk, check=check)

    def plan(self, vis: Tokens, txt: Tokens, *, check: bool = True) -> Plan:
        """The plan of one pair (``vis[i]``, ``txt[j]``), restricted to real tokens."""
        if len(vis) != 1 or len(txt) != 1:
            raise ValueError(f"plan() explains one pair: got {len(vis)} visual and {len(txt)} text items")
        self._check_pair(vis, txt, check)
        v, t = vis.zero_padding(), txt.zero_padding()
        wd = work_dtype(v.dtype)
        c = token_sim(v, t)
        tv, tt = self.plans(c, v, t)
        d, e = global_weights(v, t)
        sv, st = v.mask[0], t.mask[0]
        pick = lambda x: x[0, :, 0, :][sv][:, st]
        return Plan(c=pick(c), v2t=pick(tv), t2v=pick(tt), d=d[0, :, 0, 0][sv].to(wd), e=e[0, 0, 0, :][st].to(wd))

    def auxiliary_losses(self, vis: Tokens, txt: Tokens, vis_cols: Tokens, txt_cols: Tokens, targets_v2t: Tensor,
                         targets_t2v: Tensor, logit_scale: Tensor) -> dict[str, tuple[float, Tensor]]:
        """Extra training losses of this method for a batch, name -> (weight, value); none here."""
        return {}

    # -- helpers ---------------------------------------------------------------------------------
    def _check_pair(self, vis: Tokens, txt: Tokens, check: bool) -> None:
        if not isinstance(vis, Tokens) or not isinstance(txt, Tokens):
            raise TypeError(f"expected two Tokens, got {type(vis).__name__} and {type(txt).__name__}")
        if vis.dim != txt.dim:
            raise ValueError(f"feature sizes differ between modalities: visual D={vis.dim}, text D={txt.dim}")
        if vis.dtype != txt.dtype:
            raise ValueError(f"dtypes differ between modalities: visual {vis.dtype}, text {txt.dtype}")
        if vis.device != txt.device:
            raise ValueError(f"devices differ between modalities: visual {vis.device}, text {txt.device}")
        if len(vis) == 0 or len(txt) == 0:
            raise ValueError(f"nothing to score: {len(vis)} visual and {len(txt)} text items")
        if check:
            vis.check_values("visual tokens")
            txt.check_values("text tokens")

    def _block_shape(self, n: int, m: int, l1: int, l2: int, chunk: int | None) -> tuple[int, int]:
        pairs = chunk or self.chunk or max(1, self.block_elements() // (l1 * l2))
        # Roughly square blocks keep both sides of the matrix multiply wide.
        nb = min(n, max(1, math.isqrt(pairs)))
        mb = min(m, max(1, pairs // nb))
        nb = min(n, max(1, pairs // mb))
        return nb, mb

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.hparams().items())

    def hparams(self) -> dict:
        """The hyperparameters this aligner was built with (for reports and configs)."""
        return {}
