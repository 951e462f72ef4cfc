"""Compositional evaluation: does the true caption of an image outscore its hard negatives?

An item is an image (or video), its true caption and one or more minimally changed false
captions (attributes swapped, an object replaced, ...; :mod:`tokenflow.data.hard_negatives`,
:mod:`tokenflow.data.sugarcrepe`). Each distinct image and each distinct caption is encoded once,
in batches; pairs are scored the way retrieval scores them
(:func:`tokenflow.eval.evaluate.similarity`), in one direction of the plan (``t2v`` by default:
``s_t2v`` weighs every word of the caption, so a false word has to find support in the image).
Three scores are reported:

- ``fused``: ``w_global * (v_bar . t_bar) + w_fine * s_dir``, what retrieval ranks with;
- ``fine``: the plan's ``s_dir`` alone;
- ``global``: ``v_bar . t_bar`` alone (the bag-of-words baseline).

An item is correct when its true caption scores *strictly* higher than every negative: a tie
is a failure, so a score that cannot tell the captions apart gets 0 %, not 50 %. Two scores tie
when ``|true - negative| <= TIE_RTOL * max(1, |true|)`` (:data:`TIE_RTOL` = 1e-6): a caption
encoded in another batch, or scored in another block, can differ in the last float bits, and
that noise decides nothing. Per category
the report gives the accuracy (%), the counts (items, correct, ties), a 95 % Wilson interval
where every item of the category is a binary choice, and the macro average over categories.
"""

from __future__ import annotations

import datetime as _dt
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .. import __version__
from ..align import Aligner, Tokens
from ..data.base import VIDEO_EXTENSIONS, RetrievalSplit
from ..data.errors import MediaError
from ..data.hard_negatives import HardNegative
from ..errors import FileError, UserError
from ..models.base import DualEncoder, VideoTokens
from .evaluate import Encoded, encode_items, encode_texts, similarity

__all__ = ["SCORES", "TIE_RTOL", "EncodedItems", "accuracy_report", "distinct", "encode_hard_negatives",
           "evaluate_compositional", "format_compositional_table", "items_from_encoded", "media_kinds", "score_items",
           "wilson_interval"]

SCORES = ("fused", "fine", "global")
Z95 = 1.959963984540054  # two-sided 95 % normal quantile
#: two scores within ``TIE_RTOL * max(1, |true|)`` of each other tie (and a tie is a failure)
TIE_RTOL = 1e-6
RULE = (f"correct when the true caption scores above every negative by more than {TIE_RTOL:g} * max(1, |true|); "
        "closer scores tie, and a tie is a failure")


@dataclass
class EncodedItems:
    """Features of the distinct media and distinct captions of a set of items: ``vis`` row ``k``
    is ``media[k]``, ``txt`` row ``k`` is ``texts[k]``."""

    media: list[Path]
    texts: list[str]
    vis: Tokens
    txt: Tokens
    seconds: float = 0.0


def distinct(items: Sequence[HardNegative]) -> tuple[list[Path], list[str]]:
    """``(media, texts)``: the distinct media and the distinct captions (negatives included) of
    ``items``, each once, in order of first appearance (the rows of :class:`EncodedItems`)."""
    media = list(dict.fromkeys(it.media for it in items))
    texts = list(dict.fromkeys(t for it in items for t in it.texts))
    return media, texts


def media_kinds(items: Sequence[HardNegative]) -> set[str]:
    """What the media of ``items`` are, by file extension: ``{"image"}``, ``{"video"}`` or both."""
    return {"video" if it.media.suffix.lower() in VIDEO_EXTENSIONS else "image" for it in items}


def _modality(items: Sequence[HardNegative]) -> str:
    kinds = media_kinds(items)
    if len(kinds) > 1:
        raise UserError("the items mix images and videos; evaluate them separately")
    return kinds.pop()


