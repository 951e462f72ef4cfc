"""Loading a backbone folder: a local Hugging Face CLIP, SigLIP or SigLIP 2 folder, or a tiny built-in
encoder."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError
from .base import DualEncoder
from .hf_clip import HFCLIP
from .hf_siglip import HFSiglip
from .tiny import TinyCLIP

__all__ = ["load_backbone"]


def load_backbone(folder: str | Path) -> DualEncoder:
    """Load a backbone saved as a folder, chosen by its ``config.json``'s ``model_type``: a Hugging
    Face CLIP (``clip``), SigLIP (``siglip``) or SigLIP 2 (``siglip2``) folder, or a tiny built-in
    encoder (``tokenflow-tiny``). Never downloads anything."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"backbone folder {folder} has no config.json (expected a local CLIP or SigLIP "
                                "folder or a folder written by TinyCLIP.save_pretrained)")
    try:
        model_type = json.loads(cfg_path.read_text()).get("model_type")
    except json.JSONDecodeError as e:
        raise InputError(f"{cfg_path}: not valid JSON ({e})") from None
    if model_type == "tokenflow-tiny":
        return TinyCLIP.from_pretrained(folder)
    if model_type == "clip":
        return HFCLIP.from_pretrained(folder)
    if model_type in ("siglip", "siglip2"):
        return HFSiglip.from_pretrained(folder)
    raise InputError(f"{cfg_path}: model_type {model_type!r} is not supported (expected 'clip', 'siglip', "
                     "'siglip2' or 'tokenflow-tiny')")
