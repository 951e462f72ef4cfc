"""Explanation figures: which patches and words made a match (paper figure 4)."""

from __future__ import annotations

from .explain import Explanation, explain, render

__all__ = ["Explanation", "explain", "render"]
