"""Hard-negative items: one image (or video), its true caption, minimally changed false ones.

The generic file format serves any benchmark of this kind (SugarCrepe has its own loader,
:mod:`tokenflow.data.sugarcrepe`)::

    {"format": "tokenflow-hard-negatives/1",
     "items": [{"image": "images/0001.jpg", "caption": "a red circle left of a blue square",
                "negatives": ["a blue circle left of a red square"], "category": "swap-colors"}]}

``image`` (or ``video``) is a path relative to the images folder (default: the file's folder)
or absolute; ``negatives`` holds one or more false captions; ``category`` is optional
(``"all"``). A bare list of items is read as well, and a ``.xz``-compressed file as the plain one.
"""

from __future__ import annotations

import json
import lzma
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import FileError
from ..utils import write_text_atomic

__all__ = ["HARD_NEGATIVES_FORMAT", "HardNegative", "read_hard_negatives", "read_json_file",
           "write_hard_negatives"]

HARD_NEGATIVES_FORMAT = "tokenflow-hard-negatives/1"
DEFAULT_CATEGORY = "all"


@dataclass(frozen=True)
class HardNegative:
    """One item: ``media`` (an image or a video file), the true ``caption``, the false
    ``negatives`` (one or more), its ``category`` and ``where`` it was read (file and entry, for
    messages)."""

    media: Path
    caption: str
    negatives: tuple[str, ...]
    category: str = DEFAULT_CATEGORY
    where: str = ""

    @property
    def texts(self) -> tuple[str, ...]:
        """The true caption, then the negatives."""
        return (self.caption, *self.negatives)


def read_json_file(path: Path, what: str):
    """Parse a ``.json`` or ``.json.xz`` file; a missing or malformed one raises :class:`FileError`
    naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileError(f"{what} {path} not found")
    try:
        if path.suffix == ".xz":
            with lzma.open(path, "rt", encoding="utf-8") as f:
                return json.load(f)
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise FileError(f"{path}: not valid JSON ({e})") from None
    except (lzma.LZMAError, EOFError, UnicodeDecodeError) as e:
        raise FileError(f"{path}: cannot be read as {what} ({type(e).__name__}: {e})") from None


def _text(value, where: str, what: str) -> str:
    if not isinstance(value, str):
        raise FileError(f"{where}: {what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise FileError(f"{where}: {what} is empty")
    return value


def make_item(media: Path, caption, negatives, category, where: str, *, check_media: bool = True,
              kind: str = "image", negative_names: list[str] | None = None) -> HardNegative:
    """Check one entry's values and build its :class:`HardNegative`; ``where`` names the file and
    entry in every message, ``negative_names`` the negatives' keys (default ``negative 0``, ...)."""
    caption = _text(caption, where, "caption")
    if isinstance(negatives, str) or not isinstance(negatives, list) or not negatives:
        raise FileError(f"{where}: negatives must be a non-empty list of captions")
    names = negative_names or [f"negative {k}" for k in range(len(negatives))]
    negs = tuple(_text(n, where, name) for n, name in zip(negatives, names, strict=True))
    category = DEFAULT_CATEGORY if category is None else _text(category, where, "category")
    if check_media and not media.is_file():
        raise FileError(f"{where}: {kind} {media} not found")
    return HardNegative(media, caption, negs, category, where)


def read_hard_negatives(path: str | Path, images_root: str | Path | None = None, *,
                        check_media: bool = True) -> list[HardNegative]:
    """Read a hard-negative file in the generic format (see the module docstring).

    ``images_root``: the folder that relative media paths start from (default: the file's
    folder). With ``check_media`` a missing file stops here, naming the entry. Every problem
    raises :class:`~tokenflow.errors.FileError` naming ``path`` and the entry.
    """
    path = Path(path)
    data = read_json_file(path, "hard-negative file")
    root = Path(images_root) if images_root is not None else path.parent
    if isinstance(data, dict):
        if data.get("format", HARD_NEGATIVES_FORMAT) != HARD_NEGATIVES_FORMAT:
            raise FileError(f"{path}: format {data.get('format')!r} is not {HARD_NEGATIVES_FORMAT}")
        entries = data.get("items")
    else:
        entries = data
    if not isinstance(entries, list):
        raise FileError(f"{path}: expected {{\"format\": \"{HARD_NEGATIVES_FORMAT}\", \"items\": [...]}} or a list "
                        "of items with image, caption, negatives")
    if not entries:
        raise FileError(f"{path}: no items")
    items = []
    for k, e in enumerate(entries):
        where = f"{path} entry {k}"
        if not isinstance(e, dict):
            raise FileError(f"{where}: expected an object with image, caption, negatives, got {type(e).__name__}")
        keys = [key for key in ("image", "video") if key in e]
        if len(keys) != 1:
            raise FileError(f"{where}: needs exactly one of 'image' or 'video' (the media path), has "
                            f"{sorted(e)}")
        media = _text(e[keys[0]], where, keys[0])
        missing = [key for key in ("caption", "negatives") if key not in e]
        if missing:
            raise FileError(f"{where}: missing {' and '.join(missing)}")
        items.append(make_item(root / media, e["caption"], e["negatives"], e.get("category"), where,
                               check_media=check_media, kind=keys[0]))
    if len({"video" in e for e in entries}) > 1:
        raise FileError(f"{path}: mixes image and video items; write one file per modality")
    return items


def write_hard_negatives(path: str | Path, entries: Sequence[dict], note: str = "") -> Path:
    """Write ``entries`` (each ``{"image" or "video", "caption", "negatives", "category"}``, media
    paths relative to the file's folder) in the generic format, atomically; returns ``path``."""
    path = Path(path)
    doc = {"format": HARD_NEGATIVES_FORMAT, **({"note": note} if note else {}), "items": list(entries)}
    write_text_atomic(path, json.dumps(doc, indent=1) + "\n")
    return path
