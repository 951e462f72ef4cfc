"""Evaluation shared by every process of a ``torchrun`` run, so that no process idles at a
barrier for a whole evaluation (NCCL's collective timeout).

:func:`evaluate_sharded` is :func:`~tokenflow.eval.evaluate.evaluate` with every process
encoding and scoring its own share; :func:`load_everywhere` gives every process rank 0's model
folder (the chosen checkpoint that the test split is scored with).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from ..align import Aligner
from ..data.base import OnError, RetrievalSplit
from ..distributed import DistInfo, all_gather_objects, all_gather_rows, all_gather_tokens, gather_sizes, shard
from ..errors import UserError
from ..models.base import DualEncoder, VideoTokens
from ..models.retrieval import RetrievalModel
from ..tokens import Tokens
from .evaluate import encode_items, encode_texts, evaluate, retrieval_report, similarity

__all__ = ["evaluate_sharded", "load_everywhere"]


@torch.no_grad()
def evaluate_sharded(backbone: DualEncoder, split: RetrievalSplit, aligner: Aligner | None, info: DistInfo, *,
                     w_global: float = 1.0, w_fine: float = 1.0, batch_size: int = 64, num_frames: int = 12,
                     video_tokens: VideoTokens = "frames", on_error: OnError = "fail",
                     folds: int | None = None) -> dict | None:
    """:func:`~tokenflow.eval.evaluate.evaluate` with every process taking part: the report on
    rank 0, ``None`` on the others (one process: ``evaluate`` itself).

    Each process encodes a contiguous share of the visual items and of the texts; the text
    features are gathered, each process scores its own items' rows against every text, and the
    rows of both similarities ([N_visual, N_text]) are gathered for rank 0 to measure.
    """
    kw = {"w_global": w_global, "w_fine": w_fine, "batch_size": batch_size, "num_frames": num_frames,
          "video_tokens": video_tokens, "on_error": on_error}
    if not info.enabled:
        return evaluate(backbone, split, aligner, folds=folds, **kw)
    t0 = time.perf_counter()
    vis, kept, skipped = encode_items(backbone, split, shard(len(split), info), batch_size=batch_size,
                                      num_frames=num_frames, video_tokens=video_tokens, on_error=on_error)
    parts = all_gather_objects((kept, skipped), info)
    kept_all, skipped_all = [i for k, _ in parts for i in k], [f for _, s in parts for f in s]
    if not kept_all:
        raise UserError(f"{split.name}: none of its {len(split)} {split.modality}s could be read (all skipped); "
                        f"first: {skipped_all[0]['path']}: {skipped_all[0]['reason']}")
    evaluated = split.subset(kept_all) if skipped_all else split
    txt = _texts_everywhere(backbone, evaluated.texts, info, batch_size)
    t1 = time.perf_counter()
    device = backbone.device
    rows = _score_rows(vis, txt, aligner, w_global, w_fine, device)
    sim = all_gather_rows(rows.to(device), info, gather_sizes(len(rows), info, device)).cpu()
    if not info.main:
        return None
    t2 = time.perf_counter()
    timings = {"encode_s": round(t1 - t0, 3), "score_s": round(t2 - t1, 3), "total_s": round(t2 - t0, 3)}
    return retrieval_report(backbone, split, aligner, evaluated, sim[:, 0], sim[:, 1], folds=folds,
                            skipped=skipped_all, timings=timings, **kw)


def _texts_everywhere(backbone: DualEncoder, texts: Sequence[str], info: DistInfo, batch_size: int) -> Tokens:
    """Every text's features on every process, each process encoding a contiguous share."""
    if len(texts) < info.world:  # a share would be empty: each process encodes the few texts itself
        return encode_texts(backbone, texts, batch_size=batch_size)
    mine = shard(len(texts), info)
    tok = encode_texts(backbone, texts[mine.start : mine.stop], batch_size=batch_size).to(backbone.device)
    return all_gather_tokens(tok, info, gather_sizes(len(tok), info, tok.device), grad=False).to("cpu")


def _score_rows(vis: Tokens | None, txt: Tokens, aligner: Aligner | None, w_global: float, w_fine: float,
                device: torch.device) -> Tensor:
    """This process's rows of ``(sim_v2t, sim_t2v)`` stacked: [n_local, 2, N_text], fp32 on the CPU."""
    if vis is None:  # no readable item in this process's share
        return torch.zeros(0, 2, len(txt))
    v2t, t2v = similarity(vis, txt, aligner, w_global=w_global, w_fine=w_fine, device=device)
    return torch.stack([v2t, t2v], 1)


def load_everywhere(folder: Path, info: DistInfo, device: torch.device) -> RetrievalModel:
    """Rank 0's model folder, loaded by every process; the files travel over the process group,
    so the processes need no shared disk."""
    if info.enabled:
        files = [{p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
                  if p.is_file()} if info.main else None]
        torch.distributed.broadcast_object_list(files, src=0)
        if not info.main:
            with tempfile.TemporaryDirectory() as tmp:
                for name, data in files[0].items():
                    (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
                    (Path(tmp) / name).write_bytes(data)
                return RetrievalModel.from_pretrained(tmp).to(device)
    return RetrievalModel.from_pretrained(folder).to(device)
