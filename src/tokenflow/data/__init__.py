"""Datasets in their standard file layouts, media reading, and the synthetic benchmark."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .activitynet import load_activitynet
from .base import MediaDataset, MediaError, RetrievalSplit, collate_media, find_media, load_image
from .hard_negatives import HardNegative, read_hard_negatives, write_hard_negatives
from .karpathy import coco_1k_folds, load_karpathy
from .msrvtt import load_msrvtt
from .msvd import convert_pickled_captions, load_msvd
from .sugarcrepe import load_sugarcrepe
from .synthetic import make_synthetic
from .video import read_video_frames, uniform_frame_indices

__all__ = [
    "DATASETS",
    "HardNegative",
    "MediaDataset",
    "MediaError",
    "RetrievalSplit",
    "coco_1k_folds",
    "collate_media",
    "convert_pickled_captions",
    "find_media",
    "load_activitynet",
    "load_image",
    "load_karpathy",
    "load_msrvtt",
    "load_msvd",
    "load_split",
    "load_sugarcrepe",
    "make_synthetic",
    "read_hard_negatives",
    "read_video_frames",
    "uniform_frame_indices",
    "write_hard_negatives",
]

DATASETS = ("flickr30k", "coco", "msrvtt", "msvd", "activitynet")


def load_split(dataset: str, root: str | Path, split: str = "test", media: str | Path | None = None) -> RetrievalSplit:
    """Load ``split`` of ``dataset`` from its standard layout under ``root``.

    ``media`` overrides the image or video folder (defaults: ``flickr30k-images``, the root for
    COCO, ``MSRVTT_Videos``, ``YouTubeClips``, ``videos``).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    if dataset == "flickr30k":
        img = Path(media) if media else (root / "flickr30k-images" if (root / "flickr30k-images").is_dir() else root)
        return load_karpathy(root / "dataset_flickr30k.json", img, split)
    if dataset == "coco":
        return load_karpathy(root / "dataset_coco.json", Path(media) if media else root, split)
    if dataset == "msrvtt":
        return load_msrvtt(root, split, media)
    if dataset == "msvd":
        return load_msvd(root, split, media)
    if dataset == "activitynet":
        return load_activitynet(root, split, media)
    raise InputError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
