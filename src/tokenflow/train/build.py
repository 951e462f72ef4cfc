"""What a run is built from: its splits (:func:`load_splits`), the model (:func:`build_model`),
the optimizer's parameter groups (:func:`param_groups`), and the kernels' determinism for the
run's duration (:func:`deterministic_algorithms`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from ..align import aligner_for
from ..data import load_split
from ..data.base import RetrievalSplit
from ..models import TinyCLIP, WordTokenizer, load_backbone
from ..models.retrieval import RetrievalModel
from .config import ConfigError, TrainConfig
from .objective import initial_logits

__all__ = ["build_model", "deterministic_algorithms", "load_splits", "param_groups"]


def _with_positives(split: RetrievalSplit, positives: Path | None, name: str) -> RetrievalSplit:
    if positives is None:
        return split
    from ..data.positives import add_positives

    return add_positives(split, positives, name)


def load_splits(cfg: TrainConfig) -> tuple[RetrievalSplit, RetrievalSplit, RetrievalSplit | None]:
    """The training, validation and test splits (``data.positives`` added to the last two); the
    test split is read now, so that a missing or empty one stops the run before training, not
    after (``None`` without ``data.test_split``)."""
    d = cfg.data
    train = load_split(d.dataset, d.root, d.train_split, media=d.media)
    val = _with_positives(load_split(d.dataset, d.root, d.val_split, media=d.media), d.positives, d.val_split)
    test = None if not d.test_split else _with_positives(
        load_split(d.dataset, d.root, d.test_split, media=d.media), d.positives, d.test_split)
    return train, val, test


def build_model(cfg: TrainConfig, train_split: RetrievalSplit) -> RetrievalModel:
    """Backbone (a local folder, or a new tiny encoder whose vocabulary comes from the training
    captions) + plan + fusion weights + logit scale (sigmoid: the cap rises to the starting scale)."""
    m = cfg.model
    if m.backbone == "tiny":
        tok = WordTokenizer.build(train_split.texts, max_len=cfg.data.max_words)
        if len(tok) > m.tiny.vocab_size:
            raise ConfigError(f"model.tiny.vocab_size: the training captions have {len(tok)} distinct words and "
                              f"specials, more than {m.tiny.vocab_size}; raise it")
        backbone = TinyCLIP(m.tiny, tok)
    else:
        backbone = load_backbone(m.backbone)
        try:  # data.max_words exactly, up to the backbone's positional limit (77 for CLIP)
            backbone.set_max_text_len(cfg.data.max_words)
        except ValueError as e:
            raise ConfigError(f"data.max_words: {e}") from None
    aligner = None if m.aligner is None else aligner_for(m.aligner, m.hparams, dim=backbone.embed_dim)
    scale, bias = initial_logits(cfg.loss.kind, backbone, m.logit_scale, cfg.loss.bias)
    cap = m.max_logit_scale if bias is None else max(m.max_logit_scale, scale)  # SigLIP's own t (~110-118) stays
    return RetrievalModel(backbone, aligner, w_global=m.w_global, w_fine=m.w_fine, logit_scale=scale,
                          max_logit_scale=cap, logit_bias=bias)


def _no_decay(name: str, p: nn.Parameter) -> bool:
    """open_clip's rule: no weight decay on gains and biases (1-d tensors, norms)."""
    return p.ndim < 2 or "bias" in name or "norm" in name


def param_groups(model: RetrievalModel, cfg: TrainConfig) -> list[dict]:
    """Backbone weights at ``optim.lr`` (decayed / not decayed: gains and biases), new
    parameters (logit scale, plan weights) at ``optim.lr_new`` without decay."""
    new = {id(p) for p in model.new_parameters()}
    decay, keep = [], []
    for name, p in model.backbone.named_parameters():
        if p.requires_grad and id(p) not in new:
            (keep if _no_decay(name, p) else decay).append(p)
    o = cfg.optim
    groups = [{"params": decay, "lr": o.lr, "weight_decay": o.weight_decay, "name": "backbone"},
              {"params": keep, "lr": o.lr, "weight_decay": 0.0, "name": "backbone_no_decay"},
              {"params": [p for p in model.new_parameters() if p.requires_grad], "lr": o.lr_new,
               "weight_decay": 0.0, "name": "new"}]
    for g in groups:
        g["peak_lr"] = g["lr"]
    return [g for g in groups if g["params"]]


@contextlib.contextmanager
def deterministic_algorithms(on: bool = True) -> Iterator[None]:
    """Inside the block (when ``on``): ``torch.use_deterministic_algorithms(True)`` and cuBLAS's
    fixed workspace (``CUBLAS_WORKSPACE_CONFIG``). The process's previous settings come back
    when the block ends, also on an error, so later runs in the process do not inherit them."""
    if not on:
        yield
        return
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = workspace
