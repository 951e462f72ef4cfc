"""Sampled video frames decoded once and kept on disk (``tokenflow prepare-frames``).

Layout of a cache folder::

    CACHE/manifest.json     {"format": 1, "frames": 12, "size": 224, "resize": ..., "tokenflow": ...}
    CACHE/<video stem>.npy  uint8 [F, H, W, 3]: the F <= frames sampled frames, RGB

A frame is stored after the first step of CLIP's preprocessing, the shortest side resized to
``size`` (bicubic; ``size=0`` keeps the decoded size), so the encoder's own preprocessing of a
cached frame skips its resize and gives the tensor it gives on the decoded frame, bit for bit
(:meth:`FrameCache.check_preprocess` verifies that for a backbone). Every file is written
atomically, so a file present is complete and preparing again keeps it. A video missing from
the cache is decoded as before (``MediaDataset`` falls back to
:func:`~tokenflow.data.video.read_video_frames`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .._extras import require
from .._version import __version__
from ..errors import InputError, UserError
from ..utils import atomic_path, write_text_atomic
from .errors import MediaError
from .video import read_video_frames

__all__ = ["VIDEO_SPLITS", "FrameCache", "prepare_frames", "resize_frame", "with_frame_cache"]

FORMAT = 1
RESIZE = "shortest side to size, bicubic, long side rounded (tokenflow clip_preprocess); size 0: none"
MANIFEST = "manifest.json"
#: Splits of each video dataset that together hold all its videos.
VIDEO_SPLITS = {"msrvtt": ("train-9k", "test"), "msvd": ("train", "val", "test"), "activitynet": ("train", "val_1")}


def resize_frame(image, size: int):
    """Resize the shortest side of a PIL image to ``size`` (bicubic), as
    :func:`tokenflow.models.transforms.clip_preprocess` does before its centre crop; 0: unchanged."""
    require("PIL", "train", "resizing video frames")
    from PIL import Image

    w, h = image.size
    if size <= 0:
        return image
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    return image if (nw, nh) == (w, h) else image.resize((nw, nh), Image.Resampling.BICUBIC)


@dataclass(frozen=True)
class FrameCache:
    """A cache folder and the settings its frames were made with (``size`` 0: decoded size)."""

    root: Path
    frames: int
    size: int

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @classmethod
    def create(cls, root: str | Path, frames: int, size: int) -> FrameCache:
        """Open ``root`` for writing: write its manifest, or check the one there (a cache made with
        other settings is refused)."""
        if frames < 1 or size < 0:
            raise InputError(f"need frames >= 1 and size >= 0, got {frames}, {size}")
        root = Path(root)
        if (root / MANIFEST).is_file():
            cache = cls.open(root, frames=frames, size=size)
            if cache.size != size:  # reading, a size-0 cache serves any size; writing, it must match
                raise UserError(f"frame cache {cache.manifest} was made with size={cache.size}; preparing it "
                                f"with size={size} would mix two sizes: use another --out")
            return cache
        root.mkdir(parents=True, exist_ok=True)
        manifest = {"format": FORMAT, "frames": frames, "size": size, "resize": RESIZE, "tokenflow": __version__}
        write_text_atomic(root / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        return cls(root, frames, size)

    @classmethod
    def open(cls, root: str | Path, frames: int | None = None, size: int | None = None) -> FrameCache:
        """Open ``root`` for reading, refusing a cache whose settings differ from ``frames`` and
        ``size`` (when given; a cache of size 0 serves every size)."""
        path = Path(root) / MANIFEST
        if not path.is_file():
            raise UserError(f"frame cache {root}: no {MANIFEST} (make one with tokenflow prepare-frames)")
        try:
            m = json.loads(path.read_text())
            have = {"frames": int(m["frames"]), "size": int(m["size"])}
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise UserError(f"frame cache {path}: not a tokenflow frame-cache manifest ({e})") from None
        if m.get("format") != FORMAT:
            raise UserError(f"frame cache {path}: format {m.get('format')!r}, this tokenflow reads {FORMAT}")
        for key, want in (("frames", frames), ("size", size)):
            if want is not None and have[key] != want and not (key == "size" and have[key] == 0):
                raise UserError(f"frame cache {path} was made with {key}={have[key]}, this run needs {key}={want}; "
                                f"prepare another cache with tokenflow prepare-frames --{key} {want}")
        return cls(Path(root), have["frames"], have["size"])

    def file_for(self, video: str | Path) -> Path:
        """Where the frames of ``video`` live (named by its stem, like the dataset's video ids)."""
        return self.root / f"{Path(video).stem}.npy"

    def read_array(self, video: str | Path) -> np.ndarray | None:
        """The cached frames of ``video`` as one uint8 array [F, H, W, 3], or None when it has none
        (or an unreadable file)."""
        try:
            arr = np.load(self.file_for(video), allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3 or not 0 < len(arr) <= self.frames:
            return None
        return arr

    def read(self, video: str | Path) -> list | None:
        """The cached frames of ``video`` as PIL images, or None when it has none (or an unreadable file)."""
        require("PIL", "train", "reading cached video frames")
        from PIL import Image

        arr = self.read_array(video)
        return None if arr is None else [Image.fromarray(a) for a in arr]

    def write(self, video: str | Path, frames: Sequence) -> Path:
        """Store the sampled ``frames`` of ``video`` (PIL images), resized, atomically."""
        arr = np.stack([np.asarray(resize_frame(f.convert("RGB"), self.size), dtype=np.uint8) for f in frames])
        dest = self.file_for(video)
        with atomic_path(dest) as tmp, open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)
        return dest

    def check_preprocess(self, preprocess: Callable) -> None:
        """Refuse a backbone whose preprocessing gives other tensors on cached frames than on
        decoded ones (its resize is not the cache's), trying landscape and portrait frames."""
        if self.size == 0:
            return
        from PIL import Image

        g = np.random.default_rng(0)
        for w, h in ((320, 240), (640, 360), (240, 426), (self.size, self.size)):
            img = Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8))
            if not torch.equal(preprocess(img), preprocess(resize_frame(img, self.size))):
                raise UserError(f"frame cache {self.manifest}: frames resized to {self.size} change this backbone's "
                                "input tensors (its preprocessing resizes differently); prepare the cache with "
                                "--size 0 (frames kept at their decoded size)")


