"""Evaluate, search and explain with feature stores and no backbone: features written by
``tokenflow encode`` or computed elsewhere and brought in by ``tokenflow import-features``. The
commands' options are read in :mod:`tokenflow.cli`; this module holds what they do with them.

How store ids map to a dataset split (what ``tokenflow encode`` writes, so that its stores work
here too):

- a visual store's ids are the split's item ids (:attr:`RetrievalSplit.item_ids`: the Karpathy
  JSON's ``cocoid``/``imgid``/file name, MSR-VTT's and MSVD's video ids, ActivityNet's ids);
- a text store's ids are ``ITEM_ID#K``: the caption's item id and K, the caption's index in the
  split's list of captions (:attr:`RetrievalSplit.texts`; ``tokenflow encode --captions``).

A store may hold more rows than the split (the whole dataset); a split item or caption missing
from it is refused, with the count. Scoring is :func:`tokenflow.eval.evaluate.evaluate`'s, on the
stored features.

The compositional evaluation (``tokenflow evaluate-compositional --visual-store V --text-store
T``) has no split: the hard-negative file's entries are matched to store rows instead
(:func:`hard_negative_tokens`). A visual row is an entry's image when its path is the image's
file (a relative path starts at the images folder), or else when its id is the image's path
relative to the images folder, its file name, or its file name without the extension (COCO's
``000000391895``). Captions, the true ones and every negative, are matched by their text (a
text store written with ``texts``). Entries missing from a store are refused, with the count.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..tokens import Tokens
from .importer import store_source
from .store import FeatureStore

__all__ = ["caption_ids", "describe_stores", "evaluate_stores", "hard_negative_tokens", "open_stores",
           "plan_for_stores", "source_mismatch", "split_tokens", "store_tokens"]


def caption_ids(split) -> list[str]:
    """The text store id of each caption of ``split``: ``ITEM_ID#K`` (K: its index in the split)."""
    return [f"{split.item_ids[i]}#{k}" for k, i in enumerate(split.text_item)]


def open_stores(folder: str | Path, kind: str, what: str) -> list[FeatureStore]:
    """The finished store(s) at ``folder`` (a store, or a folder of ``part-*`` stores) of ``kind``."""
    from .parts import store_parts

    stores = [FeatureStore(p) for p in store_parts(Path(folder))]
    for s in stores:
        if s.kind != kind:
            raise UserError(f"{what} {s.folder}: a store of {s.kind} features; expected {kind} features")
    return stores


def store_tokens(stores: Sequence[FeatureStore], ids: Sequence[str], what: str, hint: str = "") -> Tokens:
    """Tokens of the rows with ``ids`` (in that order) over ``stores``; missing ids are refused
    with their count and the first few."""
    where: dict[str, tuple[int, int]] = {}
    for s, store in enumerate(stores):
        for r, i in enumerate(store.ids):
            where.setdefault(i, (s, r))
    missing = [i for i in ids if i not in where]
    if missing:
        shown = ", ".join(repr(i) for i in missing[:3])
        raise UserError(f"{what} {stores[0].folder}: {len(missing)} of the {len(ids)} ids asked for are not in it "
                        f"(first: {shown}){hint}")
    parts, order = [], []
    for s, store in enumerate(stores):
        sel = [k for k, i in enumerate(ids) if where[i][0] == s]
        if sel:
            parts.append(store.tokens([where[ids[k]][1] for k in sel]))
            order += sel
    tokens = Tokens.cat(parts)
    if order != sorted(order):
        tokens = tokens[np.argsort(order).tolist()]
    return tokens


def _check_dims(visual: Sequence[FeatureStore], text: Sequence[FeatureStore]) -> None:
    """Refuse visual and text stores whose features differ in size D (two different models)."""
    if visual[0].dim != text[0].dim:
        raise UserError(f"--visual-store {visual[0].folder} has D={visual[0].dim}, --text-store {text[0].folder} "
                        f"D={text[0].dim}: features of different models")


def describe_stores(vstores: Sequence[FeatureStore], tstores: Sequence[FeatureStore]) -> dict:
    """The report's ``backbone`` for stored features: the store folders, and where the first
    visual and first text store's features came from
    (:func:`~tokenflow.index.importer.store_source`)."""
    return {"stores": {"visual": [str(s.folder) for s in vstores], "text": [str(s.folder) for s in tstores]},
            "visual": store_source(vstores[0]), "text": store_source(tstores[0])}


