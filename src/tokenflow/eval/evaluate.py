"""Encode a split once, score every pair, report retrieval metrics in both directions.

The retrieval similarity is ``w_global * (mu_bar . omega_bar) + w_fine * s_dir`` (paper eq 6
plus the fine-grained score): text->visual ranks a column of ``s_t2v``, visual->text a row of
``s_v2t``. With several texts per item (Flickr30K, COCO, MSVD) every text is a text->visual
query, and a visual->text query is answered by its best-ranked text.
"""

from __future__ import annotations

import datetime as _dt
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .. import __version__
from .._extras import require
from ..align import Aligner, Tokens
from ..data.base import MediaDataset, OnError, RetrievalSplit, collate_media
from ..data.karpathy import fold_indices
from ..errors import UserError
from ..models.base import DualEncoder, VideoTokens
from .metrics import retrieval_metrics
from .test_norm import LABELS, normalised_metrics
from .two_stage import two_stage_metrics

__all__ = ["Encoded", "encode_items", "encode_split", "encode_texts", "evaluate", "format_table",
           "protocol_folds", "retrieval_report", "similarity"]


@dataclass
class Encoded:
    """Token features of a split; ``split`` is the split without the skipped items."""

    split: RetrievalSplit
    vis: Tokens
    txt: Tokens
    skipped: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def _progress(total: int, desc: str, enabled: bool):
    require("tqdm", "train", "progress bars")
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="item", disable=not enabled, file=sys.stderr, leave=False)


@torch.no_grad()
def encode_split(backbone: DualEncoder, split: RetrievalSplit, *, batch_size: int = 64, num_frames: int = 12,
                 video_tokens: VideoTokens = "frames", on_error: OnError = "fail", workers: int = 0,
                 progress: bool = False) -> Encoded:
    """Encode every visual item and every text of ``split`` once (features kept on the CPU).

    With ``on_error="skip"`` unreadable items are left out together with their texts and listed
    in ``Encoded.skipped`` (path and reason); with ``"fail"`` the first one raises.
    """
    t0 = time.perf_counter()
    vis, kept, skipped = encode_items(backbone, split, batch_size=batch_size, num_frames=num_frames,
                                      video_tokens=video_tokens, on_error=on_error, workers=workers,
                                      progress=progress)
    if vis is None:
        raise UserError(f"{split.name}: none of its {len(split)} {split.modality}s could be read (all skipped); "
                        f"first: {skipped[0]['path']}: {skipped[0]['reason']}")
    if skipped:
        split = split.subset(kept)
    txt = encode_texts(backbone, split.texts, batch_size=batch_size, progress=progress)
    return Encoded(split, vis, txt, skipped, time.perf_counter() - t0)


@torch.no_grad()
def encode_items(backbone: DualEncoder, split: RetrievalSplit, items: Sequence[int] | None = None, *,
                 batch_size: int = 64, num_frames: int = 12, video_tokens: VideoTokens = "frames",
                 on_error: OnError = "fail", workers: int = 0,
                 progress: bool = False) -> tuple[Tokens | None, list[int], list[dict]]:
    """Encode the visual items ``items`` of ``split`` (default: all), features kept on the CPU.

    Returns the tokens of the readable items (``None`` when there are none), their indices in
    ``split`` and the skipped files (path and reason; only with ``on_error="skip"``).
    """
    was_training = backbone.training
    backbone.eval()
    device = backbone.device
    ds = MediaDataset(split, backbone.preprocess, num_frames=num_frames, on_error=on_error)
    if items is not None:
        ds = torch.utils.data.Subset(ds, list(items))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate_media)
    parts, kept, skipped = [], [], []
    with _progress(len(ds), f"encode {split.modality}s", progress) as bar:
        for idx, pixels, fmask, bad in loader:
            skipped += [{"path": path, "reason": reason} for _, path, reason in bad]
            if idx:
                pixels = pixels.to(device)
                tok = (backbone.encode_images(pixels) if split.modality == "image" else
                       backbone.encode_videos(pixels, fmask.to(device), tokens=video_tokens))
                parts.append(tok.to("cpu"))
                kept += idx
            bar.update(len(idx) + len(bad))
    backbone.train(was_training)
    return (Tokens.cat(parts) if parts else None), kept, skipped


@torch.no_grad()
def encode_texts(backbone: DualEncoder, texts: Sequence[str], *, batch_size: int = 64,
                 progress: bool = False) -> Tokens:
    """Encode ``texts`` (at least one) in batches of ``batch_size``, features kept on the CPU."""
    was_training = backbone.training
    backbone.eval()
    parts = []
    with _progress(len(texts), "encode texts", progress) as bar:
        for a in range(0, len(texts), batch_size):
            parts.append(backbone.encode_text_strings(list(texts[a : a + batch_size])).to("cpu"))
            bar.update(len(parts[-1]))
    backbone.train(was_training)
    return Tokens.cat(parts)


