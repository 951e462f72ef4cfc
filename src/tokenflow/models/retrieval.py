"""A retrieval model: backbone + plan + fusion weights + CLIP's learnable logit scale.

Saved as a folder that is a backbone folder plus ``tokenflow.json`` (the plan, its
hyperparameters, the fusion weights and the logit scale) and, for plans with parameters,
``aligner.safetensors``. ``load_backbone`` reads such a folder as a plain backbone, and
``tokenflow evaluate --model FOLDER`` takes the plan and weights from it unless told otherwise.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import Tensor, nn

from .._extras import require
from ..align import Aligner, Tokens
from ..errors import FileError
from ..utils import atomic_path, write_text_atomic
from .base import DualEncoder, VideoTokens
from .scoring import HEAD_FILE, Scoring, load_scoring

__all__ = ["RetrievalModel"]

CLIP_LOGIT_SCALE = 1 / 0.07  # CLIP's initial temperature


class RetrievalModel(nn.Module):
    """``sim = w_global * (v_bar . t_bar) + w_fine * s_dir``; training multiplies by ``exp(logit_scale)``
    (and adds ``logit_bias``, a parameter only for the sigmoid loss; it does not change rankings)."""

    def __init__(self, backbone: DualEncoder, aligner: Aligner | None, *, w_global: float = 1.0,
                 w_fine: float = 1.0, logit_scale: float | None = None, max_logit_scale: float = 100.0,
                 logit_bias: float | None = None) -> None:
        super().__init__()
        self.backbone, self.aligner = backbone, aligner
        self.w_global, self.w_fine = float(w_global), float(w_fine) if aligner is not None else 0.0
        init = logit_scale or getattr(backbone, "initial_logit_scale", None) or CLIP_LOGIT_SCALE
        self.max_logit_scale = float(max_logit_scale)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(min(init, max_logit_scale)), dtype=torch.float32))
        self.logit_bias = None if logit_bias is None else nn.Parameter(torch.tensor(float(logit_bias)))

    def scale(self) -> Tensor:
        """``exp(logit_scale)``."""
        return self.logit_scale.exp()

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Keep ``exp(logit_scale)`` in [1, max] after an optimizer step, as CLIP does."""
        self.logit_scale.clamp_(0.0, math.log(self.max_logit_scale))

    def encode_visual(self, pixels: Tensor, frame_mask: Tensor | None = None,
                      video_tokens: VideoTokens = "frames") -> Tokens:
        """Images [B, 3, H, W] or videos [B, F, 3, H, W] (with ``frame_mask``) -> Tokens."""
        if pixels.dim() == 5:
            return self.backbone.encode_videos(pixels, frame_mask, tokens=video_tokens)
        return self.backbone.encode_images(pixels)

    def encode_text(self, ids: Tensor, mask: Tensor) -> Tokens:
        return self.backbone.encode_texts(ids, mask)

    def new_parameters(self) -> list[nn.Parameter]:
        """Parameters that are not the backbone's (logit scale, plan weights)."""
        own = [self.logit_scale] + ([] if self.logit_bias is None else [self.logit_bias])
        return own + ([] if self.aligner is None else list(self.aligner.parameters()))

    def head_config(self) -> dict:
        return {"aligner": None if self.aligner is None else self.aligner.name,
                "hparams": {} if self.aligner is None else self.aligner.hparams(),
                "w_global": self.w_global, "w_fine": self.w_fine,
                "logit_scale": float(self.scale().detach()), "max_logit_scale": self.max_logit_scale,
                **({} if self.logit_bias is None else {"logit_bias": float(self.logit_bias.detach())})}

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the backbone folder plus ``tokenflow.json`` (and ``aligner.safetensors``)."""
        require("safetensors", "train", "saving a model")
        from safetensors.torch import save_file

        folder = Path(folder)
        self.backbone.save_pretrained(folder)
        if self.aligner is not None and len(self.aligner.state_dict()):
            with atomic_path(folder / "aligner.safetensors") as tmp:
                save_file({k: v.detach().cpu().contiguous() for k, v in self.aligner.state_dict().items()},
                          str(tmp))
        write_text_atomic(folder / HEAD_FILE, json.dumps(self.head_config(), indent=2) + "\n")
        return folder

    @classmethod
    def from_scoring(cls, scoring: Scoring) -> RetrievalModel:
        """What :func:`~tokenflow.models.scoring.load_scoring` gave, as a model: its backbone, plan and
        fusion weights, and the trained folder's logit scale (and its cap) and logit bias."""
        head = scoring.head
        return cls(scoring.backbone, scoring.aligner, w_global=scoring.w_global, w_fine=scoring.w_fine,
                   logit_scale=head.get("logit_scale"), max_logit_scale=head.get("max_logit_scale", 100.0),
                   logit_bias=head.get("logit_bias"))

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> RetrievalModel:
        """Load a folder written by :meth:`save_pretrained` (a bare backbone folder gives the
        ``tokenflow`` plan with unit weights): :meth:`from_scoring` of
        :func:`~tokenflow.models.scoring.load_scoring` without overrides, so the same model that
        ``evaluate``, ``search`` and ``serve`` score with. Plan weights that do not fit the saved
        plan raise :class:`~tokenflow.errors.FileError` (they are not freshly initialised)."""
        scoring = load_scoring(folder)
        if scoring.notes:  # without overrides, a note means only: the saved weights do not fit the saved plan
            raise FileError(f"{Path(folder) / 'aligner.safetensors'}: the plan weights do not fit plan "
                            f"{scoring.name!r} built with the folder's hyperparameters "
                            f"{scoring.head.get('hparams') or {}}")
        return cls.from_scoring(scoring)

