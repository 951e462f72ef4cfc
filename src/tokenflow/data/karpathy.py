"""Flickr30K and MS-COCO from Karpathy's split files (``dataset_flickr30k.json``,
``dataset_coco.json``) and an image folder.

The JSON holds ``{"images": [{"filename", "split", "sentences": [{"raw", ...}], "filepath"?}]}``
with ``split`` one of train / restval / val / test. ``train`` here means train + restval, as
is standard for COCO (Flickr30K has no restval). Images are at ``image_root/filepath/filename``
(COCO) or ``image_root/filename`` (Flickr30K). COCO's 5K test set is the whole test split; the
1K protocol averages the metrics over its five consecutive folds of 1,000 images.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .base import RetrievalSplit, read_json

__all__ = ["KARPATHY_SPLITS", "coco_1k_folds", "load_karpathy"]

KARPATHY_SPLITS = {"train": ("train", "restval"), "val": ("val",), "test": ("test",), "restval": ("restval",)}


def load_karpathy(json_path: str | Path, image_root: str | Path, split: str = "test",
                  captions_per_image: int | None = 5, name: str | None = None) -> RetrievalSplit:
    """Read one split of a Karpathy JSON.

    Args:
        json_path: ``dataset_flickr30k.json`` or ``dataset_coco.json``.
        image_root: folder the file names are relative to.
        split: train (train + restval), val, test or restval.
        captions_per_image: keep the first k captions of each image (5 as in the standard
            protocol; a few COCO images have 6 or 7); None keeps all.
    """
    json_path, image_root = Path(json_path), Path(image_root)
    if split not in KARPATHY_SPLITS:
        raise InputError(f"split must be one of {sorted(KARPATHY_SPLITS)}, got {split!r}")
    data = read_json(json_path, "Karpathy split file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise InputError(f"{json_path}: expected an object with an 'images' list (Karpathy format)")
    wanted = KARPATHY_SPLITS[split]
    ids, paths, texts, text_item = [], [], [], []
    for k, img in enumerate(data["images"]):
        where = f"{json_path}: images[{k}]"
        if not isinstance(img, dict):
            raise InputError(f"{where}: expected an object, got {type(img).__name__}")
        for key in ("filename", "split", "sentences"):
            if key not in img:
                raise InputError(f"{where}: missing field '{key}'")
        if img["split"] not in ("train", "restval", "val", "test"):
            raise InputError(f"{where}.split: expected train/restval/val/test, got {img['split']!r}")
        if img["split"] not in wanted:
            continue
        sents = img["sentences"]
        if not isinstance(sents, list) or not sents:
            raise InputError(f"{where}.sentences: expected a non-empty list of captions")
        if captions_per_image is not None:
            sents = sents[:captions_per_image]
        item = len(ids)
        for j, s in enumerate(sents):
            raw = s.get("raw") if isinstance(s, dict) else None
            if raw is None and isinstance(s, dict) and isinstance(s.get("tokens"), list):
                raw = " ".join(s["tokens"])
            if not isinstance(raw, str) or not raw.strip():
                raise InputError(f"{where}.sentences[{j}]: expected a 'raw' caption string")
            texts.append(raw.strip())
            text_item.append(item)
        rel = Path(img.get("filepath", "") or "") / img["filename"]
        ids.append(str(img.get("cocoid", img.get("imgid", img["filename"]))))
        paths.append(image_root / rel)
    if not ids:
        raise InputError(f"{json_path}: no images in split {split!r}")
    dataset = data.get("dataset", json_path.stem.replace("dataset_", ""))
    return RetrievalSplit(name or f"{dataset}/{split}", "image", ids, paths, texts, text_item,
                          protocol={"captions_per_image": captions_per_image})


def fold_indices(split: RetrievalSplit, fold_size: int = 1000) -> list[tuple[list[int], list[int]]]:
    """COCO's 1K protocol as indices: consecutive folds of ``fold_size`` items, each as (its
    items, the texts of those items), in split order."""
    n = len(split)
    if fold_size < 1 or n % fold_size:
        raise InputError(f"{split.name}: {n} items do not split into folds of {fold_size}")
    folds = []
    for a in range(0, n, fold_size):
        items = list(range(a, a + fold_size))
        folds.append((items, [k for k, i in enumerate(split.text_item) if a <= i < a + fold_size]))
    return folds


def coco_1k_folds(split: RetrievalSplit, fold_size: int = 1000) -> list[RetrievalSplit]:
    """COCO 1K protocol: consecutive folds of ``fold_size`` images (5 folds of the 5K test set)."""
    return [split.subset(items, name=f"{split.name}/1k-fold{f}")
            for f, (items, _) in enumerate(fold_indices(split, fold_size))]
