"""Steps shared by the Hugging Face adapters (:mod:`.hf_clip`, :mod:`.hf_siglip`): checking a
local model folder, reading its weights, and bounding the caption length by the text tower's
positions. Messages name the model family."""

from __future__ import annotations

from pathlib import Path

from ..errors import FileError, InputError

__all__ = ["check_folder", "checked_text_len", "load_weights"]


def check_folder(folder: str | Path, family: str, written_by: str) -> Path:
    """``folder`` as a Path once it exists and holds ``config.json`` and ``preprocessor_config.json``;
    ``FileNotFoundError`` naming what is missing (``written_by``: what writes such a folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{family} folder {folder} does not exist (weights are loaded from a local folder "
                                "only)")
    for name in ("config.json", "preprocessor_config.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder}: missing {name}; expected a folder written by {written_by}")
    return folder


def load_weights(model_cls, folder: Path, what: str):
    """``model_cls.from_pretrained(folder)`` (local files only) in eval mode; a weights file that
    cannot be read (truncated, corrupt, pickled) gives ``FileError`` naming the folder, not a stack."""
    try:
        return model_cls.from_pretrained(str(folder), local_files_only=True).eval()
    except Exception as e:
        raise FileError(f"{folder}: cannot read the {what} weights ({type(e).__name__}: {e})") from None


def checked_text_len(n: int, limit: int, family: str) -> int:
    """``n`` when it is a whole number from 3 to ``limit`` (the text tower's positions), else
    an ``InputError`` naming the limit."""
    if not isinstance(n, int) or not 3 <= n <= limit:
        raise InputError(f"max_words {n}: this {family} text encoder has {limit} positions "
                         f"(text_config.max_position_embeddings), so captions take 3 to {limit} tokens")
    return n