@torch.no_grad()
def encode_hard_negatives(backbone: DualEncoder, items: Sequence[HardNegative], *, batch_size: int = 64,
                          num_frames: int = 12, video_tokens: VideoTokens = "frames", workers: int = 0,
                          progress: bool = False) -> EncodedItems:
    """Encode every distinct image (or video) and every distinct caption of ``items`` once, in
    batches (features kept on the CPU). An unreadable file stops with the entry that names it."""
    if not items:
        raise UserError("no hard-negative items to encode")
    t0 = time.perf_counter()
    media, texts = distinct(items)
    split = RetrievalSplit("hard-negatives", _modality(items), [str(m) for m in media], media, [], [])
    try:
        vis, _, _ = encode_items(backbone, split, batch_size=batch_size, num_frames=num_frames,
                                 video_tokens=video_tokens, on_error="fail", workers=workers, progress=progress)
    except MediaError as e:
        where = next((it.where for it in items if str(it.media) == e.path), "")
        raise FileError(f"{where}: {e}" if where else str(e)) from None
    txt = encode_texts(backbone, texts, batch_size=batch_size, progress=progress)
    return EncodedItems(media, texts, vis, txt, time.perf_counter() - t0)


@torch.no_grad()
def items_from_encoded(encoded: Encoded, items: Sequence[HardNegative], backbone: DualEncoder, *,
                       batch_size: int = 64, progress: bool = False) -> EncodedItems:
    """The :class:`EncodedItems` of ``items`` with their images (or videos) taken from a split's
    encoding (an :class:`~tokenflow.eval.evaluate.Encoded`, e.g. the test split's, encoded for
    retrieval) instead of encoded again; only the captions are encoded, as
    :func:`encode_hard_negatives` encodes them. Every item's media must be an item of
    ``encoded.split`` (matched by resolved path), encoded with the settings the items need."""
    if not items:
        raise UserError("no hard-negative items to encode")
    t0 = time.perf_counter()
    media, texts = distinct(items)
    if _modality(items) != encoded.split.modality:
        raise ValueError(f"the items are {_modality(items)}s but the encoded split holds {encoded.split.modality}s")
    row = {Path(p).resolve(): k for k, p in enumerate(encoded.split.item_paths)}
    missing = [m for m in media if m.resolve() not in row]
    if missing:
        raise ValueError(f"{len(missing)} item media are not in the encoded split {encoded.split.name!r}, "
                         f"first: {missing[0]}")
    vis = encoded.vis[[row[m.resolve()] for m in media]]
    txt = encode_texts(backbone, texts, batch_size=batch_size, progress=progress)
    return EncodedItems(media, texts, vis, txt, time.perf_counter() - t0)


