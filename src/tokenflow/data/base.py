"""What every dataset loader returns, and how media files are read.

A :class:`RetrievalSplit` is a list of visual items (image or video files) and a list of texts,
each text belonging to one item. ``positives()`` is the [items, texts] bool matrix that the
metrics take, so several captions per item (Flickr30K, COCO, MSVD) need no special case.
Media are read lazily by :class:`MediaDataset`, which applies the missing/corrupt-file policy:
``"fail"`` stops with the path and the reason, ``"skip"`` records the path and the reason and
leaves the item out (its texts with it), and the evaluation report counts them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from .._extras import require
from ..errors import InputError
from .errors import MediaError
from .video import read_video_frames

if TYPE_CHECKING:
    from .frame_cache import FrameCache

__all__ = [
    "VIDEO_EXTENSIONS",
    "MediaDataset",
    "MediaError",
    "OnError",
    "RetrievalSplit",
    "collate_media",
    "find_media",
    "load_image",
    "media_files",
]

OnError = Literal["fail", "skip"]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")


@dataclass(frozen=True)
class RetrievalSplit:
    """Visual items and texts of one split. ``text_item[k]`` is the item that text k describes."""

    name: str
    modality: Literal["image", "video"]
    item_ids: list[str]
    item_paths: list[Path]
    texts: list[str]
    text_item: list[int]
    protocol: dict = field(default_factory=dict)
    #: (item, text) pairs that are correct answers besides ``text_item``: a caption true of
    #: several items (see :func:`tokenflow.data.positives.add_positives`).
    extra_positives: tuple[tuple[int, int], ...] = ()
    #: videos are read from this :class:`~tokenflow.data.frame_cache.FrameCache` when it holds
    #: them (see :func:`~tokenflow.data.frame_cache.with_frame_cache`), else decoded.
    frame_cache: FrameCache | None = None

    def __post_init__(self) -> None:
        if len(self.item_ids) != len(self.item_paths):
            raise ValueError(f"{self.name}: {len(self.item_ids)} item ids but {len(self.item_paths)} paths")
        if len(self.texts) != len(self.text_item):
            raise ValueError(f"{self.name}: {len(self.texts)} texts but {len(self.text_item)} text->item links")
        n = len(self.item_ids)
        bad = [k for k, i in enumerate(self.text_item) if not 0 <= i < n]
        if bad:
            raise ValueError(f"{self.name}: texts {bad[:5]} point to items outside [0, {n})")
        bad = [p for p in self.extra_positives if not (0 <= p[0] < n and 0 <= p[1] < len(self.texts))]
        if bad:
            raise ValueError(f"{self.name}: extra positives {bad[:5]} point outside the split")

    def __len__(self) -> int:
        return len(self.item_ids)

    def positives(self) -> Tensor:
        """bool [items, texts]: True where the text describes the item."""
        pos = torch.zeros(len(self.item_ids), len(self.texts), dtype=torch.bool)
        pos[torch.tensor(self.text_item, dtype=torch.long), torch.arange(len(self.texts))] = True
        for i, k in self.extra_positives:
            pos[i, k] = True
        return pos

    def captions_per_item(self) -> list[int]:
        counts = [0] * len(self.item_ids)
        for i in self.text_item:
            counts[i] += 1
        return counts

    def subset(self, items: Sequence[int], name: str | None = None) -> RetrievalSplit:
        """Keep the given items (in that order) and their texts."""
        new_index = {old: new for new, old in enumerate(items)}
        keep = [k for k, i in enumerate(self.text_item) if i in new_index]
        new_text = {old: new for new, old in enumerate(keep)}
        return replace(
            self,
            name=name or self.name,
            item_ids=[self.item_ids[i] for i in items],
            item_paths=[self.item_paths[i] for i in items],
            texts=[self.texts[k] for k in keep],
            text_item=[new_index[self.text_item[k]] for k in keep],
            extra_positives=tuple((new_index[i], new_text[k]) for i, k in self.extra_positives
                                  if i in new_index and k in new_text),
        )

    def summary(self) -> dict:
        out = {"name": self.name, "modality": self.modality, "items": len(self.item_ids), "texts": len(self.texts),
               **({"protocol": self.protocol} if self.protocol else {})}
        if self.extra_positives:
            out["texts_with_several_positives"] = len({k for _, k in self.extra_positives})
        return out


def read_json(path: Path, what: str):
    """Parse a dataset's JSON file; a missing or malformed file names itself and what it is."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None


