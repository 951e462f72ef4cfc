"""Captions that are true of more than one item: extra positives from a sidecar file.

A dataset's own files link each caption to one item. When a caption is also true of other
items (a synthetic ``scenes`` caption naming three objects that several images hold), counting
those items as wrong answers punishes a correct ranking. The sidecar lists them::

    {"format": "tokenflow-positives/1",
     "positives": [{"split": "test", "item": "17", "text": "a red circle and a blue cross",
                    "also": ["42", "96"]}, ...]}

``item`` is the caption's own item id, ``also`` the other item ids it is true of; ``split`` is
optional (an entry without it applies to every split). Entries whose items are not in the
split are ignored, so one file serves every split.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..errors import InputError
from .base import RetrievalSplit, read_json

__all__ = ["add_positives", "read_positives"]

FORMAT = "tokenflow-positives/1"


def read_positives(path: str | Path) -> list[dict]:
    """The entries of a positives file, checked; errors name the file and the entry."""
    path = Path(path)
    data = read_json(path, "positives file")
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("positives"), list):
        raise InputError(f"{path}: expected an object with \"format\": \"{FORMAT}\" and a 'positives' list")
    for j, e in enumerate(data["positives"]):
        where = f"{path}: positives[{j}]"
        if not isinstance(e, dict):
            raise InputError(f"{where}: expected an object")
        for key, kind in (("item", str), ("text", str), ("also", list)):
            if not isinstance(e.get(key), kind):
                raise InputError(f"{where}.{key}: expected a {kind.__name__}, got {e.get(key)!r}")
        if not all(isinstance(a, str) for a in e["also"]):
            raise InputError(f"{where}.also: expected a list of item id strings")
        if "split" in e and not isinstance(e["split"], str):
            raise InputError(f"{where}.split: expected a split name, got {e['split']!r}")
    return data["positives"]


def add_positives(split: RetrievalSplit, path: str | Path, split_name: str | None = None) -> RetrievalSplit:
    """``split`` with the extra positives of the file at ``path`` that fall inside it.

    ``split_name`` (train, val, test) selects the entries marked with that split; entries
    without a split always apply.
    """
    entries = read_positives(path)
    item_index = {iid: i for i, iid in enumerate(split.item_ids)}
    texts_of: dict[tuple[int, str], list[int]] = {}
    for k, (text, i) in enumerate(zip(split.texts, split.text_item, strict=True)):
        texts_of.setdefault((i, text), []).append(k)
    extra = set(split.extra_positives)
    for e in entries:
        if split_name is not None and e.get("split", split_name) != split_name:
            continue
        own = item_index.get(e["item"])
        if own is None:
            continue
        for k in texts_of.get((own, e["text"].strip()), []):
            extra.update((item_index[a], k) for a in e["also"] if a in item_index)
    return replace(split, extra_positives=tuple(sorted(extra)))
