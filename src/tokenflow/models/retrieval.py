"""A retrieval model: backbone + plan + fusion weights + CLIP's learnable logit scale.

Saved as a folder that is a backbone folder plus ``tokenflow.json`` (the plan, its
hyperparameters, the fusion weights and the logit scale) and, for plans with parameters,
``aligner.safetensors``. ``load_backbone`` reads such a folder as a plain backbone, and
``tokenflow evaluate --model FOLDER`` takes the plan and weights from it unless told otherwise.
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import torch
from torch import Tensor, nn

from .._extras import require
from ..align import Aligner, Tokens, get_aligner, get_aligner_class
from ..utils import atomic_path, read_safetensors, write_text_atomic
from .base import DualEncoder, VideoTokens
from .loading import load_backbone

__all__ = ["RetrievalModel", "hparam_problems", "load_for_scoring", "read_head_config"]

HEAD_FILE = "tokenflow.json"
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
    def from_pretrained(cls, folder: str | Path) -> RetrievalModel:
        """Load a folder written by :meth:`save_pretrained` (a bare backbone folder gives the
        ``tokenflow`` plan with unit weights)."""
        folder = Path(folder)
        backbone = load_backbone(folder)
        head = read_head_config(folder) or {"aligner": "tokenflow", "hparams": {}}
        aligner = None if head["aligner"] is None else get_aligner(head["aligner"], **head.get("hparams", {}))
        if aligner is not None and (folder / "aligner.safetensors").is_file():
            aligner.load_state_dict(read_safetensors(folder / "aligner.safetensors", "plan weights"))
        return cls(backbone, aligner, w_global=head.get("w_global", 1.0), w_fine=head.get("w_fine", 1.0),
                   logit_scale=head.get("logit_scale"), max_logit_scale=head.get("max_logit_scale", 100.0),
                   logit_bias=head.get("logit_bias"))


def hparam_problems(name: str, hparams: dict) -> list[str]:
    """What is wrong with ``hparams`` for the plan ``name``: each hyperparameter whose
    constructor default is a number must be a finite number of that kind (an int where the
    default is an int); empty when all is well. Unknown names are left to ``get_aligner``."""
    params = inspect.signature(get_aligner_class(name).__init__).parameters
    problems = []
    for key, value in hparams.items():
        default = params[key].default if key in params else None
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            continue
        kinds = (int,) if isinstance(default, int) else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
            want = "an integer" if kinds == (int,) else "a finite number"
            problems.append(f"{key}={value!r}: {name}'s {key} must be {want} (default {default!r})")
    return problems


def read_head_config(folder: str | Path) -> dict | None:
    """``tokenflow.json`` of a saved model folder, or ``None`` for a bare backbone folder."""
    path = Path(folder) / HEAD_FILE
    if not path.is_file():
        return None
    try:
        head = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(head, dict) or "aligner" not in head:
        raise ValueError(f"{path}: expected an object with 'aligner', 'hparams', 'w_global', 'w_fine'")
    return head


def load_for_scoring(folder: str | Path, aligner: str | None = None,
                     hparams: dict | None = None) -> tuple[DualEncoder, Aligner | None, str, dict, list[str]]:
    """What ``evaluate``, ``encode`` and ``search`` score with: ``(backbone, aligner, plan name,
    head, notes)``.

    A folder trained by tokenflow (it has a head config) brings its plan, learned plan weights
    and fusion weights (``head``); ``aligner`` other than None replaces the plan, and
    ``hparams`` override the plan's (learned weights are kept when they still fit). A bare
    backbone folder gets ``aligner`` (default ``tokenflow``; ``"none"``: global only) with
    ``hparams``. ``notes`` are messages for the user (a learned plan freshly initialised).
    Hyperparameters that are not finite numbers of their kind raise ``ValueError``.
    """
    from ..align import aligner_for

    hparams, notes = dict(hparams or {}), []
    head = read_head_config(folder)

    def check(name: str) -> None:
        problems = hparam_problems(name, hparams)
        if problems:
            raise ValueError("--hp: " + "; ".join(problems))

    if head is not None and aligner is None:
        model = RetrievalModel.from_pretrained(folder)
        backbone, plan = model.backbone, model.aligner
        if hparams and head["aligner"] is not None:
            check(head["aligner"])
            plan = aligner_for(head["aligner"], {**head.get("hparams", {}), **hparams}, dim=backbone.embed_dim)
            if model.aligner is not None and plan.state_dict().keys() == model.aligner.state_dict().keys():
                plan.load_state_dict(model.aligner.state_dict())  # learned plan weights stay
        return backbone, plan, head["aligner"] or "none", head, notes
    backbone = load_backbone(folder)
    name = aligner or "tokenflow"
    if name == "none":
        return backbone, None, name, head or {}, notes
    check(name)
    plan = aligner_for(name, hparams, dim=backbone.embed_dim)
    if any(True for _ in plan.parameters()):
        notes.append(f"{name} has learned weights and {folder} holds none; they are freshly initialised. "
                     "Use a folder trained with it instead.")
    return backbone, plan, name, head or {}, notes
