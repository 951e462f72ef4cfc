"""Loading a backbone folder: a local Hugging Face CLIP folder or a tiny built-in encoder."""

from __future__ import annotations

import json
from pathlib import Path

from .base import DualEncoder
from .hf_clip import HFCLIP
from .tiny import TinyCLIP

__all__ = ["load_backbone"]


def load_backbone(folder: str | Path) -> DualEncoder:
    """Load a backbone saved as a folder: a Hugging Face CLIP folder (``model_type: clip``) or
    a tiny built-in encoder (``model_type: tokenflow-tiny``). Never downloads anything."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"backbone folder {folder} has no config.json (expected a local CLIP folder "
                                "or a folder written by TinyCLIP.save_pretrained)")
    try:
        model_type = json.loads(cfg_path.read_text()).get("model_type")
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path}: not valid JSON ({e})") from None
    if model_type == "tokenflow-tiny":
        return TinyCLIP.from_pretrained(folder)
    if model_type == "clip":
        return HFCLIP.from_pretrained(folder)
    raise ValueError(f"{cfg_path}: model_type {model_type!r} is not supported (expected 'clip' or 'tokenflow-tiny')")
