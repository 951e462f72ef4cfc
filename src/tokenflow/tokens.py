"""``Tokens``: the token features of a batch of items of one modality.

This module is the bottom layer of the package: it imports torch and nothing of tokenflow, so
models, losses and training code can use ``Tokens`` without loading any alignment plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["IndexLike", "Tokens"]

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
