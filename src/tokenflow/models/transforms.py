"""CLIP-style image preprocessing with Pillow only (no torchvision)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .._extras import require

__all__ = ["clip_preprocess"]


def clip_preprocess(image, size: int, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Resize the shortest side to ``size`` (bicubic), centre-crop ``size`` x ``size``, scale to
    [0, 1] and normalise by ``mean`` / ``std``. Returns [3, size, size] float32."""
    require("PIL", "train", "preprocessing images")
    from PIL import Image

    img = image.convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    img = img.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - m) / s