def split_tokens(split, visual: Sequence[FeatureStore], text: Sequence[FeatureStore]) -> tuple[Tokens, Tokens]:
    """The stored features of every item and caption of ``split``, in split order (an empty split,
    or one without captions, is refused naming it)."""
    if not len(split) or not split.texts:
        what = "no items" if not len(split) else "no captions"
        raise UserError(f"{split.name}: the split holds {what}; nothing to take from the stores (check --dataset, "
                        "--root and --split)")
    info = visual[0].tokens_info or {}
    if info.get("modality") in ("image", "video") and info["modality"] != split.modality:
        raise UserError(f"--visual-store {visual[0].folder}: features of {info['modality']}s, but {split.name} holds "
                        f"{split.modality}s")
    _check_dims(visual, text)
    vis = store_tokens(visual, split.item_ids, "--visual-store",
                       f"; a visual store's ids are the split's item ids ({split.item_ids[0]!r}, ...)")
    ids = caption_ids(split)
    txt = store_tokens(text, ids, "--text-store",
                       f"; a text store's ids are ITEM_ID#K, K the caption's index in the split "
                       f"({ids[0]!r}, ...), as tokenflow encode --captions writes")
    return vis, txt


def source_mismatch(a: FeatureStore, b: FeatureStore) -> str | None:
    """Why the features of stores ``a`` and ``b`` look like two different models' (else None):
    different backbone weights, or imported from differently named models."""
    sa, sb = store_source(a), store_source(b)
    if sa["kind"] == sb["kind"] == "encoded":
        ha, hb = (sa.get("backbone") or {}).get("sha256"), (sb.get("backbone") or {}).get("sha256")
        if ha and hb and ha != hb:
            return f"{a.folder} and {b.folder} were encoded by different weights (sha256 {ha[:12]}, {hb[:12]})"
    elif sa["kind"] == sb["kind"] == "imported" and sa.get("model") != sb.get("model"):
        return f"{a.folder} holds features of {sa.get('model')!r}, {b.folder} of {sb.get('model')!r}"
    return None


def plan_for_stores(aligner: str | None, hparams: dict, dim: int, model: str | Path | None = None, *,
                    w_global: float | None = None, w_fine: float | None = None):
    """The :class:`~tokenflow.models.scoring.Scoring` of stored features of size ``dim``, without
    a backbone (``backbone`` None): the plan of a trained ``model`` folder (its learned weights and
    fusion weights, ``head``) with the usual overrides, through
    :func:`~tokenflow.models.scoring.load_scoring`, else ``aligner`` (default ``tokenflow``;
    ``"none"``: global only) with ``hparams``, as a bare backbone's scoring path builds it. Its
    ``w_global`` and ``w_fine`` are the given ones, else the folder's, else 1. Its
    ``describe_overrides()`` and ``notes`` are for the user."""
    from dataclasses import replace

    from ..models.scoring import Scoring, build_plan, load_scoring

    if model is not None:
        scoring = load_scoring(model, aligner, hparams, w_global=w_global, w_fine=w_fine)
        if scoring.backbone.embed_dim != dim:
            raise UserError(f"--model {model}: D={scoring.backbone.embed_dim}, the stores D={dim}")
        return replace(scoring, backbone=None)  # the features are stored: nothing to encode
    plan, name, trained, overrides, notes = build_plan(None, aligner, hparams, dim=dim)
    weights = [1.0 if w is None else float(w) for w in (w_global, w_fine)]
    return Scoring(None, plan, name, *weights, trained, overrides, tuple(notes))


