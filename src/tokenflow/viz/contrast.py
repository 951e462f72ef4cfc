"""Explain a hard negative: the plans of a true and a false caption for one image, side by side.

The fine score of a caption is ``sum_{s,t} T[s, t] c[s, t]``, so it splits exactly into one
share per word, ``sum_s T[s, t] c[s, t]``. The two captions' words are lined up (the longest
common subsequence of their tokens: a swapped or replaced word faces the word it replaced, an
added word faces nothing), and each pair's share changes by some amount; these changes add up to
the difference of the two fine scores. The pairs with the largest changes are the ones that
moved the score: why the plan got the item right, or wrong.
"""

from __future__ import annotations

import difflib
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .._extras import require
from ..align import Aligner
from ..errors import InputError
from ..models.retrieval import RetrievalModel
from ..utils import atomic_path
from .explain import Direction, Explanation, explain, load_model, render

__all__ = ["Contrast", "explain_contrast", "render_contrast", "word_shares"]


def word_shares(expl: Explanation) -> list[float]:
    """Each token's share of the fine score, ``sum_s T[s, t] c[s, t]`` (they add up to ``expl.score``)."""
    return (expl.flow * expl.c).sum(0).tolist()


@dataclass
class Contrast:
    """A true and a false caption explained on the same image with the same plan; ``w_global``
    and ``w_fine`` fuse the scores as retrieval does."""

    true: Explanation
    false: Explanation
    w_global: float = 1.0
    w_fine: float = 1.0

    def fused(self, expl: Explanation) -> float:
        """``w_global * global + w_fine * fine`` of one side."""
        return self.w_global * expl.global_score + self.w_fine * expl.score

    def moved(self) -> list[dict]:
        """The lined-up word pairs (``true``, ``false``: the words, ``""`` for none), each with both
        shares and ``change`` = false share - true share, largest ``|change|`` first. The changes
        add up to ``false.score - true.score``."""
        a, b = self.true.tokens, self.false.tokens
        sa, sb = word_shares(self.true), word_shares(self.false)
        pairs = []
        for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
            if op == "equal" or (op == "replace" and i2 - i1 == j2 - j1):
                spans = [((i, i + 1), (j, j + 1)) for i, j in zip(range(i1, i2), range(j1, j2), strict=True)]
            else:
                spans = [((i1, i2), (j1, j2))]
            for (p, q), (r, s) in spans:
                ta, tb = sum(sa[p:q]), sum(sb[r:s])
                pairs.append({"true": " ".join(a[p:q]), "false": " ".join(b[r:s]), "true_share": ta,
                              "false_share": tb, "change": tb - ta, "same_word": op == "equal"})
        return sorted(pairs, key=lambda d: -abs(d["change"]))

    def verdict(self) -> dict:
        """Margins (true - false) of the fine, global and fused scores; an item is right when the
        margin is > 0 (a tie is a failure)."""
        fine = self.true.score - self.false.score
        glob = self.true.global_score - self.false.global_score
        fused = self.fused(self.true) - self.fused(self.false)
        return {"fine": fine, "global": glob, "fused": fused, "correct": fused > 0}

    def to_dict(self, k: int = 5) -> dict:
        return {"true": self.true.to_dict(k), "false": self.false.to_dict(k), "w_global": self.w_global,
                "w_fine": self.w_fine, "margin": self.verdict(), "moved": self.moved()}


def explain_contrast(model: RetrievalModel | str | Path, media: str | Path, caption: str, negative: str, *,
                     direction: Direction = "t2v", aligner: Aligner | str | None = None,
                     num_frames: int = 12) -> Contrast:
    """Explain ``media`` against its true ``caption`` and a false ``negative`` with the same plan
    (see :func:`~tokenflow.viz.explain.explain` for the arguments); fusion weights are the model's."""
    if not negative or not negative.strip():
        raise InputError("negative caption is empty: give the false caption to compare with")
    model = load_model(model, aligner if isinstance(aligner, str) else None)
    sides = [explain(model, media, text, direction=direction, aligner=aligner, num_frames=num_frames)
             for text in (caption, negative)]
    return Contrast(*sides, w_global=model.w_global, w_fine=model.w_fine)


def render_contrast(contrast: Contrast, path: str | Path, *, top: int = 4, pairs: int = 5) -> Path:
    """Draw both explanations side by side (each as :func:`~tokenflow.viz.explain.render` draws
    it) over the ``pairs`` word pairs that moved the score most; PNG written atomically."""
    matplotlib = require("matplotlib", "viz", "drawing explanation figures")

    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    with tempfile.TemporaryDirectory() as tmp:
        panels = [mpimg.imread(render(e, Path(tmp) / f"{k}.png", top=top))
                  for k, e in enumerate((contrast.true, contrast.false))]
    v = contrast.verdict()
    fig = plt.figure(figsize=(15, 8.6), dpi=110)
    for k, (panel, label) in enumerate(zip(panels, ("true caption", "false caption"), strict=True)):
        ax = fig.add_axes((0.5 * k, 0.16, 0.5, 0.80))
        ax.imshow(panel)
        ax.set_axis_off()
        expl = (contrast.true, contrast.false)[k]
        ax.set_title(f"{label}: {expl.caption}\nfused {contrast.fused(expl):.4f}", fontsize=10)
    lines = [f"margin true - false: fused {v['fused']:+.4f} ({'right' if v['correct'] else 'wrong'}), "
             f"fine {v['fine']:+.4f}, global {v['global']:+.4f}. Word pairs that moved the fine score:"]
    for p in contrast.moved()[:pairs]:
        lines.append(f"  {p['true'] or '(none)'} -> {p['false'] or '(none)'}: {p['true_share']:.4f} -> "
                     f"{p['false_share']:.4f} ({p['change']:+.4f})")
    fig.text(0.02, 0.02, "\n".join(lines), fontsize=9, family="monospace", va="bottom")
    path = Path(path)
    with atomic_path(path) as out:
        fig.savefig(out, format="png")
    plt.close(fig)
    return path