def load_image(path: str | Path):
    """Open an image fully (so truncated files fail here, not later) as RGB; MediaError if not."""
    require("PIL", "train", "reading images")
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise MediaError(path, "file not found")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise MediaError(path, f"cannot decode image ({type(e).__name__}: {e})") from None


def media_files(folder: str | Path, modality: str, *, recursive: bool = False) -> list[Path]:
    """The image (or, ``modality="video"``, video) files in ``folder`` (and its subfolders when
    ``recursive``), sorted; chosen by extension (:data:`IMAGE_EXTENSIONS`, :data:`VIDEO_EXTENSIONS`)."""
    exts = VIDEO_EXTENSIONS if modality == "video" else IMAGE_EXTENSIONS
    folder = Path(folder)
    entries = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in entries if p.is_file() and p.suffix.lower() in exts)


def find_media(folder: Path, ids: Sequence[str], extensions: Sequence[str] = VIDEO_EXTENSIONS) -> list[Path]:
    """Path of each id in ``folder`` with any of ``extensions`` (``folder/id.ext``). An id with no
    file gets ``folder/id<first extension>``, which the media loader then reports as missing."""
    found: dict[str, Path] = {}
    if folder.is_dir():
        with os.scandir(folder) as it:
            for entry in it:
                stem, ext = os.path.splitext(entry.name)
                if ext.lower() in extensions and stem not in found:
                    found[stem] = Path(entry.path)
    return [found.get(i, folder / f"{i}{extensions[0]}") for i in ids]


class MediaDataset(torch.utils.data.Dataset):
    """Reads and preprocesses the visual items of a split.

    Returns ``(index, pixels, frame_mask, error)``: images give pixels [3, H, W]; videos give
    [F, 3, H, W] padded to ``num_frames`` and a bool frame mask [F]. With ``on_error="skip"`` a
    bad file gives ``pixels=None`` and ``error=(path, reason)``; with ``"fail"`` it raises.
    """

    def __init__(self, split: RetrievalSplit, preprocess: Callable, num_frames: int = 12,
                 on_error: OnError = "fail"):
        if on_error not in ("fail", "skip"):
            raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
        self.split, self.preprocess, self.num_frames, self.on_error = split, preprocess, num_frames, on_error

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        path = self.split.item_paths[i]
        try:
            if self.split.modality == "image":
                return i, self.preprocess(load_image(path)), None, None
            cache = getattr(self.split, "frame_cache", None)
            cached = cache.read(path) if cache is not None and cache.frames == self.num_frames else None
            frames = cached or read_video_frames(path, self.num_frames)
            x = torch.stack([self.preprocess(f) for f in frames])
            out = torch.zeros(self.num_frames, *x.shape[1:], dtype=x.dtype)
            out[: len(frames)] = x
            mask = torch.zeros(self.num_frames, dtype=torch.bool)
            mask[: len(frames)] = True
            return i, out, mask, None
        except MediaError as e:
            if self.on_error == "fail":
                raise
            return i, None, None, (e.path, e.reason)


def collate_media(batch):
    """Stack the good items; pass the bad ones through as ``(index, path, reason)``."""
    good = [b for b in batch if b[1] is not None]
    bad = [(b[0], *b[3]) for b in batch if b[1] is None]
    if not good:
        return [], None, None, bad
    idx = [b[0] for b in good]
    pixels = torch.stack([b[1] for b in good])
    mask = torch.stack([b[2] for b in good]) if good[0][2] is not None else None
    return idx, pixels, mask, bad
