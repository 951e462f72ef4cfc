"""ActivityNet Captions as video-paragraph retrieval, in the layout CLIP4Clip uses.

Files under ``root``: ``train.json``, ``val_1.json`` (and ``val_2.json`` if present), each a
dict ``video_id -> {"duration", "timestamps", "sentences"}``; the videos in ``root/videos``
(``<video_id>.mp4``, e.g. ``v_QOlSCBRmfWY.mp4``; any common video extension is found).
A video's sentences are joined into one paragraph.

Splits: ``train``; ``val_1`` (alias ``test``) is the split the paper and CLIP4Clip report;
``val_2`` is the other annotation of the same videos, which is not independent of ``val_1``.
No separate validation split exists: ``val`` is a deterministic 10 % of the training videos
(every tenth) and ``train`` without them is ``train-90``.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .base import RetrievalSplit, find_media, read_json

__all__ = ["load_activitynet"]

_FILES = {"train": "train.json", "train-90": "train.json", "val": "train.json", "val_1": "val_1.json",
          "test": "val_1.json", "val_2": "val_2.json"}


def load_activitynet(root: str | Path, split: str = "val_1", video_dir: str | Path | None = None) -> RetrievalSplit:
    """Read an ActivityNet split as (video, paragraph) pairs."""
    root = Path(root)
    if split not in _FILES:
        raise InputError(f"ActivityNet split must be one of {sorted(_FILES)}, got {split!r}")
    video_dir = Path(video_dir) if video_dir else root / "videos"
    path = root / _FILES[split]
    data = read_json(path, "ActivityNet captions")
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a dict video_id -> {{duration, timestamps, sentences}}")
    ids, texts = [], []
    for k, (vid, ann) in enumerate(data.items()):
        if split == "val" and k % 10 != 9 or split == "train-90" and k % 10 == 9:
            continue
        sents = ann.get("sentences") if isinstance(ann, dict) else None
        if not isinstance(sents, list) or not sents or not all(isinstance(s, str) for s in sents):
            raise InputError(f"{path}: {vid!r}.sentences must be a non-empty list of strings")
        ids.append(vid)
        texts.append(" ".join(s.strip() for s in sents))
    return RetrievalSplit(f"activitynet/{split}", "video", ids, find_media(video_dir, ids), texts,
                          list(range(len(ids))), protocol={"texts": "paragraphs"})
