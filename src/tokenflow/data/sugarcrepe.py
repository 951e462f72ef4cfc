"""SugarCrepe: compositional hard negatives over COCO val2017 images, in its published files.

SugarCrepe (Hsieh, Zhang, Ma, Kembhavi and Krishna, "SugarCrepe: Fixing Hackable Benchmarks for
Vision-Language Compositionality", NeurIPS 2023 Datasets and Benchmarks) ships one JSON file per
category (``add_att.json``, ``add_obj.json``, ``replace_att.json``, ``replace_obj.json``,
``replace_rel.json``, ``swap_att.json``, ``swap_obj.json``). Each is an object keyed ``"0"``,
``"1"``, ... whose values are ``{"filename": "000000544519.jpg", "caption": ...,
"negative_caption": ...}``; the filename is a COCO val2017 image. Every item is a binary choice.

The category is the file's name, so any subset of the files works; ``.json`` and ``.json.xz``
are both read (a folder holding both forms of a category reads the plain one).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import FileError
from .hard_negatives import HardNegative, make_item, read_json_file

__all__ = ["SUGARCREPE_CATEGORIES", "load_sugarcrepe", "sugarcrepe_files"]

SUGARCREPE_CATEGORIES = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")


def _category(path: Path) -> str:
    name = path.name
    for suffix in (".json.xz", ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    raise FileError(f"{path}: a SugarCrepe file is CATEGORY.json or CATEGORY.json.xz")


def sugarcrepe_files(annotations: str | Path, categories: Sequence[str] | None = None) -> dict[str, Path]:
    """Category -> file. ``annotations`` is a folder holding some of the category files (named as
    published, plain or ``.xz``) or one such file; ``categories`` keeps only those (each must be
    there)."""
    annotations = Path(annotations)
    if annotations.is_file():
        found = {_category(annotations): annotations}
    elif annotations.is_dir():
        found = {}
        for cat in SUGARCREPE_CATEGORIES:
            for name in (f"{cat}.json", f"{cat}.json.xz"):  # the plain file first
                if cat not in found and (annotations / name).is_file():
                    found[cat] = annotations / name
        if not found:
            raise FileError(f"{annotations}: no SugarCrepe file here (expected some of "
                            f"{', '.join(c + '.json' for c in SUGARCREPE_CATEGORIES)}, or .json.xz)")
    else:
        raise FileError(f"SugarCrepe annotations {annotations} not found (a folder of CATEGORY.json files, or one)")
    if categories:
        missing = [c for c in categories if c not in found]
        if missing:
            raise FileError(f"{annotations}: no file for categor{'y' if len(missing) == 1 else 'ies'} "
                            f"{', '.join(missing)} (found: {', '.join(found)})")
        found = {c: found[c] for c in categories}
    return found


def load_sugarcrepe(annotations: str | Path, images: str | Path, categories: Sequence[str] | None = None, *,
                    check_media: bool = True) -> list[HardNegative]:
    """Read SugarCrepe's category files (see :func:`sugarcrepe_files`) into items, in file order.

    ``images``: the COCO val2017 image folder. With ``check_media`` a missing image stops here,
    naming the file, the entry's key and the image. Malformed entries raise
    :class:`~tokenflow.errors.FileError` naming the file and the key.
    """
    images = Path(images)
    if check_media and not images.is_dir():
        raise FileError(f"image folder {images} not found (COCO val2017 images for SugarCrepe)")
    items = []
    for cat, path in sugarcrepe_files(annotations, categories).items():
        data = read_json_file(path, "SugarCrepe file")
        if not isinstance(data, dict) or not data:
            raise FileError(f"{path}: expected a non-empty object keyed \"0\", \"1\", ... of "
                            "{filename, caption, negative_caption}")
        for key, e in data.items():
            where = f"{path} entry {key!r}"
            if not isinstance(e, dict):
                raise FileError(f"{where}: expected an object with filename, caption, negative_caption")
            missing = [k for k in ("filename", "caption", "negative_caption") if k not in e]
            if missing:
                raise FileError(f"{where}: missing {', '.join(missing)}")
            if not isinstance(e["filename"], str) or not e["filename"].strip():
                raise FileError(f"{where}: filename is empty")
            items.append(make_item(images / e["filename"], e["caption"], [e["negative_caption"]], cat, where,
                                   check_media=check_media, negative_names=["negative_caption"]))
    return items
