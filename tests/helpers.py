"""Helpers shared by test modules (import them from here, not from another test module)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from tokenflow import Tokens

JUNK = 1e3  # padding is filled with large junk values: any leak into a score shows

#: The plans the ``direct`` fixture (tests/conftest.py) evaluates the tiny model with.
STORE_PLANS = ("max-avg", "tokenflow", "scan")


def make_tokens(n, length, dim, *, gen, dtype=torch.float64, min_real=1, normalise=True, junk=JUNK):
    """Random tokens with real positions scattered anywhere and junk in the padding."""
    feats = torch.randn(n, length, dim, generator=gen, dtype=torch.float64)
    pooled = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    if normalise:  # CLIP-like: unit-norm features
        feats = feats / feats.norm(dim=-1, keepdim=True)
        pooled = pooled / pooled.norm(dim=-1, keepdim=True)
    mask = torch.zeros(n, length, dtype=torch.bool)
    for i in range(n):
        k = int(torch.randint(min_real, length + 1, (1,), generator=gen))
        mask[i, torch.randperm(length, generator=gen)[:k]] = True
    feats = torch.where(mask[..., None], feats, torch.full_like(feats, junk))
    return Tokens(feats.to(dtype), mask, pooled.to(dtype))


def pad_tokens(tok, extra, fill):
    """``tok`` with ``extra`` padding positions appended, their features all ``fill``."""
    n, _, dim = tok.feats.shape
    feats = torch.cat([tok.feats, torch.full((n, extra, dim), fill, dtype=tok.dtype)], 1)
    mask = torch.cat([tok.mask, torch.zeros(n, extra, dtype=torch.bool)], 1)
    return Tokens(feats, mask, tok.pooled)


def save_tiny_model(folder: Path, texts: Sequence[str], *, seed: int, w_global: float, w_fine: float,
                    config=None) -> Path:
    """A TinyCLIP (random weights from ``seed``; ``config``: a TinyConfig, default TinyConfig()) whose
    vocabulary is that of ``texts``, saved in ``folder`` as a RetrievalModel with the tokenflow
    plan and these fusion weights."""
    from tokenflow import get_aligner
    from tokenflow.models import RetrievalModel, TinyCLIP, TinyConfig, WordTokenizer

    torch.manual_seed(seed)
    tiny = TinyCLIP(config or TinyConfig(), WordTokenizer.build(texts))
    RetrievalModel(tiny, get_aligner("tokenflow"), w_global=w_global, w_fine=w_fine).save_pretrained(folder)
    return folder


def export_features(tokens: Tokens, ids: Sequence[str], extra: dict, path: Path, fmt: str) -> Path:
    """What a user's own extraction code writes: float32 arrays and string ids (and ``extra``
    arrays such as ``texts`` or ``paths``), as ``.npz`` (``fmt="npz"``) or ``.safetensors``."""
    import json

    import numpy as np

    a = {"feats": tokens.feats.numpy(), "mask": tokens.mask.numpy(), "pooled": tokens.pooled.numpy()}
    if fmt == "npz":
        np.savez(path, **a, ids=np.array(ids), **{k: np.array(v) for k, v in extra.items()})
    else:
        from safetensors.numpy import save_file

        save_file(a, str(path), metadata={"ids": json.dumps(ids), **{k: json.dumps(v) for k, v in extra.items()}})
    return path