def evaluate_stores(vstores: Sequence[FeatureStore], tstores: Sequence[FeatureStore], split, aligner,
                    **options) -> dict:
    """:func:`~tokenflow.eval.evaluate.evaluate` of ``split`` on the features of the visual
    stores ``vstores`` and the text stores ``tstores`` (as :func:`open_stores` gives them; see the
    module docstring for ids); ``options`` are evaluate's (``w_global``, ``w_fine``, ``chunk``,
    ``folds``, ``rerank_top``, ``test_norm``, ``device``, ...). The report's ``backbone`` says
    where each store's features came from."""
    from ..eval.evaluate import Encoded, evaluate

    t0 = time.perf_counter()
    vis, txt = split_tokens(split, vstores, tstores)
    info = vstores[0].tokens_info or {}
    options.setdefault("num_frames", info.get("frames", 12))
    options.setdefault("video_tokens", info.get("video_tokens", "frames"))
    described = describe_stores(vstores, tstores)
    return evaluate(described, split, aligner, encoded=Encoded(split, vis, txt, [], time.perf_counter() - t0),
                    **options)


def _media_ids(media: Sequence[Path], stores: Sequence[FeatureStore], root: Path) -> list[str]:
    """The visual store id of each of ``media`` (see the module docstring for the rule)."""
    by_path: dict[str, str] = {}
    by_id: set[str] = set()
    for s in stores:
        for i, path in zip(s.ids, s.paths, strict=True):
            by_id.add(i)
            if path:
                by_path.setdefault(str((root / path).resolve()), i)
    out, missing = [], []
    for m in media:
        rel = m.relative_to(root).as_posix() if m.is_relative_to(root) else None
        hit = by_path.get(str(m.resolve())) or next((k for k in (rel, m.as_posix(), m.name, m.stem)
                                                      if k and k in by_id), None)
        if hit is None:
            missing.append(m)
        out.append(hit)
    if missing:
        raise UserError(f"--visual-store {stores[0].folder}: {len(missing)} of the {len(media)} images of the items "
                        f"are not in it (first: {missing[0]}); a row is an image when its path is the file, or its id "
                        "is the file's path relative to --images, its name or its name without the extension")
    twice = [i for i, n in Counter(out).items() if n > 1]
    if twice:
        shared = [str(m) for m, i in zip(media, out, strict=True) if i == twice[0]]
        raise UserError(f"--visual-store {stores[0].folder}: row {twice[0]!r} matches {len(shared)} different files "
                        f"({', '.join(shared[:2])}); give the rows their paths, or ids relative to --images")
    return out


def _caption_ids(texts: Sequence[str], stores: Sequence[FeatureStore]) -> list[str]:
    """The text store id of each caption of ``texts``, matched by its text."""
    by_text: dict[str, str] = {}
    for s in stores:
        for i, t in zip(s.ids, s.texts, strict=True):
            if t is not None:
                by_text.setdefault(t, i)
    if not by_text:
        raise UserError(f"--text-store {stores[0].folder}: holds no caption texts, and captions are matched by their "
                        "text; write it with texts (import-features: a 'texts' array; encode --texts)")
    missing = [t for t in texts if t not in by_text]
    if missing:
        raise UserError(f"--text-store {stores[0].folder}: {len(missing)} of the {len(texts)} captions of the items "
                        f"(true captions and negatives) are not in it (first: {missing[0]!r})")
    return [by_text[t] for t in texts]


def hard_negative_tokens(items: Sequence, visual: Sequence[FeatureStore], text: Sequence[FeatureStore],
                         root: str | Path):
    """The :class:`~tokenflow.eval.compositional.EncodedItems` of hard-negative ``items`` from
    stores: each distinct image (``root``: where relative paths start) and each distinct caption,
    negatives included, once (see the module docstring for the matching). A visual store of the
    other modality (images for video items, or the reverse), or stores of two feature sizes, are
    refused."""
    from ..eval.compositional import EncodedItems, distinct, media_kinds

    held = (visual[0].tokens_info or {}).get("modality")
    kinds = media_kinds(items)
    if held in ("image", "video") and kinds != {held}:
        raise UserError(f"--visual-store {visual[0].folder}: features of {held}s, but the items hold "
                        f"{' and '.join(sorted(kinds))}s")
    _check_dims(visual, text)
    t0 = time.perf_counter()
    media, texts = distinct(items)
    vis = store_tokens(visual, _media_ids(media, visual, Path(root)), "--visual-store")
    txt = store_tokens(text, _caption_ids(texts, text), "--text-store")
    return EncodedItems(media, texts, vis, txt, time.perf_counter() - t0)
