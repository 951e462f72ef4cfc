"""The dual-encoder protocol: images, videos and texts in, :class:`~tokenflow.Tokens` out.

A backbone implements two hooks that return *projected, unnormalised* features in the joint
space:

- ``image_features(pixels [B, 3, H, W]) -> (patches [B, P, D], global [B, D])``
- ``text_features(ids [B, L], attention_mask [B, L]) -> (tokens [B, L, D], global [B, D])``

and this base class turns them into ``Tokens`` the way CLIP does before alignment (every
feature L2-normalised), including videos: frames are encoded as images; a video's global
feature is the mean of its real frames' global features (re-normalised, as CLIP4Clip's
mean pooling), and its tokens are either the F frame features or all frame patches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tokens import Tokens

__all__ = ["DualEncoder", "VideoTokens"]

VideoTokens = Literal["frames", "patches"]


class DualEncoder(nn.Module):
    """Base class of every backbone. Subclasses set ``embed_dim``, ``image_size``,
    ``max_text_len`` and implement the two feature hooks, ``tokenize`` and ``preprocess``."""

    embed_dim: int
    image_size: int
    max_text_len: int

    # -- hooks ---------------------------------------------------------------------------
    def image_features(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def text_features(self, ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Texts -> (ids [B, L] int64, attention_mask [B, L] bool), at most ``max_text_len``."""
        raise NotImplementedError

    def preprocess(self, image) -> Tensor:
        """One PIL image -> [3, image_size, image_size] float tensor, ready for the encoder."""
        raise NotImplementedError

    @property
    def patch_grid(self) -> tuple[int, int]:
        """(rows, columns) of the patch tokens of one image, in row-major order."""
        raise NotImplementedError

    def decode_tokens(self, ids: Sequence[int]) -> list[str]:
        """The text of each token id (for explanations)."""
        raise NotImplementedError

    # -- public --------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode_images(self, pixels: Tensor) -> Tokens:
        """[B, 3, H, W] -> Tokens: patch tokens [B, P, D] (all real), global = class feature."""
        if pixels.dim() != 4 or pixels.shape[1] != 3:
            raise ValueError(f"images must have shape [B, 3, H, W], got {tuple(pixels.shape)}")
        patches, pooled = self.image_features(pixels)
        mask = torch.ones(patches.shape[:2], dtype=torch.bool, device=patches.device)
        return Tokens(F.normalize(patches, dim=-1), mask, F.normalize(pooled, dim=-1))

    def encode_videos(
        self, frames: Tensor, frame_mask: Tensor | None = None, tokens: VideoTokens = "frames"
    ) -> Tokens:
        """[B, F, 3, H, W] frames (padded frames masked out by ``frame_mask`` [B, F]) -> Tokens.

        ``tokens="frames"``: the F frame features [B, F, D]; ``"patches"``: every patch of every
        frame [B, F*P, D]. The global feature is the normalised mean of the real frames'
        normalised global features.
        """
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"videos must have shape [B, F, 3, H, W], got {tuple(frames.shape)}")
        b, f = frames.shape[:2]
        if frame_mask is None:
            frame_mask = torch.ones(b, f, dtype=torch.bool, device=frames.device)
        if frame_mask.dtype != torch.bool or tuple(frame_mask.shape) != (b, f):
            raise ValueError(f"frame_mask must be a bool tensor of shape {(b, f)}, got {frame_mask.dtype} "
                             f"{tuple(frame_mask.shape)}")
        if not bool(frame_mask.any(dim=1).all()):
            raise ValueError("every video needs at least one real frame (frame_mask has an all-False row)")
        if tokens not in ("frames", "patches"):
            raise ValueError(f"tokens must be 'frames' or 'patches', got {tokens!r}")
        frame_mask = frame_mask.to(frames.device)
        patches, pooled = self.image_features(frames.flatten(0, 1))
        frame_feats = F.normalize(pooled, dim=-1).unflatten(0, (b, f))  # [B, F, D]
        w = frame_mask.to(frame_feats.dtype).unsqueeze(-1)
        mean = (frame_feats * w).sum(1) / w.sum(1)
        video = F.normalize(mean, dim=-1)
        if tokens == "frames":
            return Tokens(frame_feats, frame_mask, video)
        p = patches.shape[1]
        patch_feats = F.normalize(patches, dim=-1).unflatten(0, (b, f)).flatten(1, 2)  # [B, F*P, D]
        mask = frame_mask.repeat_interleave(p, dim=1)
        return Tokens(patch_feats, mask, video)

    def encode_texts(self, ids: Tensor, attention_mask: Tensor) -> Tokens:
        """ids, attention_mask [B, L] -> Tokens: every real token, global = the EOS feature."""
        if ids.dim() != 2 or tuple(attention_mask.shape) != tuple(ids.shape):
            raise ValueError(f"ids and attention_mask must both be [B, L], got {tuple(ids.shape)} and "
                             f"{tuple(attention_mask.shape)}")
        mask = attention_mask.to(device=ids.device, dtype=torch.bool)
        if not bool(mask.any(dim=1).all()):
            raise ValueError("every text needs at least one real token (attention_mask has an all-zero row)")
        feats, pooled = self.text_features(ids, mask)
        return Tokens(F.normalize(feats, dim=-1), mask, F.normalize(pooled, dim=-1))

    def encode_text_strings(self, texts: Sequence[str]) -> Tokens:
        """Tokenize and encode a list of strings."""
        ids, mask = self.tokenize(texts)
        return self.encode_texts(ids.to(self.device), mask.to(self.device))

    def save_pretrained(self, folder) -> object:
        """Write the backbone as a folder that ``load_backbone`` reads back."""
        raise NotImplementedError

    def config_dict(self) -> dict:
        """What a report records about the backbone."""
        return {"class": type(self).__name__, "embed_dim": self.embed_dim, "image_size": self.image_size,
                "max_text_len": self.max_text_len}


def eos_positions(mask: Tensor) -> Tensor:
    """Index of the last real token of every row (CLIP's EOS sits right before the padding)."""
    pos = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask, pos, -1).amax(dim=1)