def with_frame_cache(split, root: str | Path | None, num_frames: int, preprocess: Callable, image_size: int):
    """``split`` reading its videos through the frame cache at ``root`` (checked against
    ``num_frames``, ``image_size`` and ``preprocess``); ``split`` itself when ``root`` is None."""
    if root is None or split is None:
        return split
    if split.modality != "video":
        raise UserError(f"frame cache {root}: {split.name} is an image split; frame caches hold video frames")
    cache = FrameCache.open(root, frames=num_frames, size=image_size)
    cache.check_preprocess(preprocess)
    return replace(split, frame_cache=cache)


def _prepare_one(cache: FrameCache, video: Path) -> tuple[str, str, str]:
    """(``"kept"`` | ``"written"`` | ``"failed"``, path, reason) for one video."""
    if cache.file_for(video).is_file():
        return "kept", str(video), ""
    try:
        cache.write(video, read_video_frames(video, cache.frames))
    except MediaError as e:
        return "failed", e.path, e.reason
    return "written", str(video), ""


def prepare_frames(videos: Iterable[str | Path], cache: FrameCache, *, workers: int = 0,
                   on_error: str = "fail") -> dict:
    """Decode, sample, resize and store the frames of every video not yet in ``cache``.

    Resumable: a video whose file exists is kept as it is. ``workers`` processes decode in
    parallel (0: this one). A video that cannot be read stops the run with its path and the
    reason (``on_error="fail"``) or is listed and left out of the cache (``"skip"``), so that
    reading it later reports it as before. Returns the counts and the skipped videos.
    """
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    videos = list(dict.fromkeys(Path(v) for v in videos))
    stems: dict[str, Path] = {}
    for v in videos:
        if stems.setdefault(v.stem, v) != v:
            raise UserError(f"{v} and {stems[v.stem]} share the name {v.stem!r}: one frame cache holds one of them")
    counts = {"kept": 0, "written": 0, "failed": 0}
    skipped = []
    pool = ProcessPoolExecutor(workers) if workers > 0 else None
    try:
        results = pool.map(_prepare_one, [cache] * len(videos), videos, chunksize=4) if pool else (
            _prepare_one(cache, v) for v in videos)
        for status, path, reason in results:
            counts[status] += 1
            if status == "failed":
                if on_error == "fail":
                    raise MediaError(path, reason)
                skipped.append({"path": path, "reason": reason})
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return {"videos": len(videos), **counts, "skipped": skipped}
