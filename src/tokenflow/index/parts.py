"""The stores a folder holds: one store, or the ``part-*`` stores that ``tokenflow encode`` writes
under ``torchrun`` (one per rank)."""

from __future__ import annotations

from pathlib import Path

from ..errors import FileError

__all__ = ["store_parts"]


def store_parts(folder: Path) -> list[Path]:
    """The stores under ``folder``: itself when it holds a manifest, else its ``part-*`` stores."""
    from .store import MANIFEST

    folder = Path(folder)
    if (folder / MANIFEST).is_file():
        return [folder]
    parts = sorted(p for p in folder.glob("part-*") if p.is_dir())
    if not parts:
        raise FileNotFoundError(f"{folder}: no feature store here ({MANIFEST} not found, and no part-*/{MANIFEST}); "
                                "write one with tokenflow encode or tokenflow import-features")
    unfinished = [p.name for p in parts if not (p / MANIFEST).is_file()]
    if unfinished:  # a rank that died: searching the others would quietly miss its items
        raise FileError(f"{folder}: parts {', '.join(unfinished)} are unfinished (no {MANIFEST}); run the same "
                        "tokenflow encode again to finish them")
    return parts
