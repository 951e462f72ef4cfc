"""Helpers shared by test modules (import them from here, not from another test module)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch


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