@torch.no_grad()
def score_items(encoded: EncodedItems, items: Sequence[HardNegative], aligner: Aligner | None, *,
                w_global: float = 1.0, w_fine: float = 1.0, direction: str = "t2v", chunk: int | None = None,
                group: int = 16, device: str | torch.device = "cpu") -> dict[str, list[Tensor]]:
    """Scores of each item's texts against its image: ``{"fused" | "fine" | "global": [tensor
    [1 + negatives] per item]}`` (true caption first; ``fine`` only with a plan).

    Pairs go through :func:`~tokenflow.eval.evaluate.similarity`, ``group`` distinct images at a
    time against the captions those images need, so no score is fused differently from
    retrieval's and the work grows with the items, not with images x captions.
    """
    if direction not in ("t2v", "v2t"):
        raise ValueError(f"direction must be 't2v' or 'v2t', got {direction!r}")
    if group < 1:
        raise ValueError(f"group must be >= 1, got {group}")
    m_index = {m: k for k, m in enumerate(encoded.media)}
    t_index = {t: k for k, t in enumerate(encoded.texts)}
    missing = [it.where or str(it.media) for it in items if it.media not in m_index
               or any(t not in t_index for t in it.texts)]
    if missing:
        raise ValueError(f"{len(missing)} item(s) are not in the encoded features, first: {missing[0]}")
    pick = 0 if direction == "v2t" else 1
    kinds = (["fine"] if aligner is not None else []) + ["fused", "global"]  # fine first: fused may reuse it
    weights = {"fused": (w_global, w_fine, aligner), "global": (1.0, 0.0, None), "fine": (0.0, 1.0, aligner)}
    out: dict[str, list[Tensor | None]] = {k: [None] * len(items) for k in kinds}
    by_media: dict[int, list[int]] = {}
    for n, it in enumerate(items):
        by_media.setdefault(m_index[it.media], []).append(n)
    order = sorted(by_media)
    for a in range(0, len(order), group):
        block = order[a : a + group]
        rows = {m: r for r, m in enumerate(block)}
        cols = list(dict.fromkeys(t_index[t] for m in block for n in by_media[m] for t in items[n].texts))
        col_of = {t: c for c, t in enumerate(cols)}
        vis, txt = encoded.vis[block], encoded.txt[cols]
        sims = {}
        for kind in kinds:
            wg, wf, plan = weights[kind]
            if kind == "fused" and wg == 0.0 and wf == 1.0 and "fine" in sims:
                sims[kind] = sims["fine"]
            else:
                sims[kind] = similarity(vis, txt, plan, w_global=wg, w_fine=wf, chunk=chunk, device=device)[pick]
        for m in block:
            for n in by_media[m]:
                idx = torch.tensor([col_of[t_index[t]] for t in items[n].texts])
                for kind in kinds:
                    out[kind][n] = sims[kind][rows[m], idx]
    return out


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``correct / n``, in % (``z`` = 1.96: 95 %)."""
    if n <= 0:
        raise ValueError("the Wilson interval needs n >= 1")
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return 100 * max(0.0, centre - half), 100 * min(1.0, centre + half)


def accuracy_report(scores: Sequence[Tensor], categories: Sequence[str]) -> dict:
    """Per-category accuracy of items whose scores are ``[true, negative, ...]``: correct when the
    true caption's score is above every negative's by more than ``TIE_RTOL * max(1, |true|)``;
    within that the best negative ties, and a tie fails.

    Returns ``{"categories": {name: {items, correct, ties, accuracy, binary[, ci95]}}, "macro":
    mean accuracy over categories, "overall": {items, correct, ties, accuracy}}``; accuracies in %.
    """
    if len(scores) != len(categories):
        raise ValueError(f"{len(scores)} score rows but {len(categories)} categories")
    cats: dict[str, dict] = {}
    for s, cat in zip(scores, categories, strict=True):
        if s.numel() < 2:
            raise ValueError("every item needs its true caption's score and at least one negative's")
        true, best_neg = float(s[0]), float(s[1:].max())
        tol = TIE_RTOL * max(1.0, abs(true))
        c = cats.setdefault(cat, {"items": 0, "correct": 0, "ties": 0, "binary": True})
        c["items"] += 1
        c["correct"] += int(true - best_neg > tol)
        c["ties"] += int(abs(true - best_neg) <= tol)
        c["binary"] &= s.numel() == 2
    for c in cats.values():
        c["accuracy"] = 100.0 * c["correct"] / c["items"]
        if c["binary"]:
            c["ci95"] = list(wilson_interval(c["correct"], c["items"]))
    total = {k: sum(c[k] for c in cats.values()) for k in ("items", "correct", "ties")}
    total["accuracy"] = 100.0 * total["correct"] / total["items"] if total["items"] else float("nan")
    macro = sum(c["accuracy"] for c in cats.values()) / len(cats) if cats else float("nan")
    return {"categories": dict(sorted(cats.items())), "macro": macro, "overall": total}


def evaluate_compositional(backbone: DualEncoder | None, items: Sequence[HardNegative], aligner: Aligner | None, *,
                           w_global: float = 1.0, w_fine: float = 1.0, direction: str = "t2v",
                           batch_size: int = 64, num_frames: int = 12, video_tokens: VideoTokens = "frames",
                           workers: int = 0, chunk: int | None = None, group: int = 16,
                           encoded: EncodedItems | None = None, progress: bool = False,
                           source: dict | None = None) -> dict:
    """Encode (unless ``encoded`` is given), score and measure hard-negative accuracy.

    ``backbone`` + ``aligner`` (``None``: global only) + fusion weights as retrieval uses them;
    from a folder, the :func:`~tokenflow.models.scoring.load_scoring` of it (its ``.backbone,
    .aligner, .w_global, .w_fine``), or a :class:`~tokenflow.models.RetrievalModel`'s same
    attributes. ``encoded``: features computed elsewhere
    (``backbone`` may then be ``None``). ``source`` describes the benchmark in the report.
    Returns the JSON-ready report; ``report["scores"][kind]`` is :func:`accuracy_report` for
    ``fused``, ``fine`` (with a plan) and ``global``.
    """
    if not items:
        raise UserError("no hard-negative items to evaluate")
    t0 = time.perf_counter()
    if encoded is None:
        if backbone is None:
            raise ValueError("give a backbone to encode with, or the features as encoded=")
        encoded = encode_hard_negatives(backbone, items, batch_size=batch_size, num_frames=num_frames,
                                        video_tokens=video_tokens, workers=workers, progress=progress)
    t1 = time.perf_counter()
    device = backbone.device if backbone is not None else "cpu"
    scores = score_items(encoded, items, aligner, w_global=w_global, w_fine=w_fine, direction=direction,
                         chunk=chunk, group=group, device=device)
    categories = [it.category for it in items]
    return {
        "tokenflow_version": __version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "benchmark": source or {},
        "evaluated": {"items": len(items), "images": len(encoded.media), "texts": len(encoded.texts)},
        "backbone": None if backbone is None else backbone.config_dict(),
        "aligner": None if aligner is None else {"name": getattr(aligner, "name", type(aligner).__name__),
                                                 "hparams": aligner.hparams()},
        "similarity": {"w_global": w_global, "w_fine": w_fine, "direction": direction,
                       "fused": "w_global * global" + ("" if aligner is None else f" + w_fine * s_{direction}"),
                       **({} if aligner is None else {"fine": f"s_{direction}"}), "global": "v_bar . t_bar"},
        "rule": RULE, "tie_rtol": TIE_RTOL,
        "settings": {"batch_size": batch_size, "num_frames": num_frames, "video_tokens": video_tokens,
                     "max_words": getattr(backbone, "max_text_len", None)},
        "scores": {kind: accuracy_report(s, categories) for kind, s in scores.items()},
        "timings": {"encode_s": round(encoded.seconds if encoded.seconds else t1 - t0, 3),
                    "score_s": round(time.perf_counter() - t1, 3), "total_s": round(time.perf_counter() - t0, 3)},
    }


def format_compositional_table(report: dict) -> str:
    """Accuracy (%) per category and score as a text table, with the binary categories' 95 %
    interval of the fused score, the macro average and the overall row."""
    kinds = [k for k in SCORES if k in report["scores"]]
    fused = report["scores"]["fused"]
    names = list(fused["categories"])
    width = max([len(n) for n in names] + [13]) + 2
    head = f"{'category':<{width}}{'items':>7}" + "".join(f"{k:>9}" for k in kinds) + "   fused 95 % CI"
    lines = [head]
    for n in names:
        c = fused["categories"][n]
        ci = f"   [{c['ci95'][0]:.1f}, {c['ci95'][1]:.1f}]" if "ci95" in c else ""
        accs = "".join(f"{report['scores'][k]['categories'][n]['accuracy']:>9.1f}" for k in kinds)
        lines.append(f"{n:<{width}}{c['items']:>7}{accs}{ci}")
    lines.append(f"{'macro average':<{width}}{'':>7}" + "".join(f"{report['scores'][k]['macro']:>9.1f}"
                                                              for k in kinds))
    lines.append(f"{'all items':<{width}}{fused['overall']['items']:>7}"
                 + "".join(f"{report['scores'][k]['overall']['accuracy']:>9.1f}" for k in kinds))
    ties = {k: report["scores"][k]["overall"]["ties"] for k in kinds}
    lines.append("ties (failures): " + ", ".join(f"{k} {v}" for k, v in ties.items()))
    return "\n".join(lines)
