"""MSR-VTT in the layout CLIP4Clip uses, 1k-A split.

Files under ``root``: ``MSRVTT_data.json`` (``videos``: video_id, split; ``sentences``:
video_id, caption), ``MSRVTT_train.9k.csv`` and ``MSRVTT_train.7k.csv`` (column ``video_id``; the
7k one only for ``train-7k``), ``MSRVTT_JSFUSION_test.csv``
(columns ``video_id``, ``sentence``: the 1,000 test pairs) and the videos in
``root/MSRVTT_Videos`` (``<video_id>.mp4``).

Splits:
- ``test``: the 1k-A test pairs, one caption per video.
- ``train-9k``: all 9,000 training videos with all their captions (the standard training set).
- ``train-7k``: the 7,010 videos of ``MSRVTT_train.7k.csv`` with all their captions (the smaller
  training set of the 1k-A papers, e.g. CLIP4Clip's and X-Pool's "7k" rows).
- ``val`` / ``train``: 1k-A ships no validation split and public code selects checkpoints on
  the test set. Here ``val`` is the training videos that MSR-VTT's own split file marks
  ``validate`` (497 in the real release), evaluated with all their captions, and ``train`` is
  ``train-9k`` without them. Select checkpoints and hyperparameters on ``val``, report ``test``.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from ..errors import InputError
from .base import RetrievalSplit, find_media, read_json

__all__ = ["load_msrvtt", "read_csv_column"]


def read_csv_column(path: Path, columns: tuple[str, ...]) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"MSR-VTT file {path} not found")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{path}: missing column(s) {missing}; header is {reader.fieldnames}")
        return [{c: row[c] for c in columns} for row in reader]


def _read_data_json(path: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    data = read_json(path, "MSR-VTT file")
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected an object with 'videos' and 'sentences' lists")
    for key in ("videos", "sentences"):
        if not isinstance(data.get(key), list):
            raise InputError(f"{path}: expected a '{key}' list")
    captions: dict[str, list[str]] = defaultdict(list)
    for k, s in enumerate(data["sentences"]):
        if not isinstance(s, dict) or not isinstance(s.get("video_id"), str) or not isinstance(s.get("caption"), str):
            raise InputError(f"{path}: sentences[{k}] needs string fields 'video_id' and 'caption'")
        captions[s["video_id"]].append(s["caption"].strip())
    splits = {}
    for k, v in enumerate(data["videos"]):
        if not isinstance(v, dict) or "video_id" not in v:
            raise InputError(f"{path}: videos[{k}] needs a 'video_id' field")
        splits[v["video_id"]] = v.get("split", "")
    return captions, splits


def load_msrvtt(root: str | Path, split: str = "test", video_dir: str | Path | None = None) -> RetrievalSplit:
    """Read an MSR-VTT split (test, val, train, train-9k, train-7k); see the module docstring."""
    root = Path(root)
    video_dir = Path(video_dir) if video_dir else root / "MSRVTT_Videos"
    if split == "test":
        rows = read_csv_column(root / "MSRVTT_JSFUSION_test.csv", ("video_id", "sentence"))
        if not rows:
            raise InputError(f"{root / 'MSRVTT_JSFUSION_test.csv'}: no rows")
        ids = [r["video_id"] for r in rows]
        texts = [r["sentence"].strip() for r in rows]
        return RetrievalSplit("msrvtt/1k-A-test", "video", ids, find_media(video_dir, ids), texts,
                              list(range(len(ids))), protocol={"captions_per_video": 1})
    if split not in ("val", "train", "train-9k", "train-7k"):
        raise InputError(f"MSR-VTT split must be test, val, train, train-9k or train-7k, got {split!r}")
    csv_name = "MSRVTT_train.7k.csv" if split == "train-7k" else "MSRVTT_train.9k.csv"
    train_ids = [r["video_id"] for r in read_csv_column(root / csv_name, ("video_id",))]
    captions, official = _read_data_json(root / "MSRVTT_data.json")
    if split == "val":
        ids = [v for v in train_ids if official.get(v) == "validate"]
    elif split == "train":
        ids = [v for v in train_ids if official.get(v) != "validate"]
    else:
        ids = train_ids
    if not ids:
        raise InputError(f"{root}: MSR-VTT split {split!r} is empty (val = train.9k videos marked 'validate' "
                         "in MSRVTT_data.json)")
    no_caption = [v for v in ids if not captions.get(v)]
    if no_caption:
        raise InputError(f"{root / 'MSRVTT_data.json'}: no captions for videos {no_caption[:5]}")
    texts, text_item = [], []
    for i, v in enumerate(ids):
        texts += captions[v]
        text_item += [i] * len(captions[v])
    return RetrievalSplit(f"msrvtt/{split}", "video", ids, find_media(video_dir, ids), texts, text_item,
                          protocol={"captions_per_video": "all"})
