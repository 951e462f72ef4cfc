"""Backbones: a dual encoder turns images, videos and texts into :class:`~tokenflow.Tokens`."""

from __future__ import annotations

from .base import DualEncoder, VideoTokens
from .loading import load_backbone
from .retrieval import RetrievalModel
from .tiny import TinyCLIP, TinyConfig, WordTokenizer

__all__ = ["DualEncoder", "RetrievalModel", "TinyCLIP", "TinyConfig", "VideoTokens", "WordTokenizer", "load_backbone"]