@torch.no_grad()
def similarity(vis: Tokens, txt: Tokens, aligner: Aligner | None, *, w_global: float = 1.0, w_fine: float = 1.0,
               chunk: int | None = None, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
    """Retrieval similarities ``(sim_v2t, sim_t2v)``, each [N_visual, N_text] on the CPU.

    ``w_global * (mu_bar . omega_bar) + w_fine * s_v2t`` (and likewise with ``s_t2v``);
    ``w_fine=0`` or ``aligner=None`` gives the global similarity alone.
    """
    vis, txt = vis.to(device), txt.to(device)
    g = (vis.pooled.float() @ txt.pooled.float().T) * w_global
    if aligner is None or w_fine == 0:
        return g.cpu(), g.cpu()
    aligner = aligner.to(device).eval()
    s = aligner.pairwise(vis, txt, chunk=chunk)
    return (g + w_fine * s.v2t.float()).cpu(), (g + w_fine * s.t2v.float()).cpu()


def evaluate(backbone: DualEncoder | dict, split: RetrievalSplit, aligner: Aligner | None, *, w_global: float = 1.0,
             w_fine: float = 1.0, batch_size: int = 64, num_frames: int = 12, video_tokens: VideoTokens = "frames",
             on_error: OnError = "fail", workers: int = 0, chunk: int | None = None, folds: int | None = None,
             progress: bool = False, encoded: Encoded | None = None, test_norm: str | None = None,
             test_norm_temperature: float | None = None, query_bank: Tokens | Sequence[str] | None = None,
             qb_k: int = 1, bank_info: dict | None = None, rerank_top: int | None = None,
             device: str | torch.device | None = None) -> dict:
    """Encode (unless ``encoded`` is given), score and measure; returns the JSON-ready report.

    With features computed elsewhere (``encoded`` from feature stores, a Tokens ``query_bank``)
    ``backbone`` may be a dict that describes them for the report; scoring runs on ``device``
    (default: the backbone's, else the CPU).

    ``folds``: also report the mean metrics over consecutive folds of this many items (COCO's
    1K protocol: ``folds=1000`` on the 5K test split).

    ``test_norm``: also report metrics after a test-time normalisation (``dsl``, ``isl``,
    ``qbnorm``; :mod:`tokenflow.eval.test_norm`) in ``report["metrics_test_norm"]``;
    ``report["metrics"]`` stays plain. ``qbnorm`` needs ``query_bank``: captions of the
    *training* split (strings, encoded here, or their encoded ``Tokens``), never test captions;
    ``bank_info`` describes it in the report (e.g. ``{"split": "train", "texts": 5000}``).

    ``rerank_top``: also report two-stage metrics (a global shortlist of that many, re-ranked by
    the fused score; :mod:`tokenflow.eval.two_stage`) in ``report["metrics_rerank"]``.
    """
    if test_norm == "qbnorm" and query_bank is None:
        raise UserError("test-time normalisation qbnorm needs a query bank of training captions (query_bank)")
    if encoded is None and isinstance(backbone, dict):
        raise UserError("evaluate: features described by a dict must be given as encoded=Encoded(...)")
    device = device or getattr(backbone, "device", "cpu")
    t0 = time.perf_counter()
    enc = encoded or encode_split(backbone, split, batch_size=batch_size, num_frames=num_frames,
                                  video_tokens=video_tokens, on_error=on_error, workers=workers, progress=progress)
    t1 = time.perf_counter()
    sim_v2t, sim_t2v = similarity(enc.vis, enc.txt, aligner, w_global=w_global, w_fine=w_fine, chunk=chunk,
                                  device=device)
    bank_t2v = None
    if test_norm == "qbnorm":
        bank = query_bank if isinstance(query_bank, Tokens) else encode_texts(backbone, list(query_bank),
                                                                            batch_size=batch_size, progress=progress)
        bank_t2v = similarity(enc.vis, bank, aligner, w_global=w_global, w_fine=w_fine, chunk=chunk,
                              device=device)[1].T
        bank_info = {"texts": len(bank), **(bank_info or {})}
    t2 = time.perf_counter()
    timings = {"encode_s": round(enc.seconds, 3), "score_s": round(t2 - t1, 3),
               "total_s": round(time.perf_counter() - t0, 3)}
    report = retrieval_report(backbone, split, aligner, enc.split, sim_v2t, sim_t2v, w_global=w_global,
                              w_fine=w_fine, batch_size=batch_size, num_frames=num_frames, video_tokens=video_tokens,
                              on_error=on_error, folds=folds, skipped=enc.skipped, timings=timings)
    if rerank_top is not None:
        sim_global = similarity(enc.vis, enc.txt, None, device=device)[0]
        report["metrics_rerank"] = two_stage_metrics(sim_global, sim_v2t, sim_t2v, enc.split.positives(), rerank_top)
    if test_norm is not None:
        report["metrics_test_norm"] = normalised_metrics(
            test_norm, sim_v2t, sim_t2v, enc.split.positives(), temperature=test_norm_temperature,
            bank_t2v=bank_t2v, k=qb_k, bank_info=bank_info)
    return report


def retrieval_report(backbone: DualEncoder | dict, split: RetrievalSplit, aligner: Aligner | None,
                     evaluated: RetrievalSplit, sim_v2t: Tensor, sim_t2v: Tensor, *, w_global: float = 1.0,
                     w_fine: float = 1.0, batch_size: int = 64, num_frames: int = 12,
                     video_tokens: VideoTokens = "frames", on_error: OnError = "fail", folds: int | None = None,
                     skipped: Sequence[dict] = (), timings: dict | None = None) -> dict:
    """The report of :func:`evaluate` from similarities already computed: ``sim_v2t`` and
    ``sim_t2v`` [N_visual, N_text] over ``evaluated`` (``split`` without its ``skipped`` items);
    ``backbone``: the encoder, or a dict that describes features computed elsewhere."""
    pos = evaluated.positives()
    metrics = {"t2v": retrieval_metrics(sim_t2v.T, pos.T), "v2t": retrieval_metrics(sim_v2t, pos)}
    report = {
        "tokenflow_version": __version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "split": split.summary(),
        "evaluated": {"items": len(evaluated), "texts": len(evaluated.texts)},
        "backbone": backbone if isinstance(backbone, dict) else backbone.config_dict(),
        "aligner": None if aligner is None else {"name": getattr(aligner, "name", type(aligner).__name__),
                                                 "hparams": aligner.hparams()},
        "similarity": {"w_global": w_global, "w_fine": w_fine, "v2t": "s_v2t", "t2v": "s_t2v"},
        "settings": {"num_frames": num_frames, "video_tokens": video_tokens, "on_error": on_error,
                     "batch_size": batch_size, "max_words": getattr(backbone, "max_text_len", None)},
        "metrics": metrics,
        "skipped": {"count": len(skipped), "files": list(skipped)},
        "timings": timings or {},
    }
    if folds:
        per_fold = []
        for items, texts in fold_indices(evaluated, folds):
            p, v2t, t2v = pos[items][:, texts], sim_v2t[items][:, texts], sim_t2v[items][:, texts]
            per_fold.append({"t2v": retrieval_metrics(t2v.T, p.T), "v2t": retrieval_metrics(v2t, p)})
        report[f"metrics_folds_{folds}"] = {
            d: {k: sum(f[d][k] for f in per_fold) / len(per_fold) for k in per_fold[0][d]} for d in ("t2v", "v2t")
        }
    return report


def protocol_folds(dataset: str, split: str, items: int) -> int | None:
    """Fold size a benchmark's protocol reports besides the whole split: COCO's 5K test -> 1000."""
    return 1000 if dataset == "coco" and split == "test" and items == 5000 else None


def format_table(report: dict, keys: Sequence[str] = ("R@1", "R@5", "R@10", "R@50", "MdR", "MnR")) -> str:
    """The metrics of a report as a small text table; test-time normalised rows are labelled so
    (``t->v [DSL, test-time norm]``), never as plain ones."""
    rows = [("text->visual", report["metrics"]["t2v"]), ("visual->text", report["metrics"]["v2t"])]
    for name, block in report.items():
        if name.startswith("metrics_folds_"):
            n = name.rsplit("_", 1)[1]
            rows += [(f"t->v ({n} folds)", block["t2v"]), (f"v->t ({n} folds)", block["v2t"])]
    norm, width = report.get("metrics_test_norm"), 18
    if report.get("metrics_rerank"):
        block = report["metrics_rerank"]
        rows += [(f"{d} [{block['label']}]", block[k]) for d, k in (("t->v", "t2v"), ("v->t", "v2t"))]
        width = max(len(n) for n, _ in rows) + 2
    if norm:
        label = f"{LABELS.get(norm['method'], norm['method'])}, test-time norm"
        rows += [(f"{d} [{label}]", norm[k]) for d, k in (("t->v", "t2v"), ("v->t", "v2t")) if k in norm]
        width = max(len(n) for n, _ in rows) + 2
    head = f"{'':<{width}}" + "".join(f"{k:>8}" for k in keys)
    lines = [head] + [f"{n:<{width}}" + "".join(f"{m[k]:>8.1f}" for k in keys) for n, m in rows]
    return "\n".join(lines)
