"""Encode a collection batch by batch into a :class:`~tokenflow.index.store.StoreWriter`.

Each shard of the store holds the encodings of ``shard_size`` consecutive inputs (fewer rows
when unreadable inputs are skipped), so a killed run resumes at the first unfinished shard
without encoding the finished ones again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch

from ..data.base import OnError, RetrievalSplit
from ..errors import FileError
from ..eval.evaluate import encode_items, encode_texts
from ..models.base import DualEncoder, VideoTokens
from .store import FeatureStore, StoreDtype, StoreWriter

__all__ = ["backbone_fingerprint", "encode_store"]


def backbone_fingerprint(backbone: DualEncoder, name: str | None = None) -> dict:
    """``{"name", "sha256", **config_dict()}``: sha256 over the state dict's names and fp32 bytes,
    so the same weights give the same hash whatever file or device they came from."""
    h = hashlib.sha256()
    for key, value in sorted(backbone.state_dict().items()):
        h.update(key.encode())
        if value.is_floating_point():
            value = value.float()
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return {"name": name or type(backbone).__name__, "sha256": h.hexdigest(), **backbone.config_dict()}


@torch.no_grad()
def encode_store(backbone: DualEncoder, source: RetrievalSplit | Sequence[str], folder: str | Path, *,
                 ids: Sequence[str] | None = None, backbone_info: dict | None = None, dtype: StoreDtype = "fp16",
                 shard_size: int = 4096, batch_size: int = 64, num_frames: int = 12,
                 video_tokens: VideoTokens = "frames", on_error: OnError = "fail", workers: int = 0,
                 progress: bool = False) -> FeatureStore:
    """Encode the visual items of a split (a ``"visual"`` store, ids = ``split.item_ids``) or a
    list of texts (a ``"text"`` store, ids = ``ids`` or ``"0", "1", ...``) into ``folder``.

    Resumable: a re-run keeps the finished shards and encodes only the rest. ``backbone_info``
    names the encoder in the manifest (default: :func:`backbone_fingerprint`). Unreadable items
    are skipped with ``on_error="skip"`` and listed in the manifest's ``skipped``.
    """
    info = backbone_info or backbone_fingerprint(backbone)
    visual = isinstance(source, RetrievalSplit)
    n = len(source)
    if not visual:
        ids = [str(i) for i in (ids if ids is not None else range(n))]
        if len(ids) != n:
            raise ValueError(f"{n} texts but {len(ids)} ids")
    step = max(batch_size, 1) * 8  # inputs encoded per call: memory bounded, shard boundaries kept
    tokens = {"modality": "text"} if not visual else {"modality": source.modality} if source.modality == "image" \
        else {"modality": "video", "video_tokens": video_tokens, "frames": num_frames}
    with StoreWriter(folder, kind="visual" if visual else "text", backbone=info, dtype=dtype, shard_size=shard_size,
                     max_tokens=None if visual else backbone.max_text_len, tokens=tokens) as w:
        w.skip_done()
        start = w.shards[-1].get("inputs_end", 0) if w.shards else 0
        _check_same_inputs(w, source.item_ids if visual else ids, start)
        for a in range(start, n, shard_size):
            for b in range(a, min(a + shard_size, n), step):
                chunk = list(range(b, min(b + step, a + shard_size, n)))
                if visual:
                    tok, kept, skipped = encode_items(backbone, source, chunk, batch_size=batch_size,
                                                      num_frames=num_frames, video_tokens=video_tokens,
                                                      on_error=on_error, workers=workers, progress=progress)
                    w.note_skipped(skipped)
                    if tok is not None:
                        w.add(tok, [source.item_ids[i] for i in kept],
                              [Path(source.item_paths[i]).resolve() for i in kept])
                else:  # a text store keeps each text where a visual store keeps the file's path
                    w.add(encode_texts(backbone, [source[i] for i in chunk], batch_size=batch_size),
                          [ids[i] for i in chunk], [source[i] for i in chunk])
            w.flush(inputs_end=min(a + shard_size, n))
    return FeatureStore(folder)


def _check_same_inputs(writer: StoreWriter, ids: Sequence[str], start: int) -> None:
    """The finished shards of a resumed store hold the first ``start`` inputs of this run (in
    order; a visual store may have skipped unreadable ones), else the inputs changed."""
    stored = [i for shard in writer.shards for i in shard["ids"]]
    it = iter(ids[:start])
    if start > len(ids) or not all(any(i == j for j in it) for i in stored):
        raise FileError(f"{writer.folder}: its finished shards hold other inputs than this run's first {start} "
                        f"(the collection, its order or the number of torchrun ranks changed); encode into a new "
                        f"folder")
