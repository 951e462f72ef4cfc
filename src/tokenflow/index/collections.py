"""Where a collection lies on disk and how it is indexed: the index folders a path names, the store
an index was built over, a split of loose media files, and the index kind chosen by size. The
command line (``tokenflow index``, ``search``, ``serve``) and the web app share these."""

from __future__ import annotations

import math
import os
from pathlib import Path

from ..errors import UserError
from .parts import store_parts

__all__ = ["AUTO_FLAT_MAX", "auto_settings", "index_dirs", "media_split", "store_of"]

#: ``--kind auto``: an exact flat index up to this many items; above it IVF with 8-bit vectors,
#: so that the index stays near 0.5 GB at a million items of D = 512.
AUTO_FLAT_MAX = 262_144


def index_dirs(path: str | Path) -> list[Path]:
    """The index folders that ``--index PATH`` names: an index folder itself, a store with its
    ``index/``, or a store in parts (every part's ``index/``); ``FileNotFoundError`` naming the
    first part without one."""
    from .shortlist import INDEX_SETTINGS

    path = Path(path)
    if (path / INDEX_SETTINGS).is_file():
        return [path]
    dirs = [p / "index" for p in store_parts(path)]
    missing = [d for d in dirs if not (d / INDEX_SETTINGS).is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: no index here ({INDEX_SETTINGS} not found); build it with "
                                f"tokenflow index {path}")
    return dirs


def store_of(index_dir: Path) -> Path:
    """The store folder that the index in ``index_dir`` was built over."""
    from .shortlist import _read_settings

    return Path(index_dir) / _read_settings(Path(index_dir))[0]["store"]


def media_split(files: list[Path], modality: str, name: str):
    """A :class:`~tokenflow.data.base.RetrievalSplit` of media files without captions; item ids are
    the paths relative to their common folder, without the extension (with it where two files
    would otherwise share an id)."""
    from ..data.base import RetrievalSplit

    if not files:
        raise UserError(f"{name}: no {modality} files")
    root = Path(os.path.commonpath([str(p.parent) for p in files]))
    ids = [str(p.relative_to(root).with_suffix("")) for p in files]
    if len(set(ids)) != len(ids):  # a.jpg and a.png: keep the extension
        ids = [str(p.relative_to(root)) for p in files]
    return RetrievalSplit(name, modality, ids, list(files), [], [])


def auto_settings(n: int) -> dict:
    """``--kind auto`` for a collection of ``n`` items: flat up to :data:`AUTO_FLAT_MAX`; above it
    IVF with about sqrt(n) lists trained on 64 points per list, 8-bit vectors, and 1/32 of the
    lists probed (at least 16)."""
    if n <= AUTO_FLAT_MAX:
        return {"kind": "flat"}
    nlist = int(math.sqrt(n))
    return {"kind": "ivf", "encoding": "sq8", "nlist": nlist, "nprobe": max(16, nlist // 32),
            "train_size": 64 * nlist}
