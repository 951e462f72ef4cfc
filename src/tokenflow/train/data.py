"""Training pairs and a resumable, rank-aware order of batches.

The order of an epoch is a pure function of ``(seed, epoch)``: a permutation of all (item,
caption) pairs, or of the items with one caption each drawn at random. Micro-batch ``s`` of the
epoch is the slice ``[s * B, (s + 1) * B)`` of that order (B the global batch, the last
partial batch dropped), and process ``r`` of ``K`` reads the ``r``-th of its K equal parts. So
``K`` processes see exactly the batch one process would see, and resuming at micro-batch ``s``
needs no state but ``s``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, Sampler

from ..data.base import (IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, MediaDataset, RetrievalSplit, collate_media,
                         media_files)
from ..errors import InputError

__all__ = ["PairDataset", "StepBatchSampler", "epoch_order"]


def epoch_order(split: RetrievalSplit, seed: int, epoch: int, sampling: str = "caption") -> list[int]:
    """Text indices in the order epoch ``epoch`` visits them."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    if sampling == "caption":
        return torch.randperm(len(split.texts), generator=g).tolist()
    if sampling == "item":
        by_item: list[list[int]] = [[] for _ in range(len(split))]
        for k, i in enumerate(split.text_item):
            by_item[i].append(k)
        items = [i for i in torch.randperm(len(split), generator=g).tolist() if by_item[i]]
        picks = torch.randint(0, 1 << 30, (len(items),), generator=g).tolist()
        return [by_item[i][p % len(by_item[i])] for i, p in zip(items, picks, strict=True)]
    raise ValueError(f"sampling must be 'caption' or 'item', got {sampling!r}")


class StepBatchSampler(Sampler[list[int]]):
    """Yields this process's share of every micro-batch of one epoch, from ``start`` on."""

    def __init__(self, order: list[int], global_batch: int, rank: int = 0, world: int = 1, start: int = 0):
        if global_batch % world:
            raise InputError(f"batch size {global_batch} does not split evenly over {world} processes")
        self.order, self.batch, self.rank, self.world, self.start = order, global_batch, rank, world, start
        self.local = global_batch // world

    def __len__(self) -> int:
        return max(0, len(self.order) // self.batch - self.start)

    def __iter__(self):
        for s in range(self.start, len(self.order) // self.batch):
            gb = self.order[s * self.batch : (s + 1) * self.batch]
            yield gb[self.rank * self.local : (self.rank + 1) * self.local]


class PairDataset(Dataset):
    """Text index -> ``(text index, pixels, frame_mask, error)`` of the pair (item, caption);
    batches are put together by :func:`tokenflow.data.collate_media`."""

    def __init__(self, split: RetrievalSplit, preprocess, num_frames: int = 12, on_error: str = "fail",
                 cache: bool = False):
        self.split = split
        self.media = MediaDataset(split, preprocess, num_frames=num_frames, on_error=on_error)
        self.cache: dict[int, tuple] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.split.texts)

    def __getitem__(self, k: int):
        i = self.split.text_item[k]
        if self.cache is not None and i in self.cache:
            pixels, mask, err = self.cache[i]
        else:
            _, pixels, mask, err = self.media[i]
            if self.cache is not None:  # unreadable items are remembered too: read once, skipped every epoch
                self.cache[i] = (pixels, mask, err)
        return k, pixels, mask, err


@dataclass
class _Files:
    """The part of a split that :class:`MediaDataset` reads: paths and modality."""

    item_paths: list[str]
    modality: str

    def __len__(self) -> int:
        return len(self.item_paths)


class UnpairedPool:
    """Unpaired visual items (a folder) and captions (a text file, one per line) for the CS term.

    Every step draws ``n`` of each, without replacement within a draw, as a function of
    (seed, step, rank) only, so a resumed run draws the same extras. Unreadable files follow
    ``on_error`` like the paired data (``draw`` returns them for the log).
    """

    def __init__(self, media: Path | None, texts: Path | None, modality: str, preprocess, num_frames: int,
                 on_error: str = "fail") -> None:
        self.media = None
        self.texts: list[str] = []
        if media is not None:
            files = [str(p) for p in media_files(media, modality)]
            if not files:
                exts = VIDEO_EXTENSIONS if modality == "video" else IMAGE_EXTENSIONS
                raise InputError(f"cs.unpaired_media: {media} holds no {modality} files ({', '.join(exts)})")
            self.media = MediaDataset(_Files(files, modality), preprocess, num_frames=num_frames, on_error=on_error)
        if texts is not None:
            self.texts = [line.strip() for line in Path(texts).read_text(encoding="utf-8").splitlines() if line.strip()]
            if not self.texts:
                raise InputError(f"cs.unpaired_texts: {texts} holds no caption (one per line expected)")

    def draw(self, n: int, seed: int, step: int, rank: int = 0):
        """``(pixels, frame_mask, texts, bad)`` for one step; pixels/texts are None when absent."""
        g = torch.Generator().manual_seed((seed * 1_000_003 + step) * 4099 + rank + 17)
        pixels = fmask = None
        bad: list = []
        if self.media is not None:
            pick = torch.randperm(len(self.media), generator=g)[: min(n, len(self.media))].tolist()
            _, pixels, fmask, bad = collate_media([self.media[i] for i in pick])
        texts = None
        if self.texts:
            texts = [self.texts[i] for i in torch.randperm(len(self.texts), generator=g)[: min(n, len(self.texts))]]
        return pixels, fmask, texts, bad
