"""Why did this image (or video) and this caption match? Figure 4 of the TokenFlow paper.

:func:`explain` computes, for one visual item and one caption, the plan of any aligner over
real tokens: the patch weights ``d`` and word weights ``e`` (eq 14), the token similarities
``c`` and the flow ``T`` of the chosen direction, and the strongest word-patch contributions
``T_hat * c`` with ``T_hat = 100 * T`` (the paper's rescaling). :func:`render` draws them: the
image under a heat map of ``d`` over its patch grid, the caption's tokens shaded by ``e``, and
arrows from the strongest tokens to their patches, labelled ``T_hat x c``.

``d`` and ``e`` are the plan's own token weights where it has them
(:meth:`~tokenflow.align.Aligner.explain_weights`: TokenFlow's eq 14, WTI's learned weights,
the learnable plan's position weights); a plan without them is shown by each token's share of
its fine score, ``sum T x c`` over the other side's tokens. ``weights`` says which, and
``weights_label`` says it in words.

Videos are explained on their middle frame (frame 6 of 12, as in the paper): its patch tokens
against the caption, with the video's global feature (mean over frames) for ``d`` and ``e``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from .._extras import require
from ..align import Aligner, Tokens, aligner_for
from ..data.base import VIDEO_EXTENSIONS, load_image
from ..data.video import read_video_frames
from ..errors import InputError
from ..eval.pointing import pointing
from ..models.retrieval import RetrievalModel
from ..models.scoring import Scoring, load_scoring
from ..utils import atomic_path

__all__ = ["PLAN_WEIGHTS", "SCORE_SHARE", "Explanation", "explain", "explain_tokens", "explanation_of", "load_model",
           "markers", "numbered_tokens", "render", "scored_model", "shown_weights", "token_labels"]

Direction = Literal["t2v", "v2t"]
FLOW_SCALE = 100.0  # the paper shows T rescaled by 100
#: What ``d`` and ``e`` of an explanation are: the plan's own token weights, or each token's share of the score.
PLAN_WEIGHTS, SCORE_SHARE = "plan", "score-share"


@dataclass
class Explanation:
    """The numbers behind one explanation (all over real tokens; patches in row-major order)."""

    caption: str
    tokens: list[str]
    grid: tuple[int, int]
    aligner: str
    direction: str
    d: Tensor  # [P] patch weights (see ``weights``)
    e: Tensor  # [L] token weights (see ``weights``)
    c: Tensor  # [P, L] token similarities
    flow: Tensor  # [P, L] T of the chosen direction
    score: float  # sum(c * flow): the fine-grained score of this direction
    global_score: float  # v_bar . t_bar
    image: object  # the PIL image shown (the square the model sees); None from stored features
    source_size: tuple[int, int] = (0, 0)  # (width, height) of the original image or frame
    weights: str = PLAN_WEIGHTS  # PLAN_WEIGHTS or SCORE_SHARE: what d and e are
    weights_label: str = ""  # the same in words, for a figure or a page

    def pointing(self, objects: list[dict]):
        """Pointing accuracy of this plan for the objects' boxes (original-image pixels; see
        :mod:`tokenflow.eval.pointing`)."""
        return pointing(self.flow, self.c, self.tokens, objects, self.grid, self.source_size)

    def top_pairs(self, k: int = 5, words_only: bool = True, tokens: list[int] | None = None) -> list[dict]:
        """The ``k`` word-patch pairs that contribute most, ``T_hat * c`` with ``T_hat = 100 T``.

        ``words_only`` leaves out special tokens (``<bos>``, ``<|endoftext|>``, ...), which
        often carry sentence-level mass rather than a word's; ``tokens`` keeps only pairs from
        those token indices (the object words of a caption, say)."""
        contrib = self.flow * self.c
        if tokens is not None:
            keep = torch.zeros(len(self.tokens), dtype=torch.bool)
            keep[list(tokens)] = True
            contrib = contrib.masked_fill(~keep.unsqueeze(0), float("-inf"))
        elif words_only:
            special = torch.tensor([t.startswith("<") and t.endswith(">") for t in self.tokens])
            if not bool(special.all()):
                contrib = contrib.masked_fill(special.unsqueeze(0), float("-inf"))
        contrib = contrib.flatten()
        order = torch.argsort(contrib, descending=True)[:k].tolist()
        cols = self.c.shape[1]
        out = []
        for i in order:
            s, t = divmod(i, cols)
            out.append({"patch": s, "row": s // self.grid[1], "col": s % self.grid[1], "token": t,
                        "word": self.tokens[t], "T_hat": FLOW_SCALE * float(self.flow[s, t]),
                        "c": float(self.c[s, t]), "T_hat_x_c": FLOW_SCALE * float(self.flow[s, t] * self.c[s, t])})
        return out

    def to_dict(self, k: int = 5) -> dict:
        """The numbers as JSON: the fields above but the image and ``c``/``flow``, the ``k`` strongest
        pairs and their :func:`markers` (one per patch)."""
        pairs = self.top_pairs(k)
        return {"caption": self.caption, "tokens": self.tokens, "grid": list(self.grid), "aligner": self.aligner,
                "direction": self.direction, "score": self.score, "global_score": self.global_score,
                "weights": self.weights, "weights_label": self.weights_label,
                "d": self.d.tolist(), "e": self.e.tolist(), "top_pairs": pairs, "markers": markers(pairs)}


def markers(pairs: list[dict]) -> list[dict]:
    """One marker per patch for the pairs of :meth:`Explanation.top_pairs`, so that pairs on the
    same patch do not hide each other: ``{"patch", "row", "col", "pairs", "label"}``, ``pairs``
    holding the 1-based ranks of that patch's pairs, ``label`` them joined (``"1,3"``); in the
    order of each patch's best pair."""
    out: dict[int, dict] = {}
    for n, p in enumerate(pairs, 1):
        m = out.setdefault(p["patch"], {"patch": p["patch"], "row": p["row"], "col": p["col"], "pairs": []})
        m["pairs"].append(n)
    for m in out.values():
        m["label"] = ",".join(map(str, m["pairs"]))
    return list(out.values())


def shown_weights(aligner: Aligner, vis: Tokens, txt: Tokens, c: Tensor,
                  flow: Tensor) -> tuple[Tensor, Tensor, str, str]:
    """The patch and word weights an explanation draws for one pair (``c``, ``flow``: its plan over
    real tokens), as float32 on the CPU, what they are (:data:`PLAN_WEIGHTS` or
    :data:`SCORE_SHARE`) and a label: the plan's own
    (:meth:`~tokenflow.align.Aligner.explain_weights`), else each token's share of the fine score
    ``sum T x c`` over the other side (both sides add up to the score)."""
    own = aligner.explain_weights(vis, txt)
    if own is not None:
        d, e, label = own
        return d.detach().float().cpu(), e.detach().float().cpu(), PLAN_WEIGHTS, label
    share = (flow * c).detach().float().cpu()
    name = getattr(aligner, "name", "") or type(aligner).__name__
    return share.sum(1), share.sum(0), SCORE_SHARE, (
        f"{name} weighs no token on its own: each patch's and each word's share of the fine score "
        "(T x c summed over the other side)")


@torch.no_grad()
def explanation_of(aligner: Aligner, vis: Tokens, txt: Tokens, *, direction: Direction, caption: str,
                   tokens: list[str], grid: tuple[int, int], image: object = None,
                   source_size: tuple[int, int] = (0, 0)) -> Explanation:
    """The :class:`Explanation` of one pair of tokens (``vis``, ``txt``: one row each, on the
    aligner's device) under ``aligner``: its plan, the flow of ``direction`` and :func:`shown_weights`."""
    plan = aligner.plan(vis, txt)
    flow = plan.t2v if direction == "t2v" else plan.v2t
    d, e, kind, label = shown_weights(aligner, vis, txt, plan.c, flow)
    return Explanation(
        caption=caption, tokens=tokens, grid=grid, aligner=getattr(aligner, "name", "") or type(aligner).__name__,
        direction=direction, d=d, e=e, c=plan.c.float().cpu(), flow=flow.float().cpu(),
        score=float((plan.c * flow).sum()), global_score=float(vis.pooled[0] @ txt.pooled[0]), image=image,
        source_size=source_size, weights=kind, weights_label=label)


def _centre_square(image):
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side))


def scored_model(folder: str | Path, aligner: str | None = None) -> tuple[RetrievalModel, Scoring]:
    """What the folder ``folder`` is scored with, as a :class:`RetrievalModel`
    (:meth:`RetrievalModel.from_scoring` of :func:`tokenflow.models.scoring.load_scoring`: its
    trained plan with its learned weights, or the plan ``aligner``), and that :class:`Scoring`
    (its overrides and notes). ``FileNotFoundError`` naming the folder when there is none."""
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"model folder {folder} not found (a folder saved by tokenflow train, or a "
                                "backbone folder)")
    scoring = load_scoring(folder, aligner)
    return RetrievalModel.from_scoring(scoring), scoring


def load_model(model: RetrievalModel | str | Path, aligner: str | None = None) -> RetrievalModel:
    """``model`` itself, or what the folder ``model`` is scored with (:func:`scored_model`)."""
    return model if isinstance(model, RetrievalModel) else scored_model(model, aligner)[0]


def _plan_of(model: RetrievalModel, aligner: Aligner | str | None) -> Aligner | None:
    """The plan to explain: an Aligner as given; a name: the model's own plan when it is that one
    (with its learned weights), else that plan built fresh; None: the model's plan."""
    if not isinstance(aligner, str):
        return aligner or model.aligner
    if model.aligner is not None and getattr(model.aligner, "name", None) == aligner:
        return model.aligner
    return aligner_for(aligner, dim=model.backbone.embed_dim)


@torch.no_grad()
def explain(model: RetrievalModel | str | Path, media: str | Path, caption: str, *, direction: Direction = "t2v",
            aligner: Aligner | str | None = None, num_frames: int = 12) -> Explanation:
    """Explain how ``media`` (an image, or a video's middle frame) matches ``caption``.

    ``model``: a :class:`RetrievalModel` or a saved model folder (read by the one scoring path,
    :func:`tokenflow.models.scoring.load_scoring`). ``aligner``: explain another plan than the
    model's own (a name or an Aligner); the model's own plan by name keeps its learned weights.
    """
    if direction not in ("t2v", "v2t"):
        raise InputError(f"direction must be 't2v' or 'v2t', got {direction!r}")
    if not caption or not caption.strip():
        raise InputError("caption is empty: give the text to explain")
    model = load_model(model, aligner if isinstance(aligner, str) else None)
    aligner = _plan_of(model, aligner)
    if aligner is None:
        raise InputError("this model has no fine-grained plan (global only): pass aligner=... to explain one")
    if not aligner.token_plan:
        what = ("scores sets of learned embeddings, not token pairs" if hasattr(aligner, "sets") else
                "pools token similarities in a way that is not a weighted sum of them")
        raise InputError(f"{aligner.name} {what}: there is no patch-word plan to draw; pass aligner=... to "
                         "explain a token plan")
    backbone = model.backbone.eval()
    device = backbone.device
    media = Path(media)
    if media.suffix.lower() in VIDEO_EXTENSIONS:
        frames = read_video_frames(media, num_frames)
        mid = len(frames) // 2 - 1 if len(frames) > 1 else 0  # 6th of 12, as in the paper
        pixels = torch.stack([backbone.preprocess(f) for f in frames]).unsqueeze(0).to(device)
        video = backbone.encode_videos(pixels, tokens="patches")
        p = video.feats.shape[1] // len(frames)
        vis = Tokens(video.feats[:, mid * p : (mid + 1) * p], video.mask[:, mid * p : (mid + 1) * p], video.pooled)
        shown = frames[mid]
    else:
        image = load_image(media)
        vis = backbone.encode_images(backbone.preprocess(image).unsqueeze(0).to(device))
        shown = image
    ids, mask = backbone.tokenize([caption])
    txt = backbone.encode_texts(ids.to(device), mask.to(device))
    real_ids = ids[0][mask[0].bool()].tolist()
    gh, gw = backbone.patch_grid
    if int(vis.mask[0].sum()) != gh * gw:
        raise ValueError(f"{int(vis.mask[0].sum())} visual tokens do not form the {gh} x {gw} patch grid")
    return explanation_of(aligner.to(device).eval(), vis, txt, direction=direction, caption=caption,
                          tokens=backbone.decode_tokens(real_ids), grid=(gh, gw), image=_centre_square(shown),
                          source_size=tuple(shown.size))


def numbered_tokens(n: int) -> list[str]:
    """``#1, #2, ..., #n``: the labels of ``n`` tokens whose words are not known."""
    return [f"#{t + 1}" for t in range(n)]


def token_labels(text: str | None, n: int) -> list[str]:
    """Labels of a stored caption's ``n`` real tokens (a store keeps no tokenizer): its words (split
    at spaces, or words and punctuation) when they are as many, or as many plus ``<bos>`` and
    ``<eos>``; else :func:`numbered_tokens`."""
    import re

    for words in ((text.split(), re.findall(r"\w+|[^\w\s]", text)) if text else ()):
        if len(words) == n:
            return words
        if len(words) + 2 == n:
            return ["<bos>", *words, "<eos>"]
    return numbered_tokens(n)


@torch.no_grad()
def explain_tokens(vis: Tokens, txt: Tokens, caption: str | None, aligner: Aligner, *,
                   direction: Direction = "t2v") -> Explanation:
    """Explain the match of one visual item's and one caption's tokens (``vis``, ``txt``: one row
    each) with no backbone and no image (``image`` is None): features from a store
    (``tokenflow explain --visual-store V --text-store T``), the plan, weights and flows of its tokens.

    The visual tokens are drawn as a square grid when their count is a square number, else as one
    row (video frames; a class token beside the patches). Word labels: :func:`token_labels`.
    """
    if direction not in ("t2v", "v2t"):
        raise InputError(f"direction must be 't2v' or 'v2t', got {direction!r}")
    if vis.dim != txt.dim:
        raise InputError(f"visual tokens have D={vis.dim}, text tokens D={txt.dim}: features of different models")
    if not aligner.token_plan:
        raise InputError(f"{aligner.name}: no patch-word plan to draw (not a weighted sum of token similarities); "
                         "choose a token plan")
    n = int(vis.mask[0].sum())
    side = int(n**0.5)
    grid = (side, side) if side * side == n else (1, n)
    return explanation_of(aligner.eval(), vis, txt, direction=direction, caption=caption or "",
                          tokens=token_labels(caption, int(txt.mask[0].sum())), grid=grid)


def render(expl: Explanation, path: str | Path, *, top: int = 4, title: str | None = None,
           tokens: list[int] | None = None) -> Path:
    """Draw ``expl`` as a PNG at ``path`` (written atomically) in the manner of the paper's figure 4;
    ``title`` is a line above the default one (the plan and its scores); ``tokens`` limits the
    arrows to flows from those token indices (see :meth:`Explanation.top_pairs`)."""
    matplotlib = require("matplotlib", "viz", "drawing explanation figures")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import ConnectionPatch

    gh, gw = expl.grid
    fig = plt.figure(figsize=(7.5, 7.2), dpi=110)
    ax = fig.add_axes((0.08, 0.30, 0.72, 0.62))
    if expl.image is not None:  # stored features come without their image: the weights alone
        ax.imshow(expl.image, extent=(0, gw, gh, 0), interpolation="bilinear")
    heat = ax.imshow(expl.d.reshape(gh, gw).numpy(), extent=(0, gw, gh, 0), cmap="jet",
                     alpha=0.45 if expl.image is not None else 0.9, interpolation="nearest")
    ax.set_xticks(range(gw + 1), minor=False)
    ax.set_yticks(range(gh + 1), minor=False)
    ax.tick_params(labelbottom=False, labelleft=False, length=0)
    ax.grid(color="white", linewidth=0.4, alpha=0.6)
    cax = fig.add_axes((0.83, 0.30, 0.025, 0.62))
    fig.colorbar(heat, cax=cax, label="patch weight" if expl.weights == PLAN_WEIGHTS else "patch's share of the score")
    head = f"{expl.aligner} ({expl.direction}): fine {expl.score:.3f}, global {expl.global_score:.3f}"
    ax.set_title(f"{title}\n{head}" if title else head, fontsize=10)

    tax = fig.add_axes((0.02, 0.04, 0.96, 0.16))
    xs = _draw_tokens(tax, expl, plt.get_cmap("Blues"))
    pairs = expl.top_pairs(top, tokens=tokens)
    for pair in pairs:
        con = ConnectionPatch(xyA=(xs[pair["token"]], 0.75), coordsA=tax.transData,
                              xyB=(pair["col"] + 0.5, pair["row"] + 0.5), coordsB=ax.transData, arrowstyle="->",
                              color="crimson", linewidth=1.2)
        fig.add_artist(con)
    for m in markers(pairs):  # one label per patch, listing each of its pairs, so none hides another
        text = "\n".join(f"{pairs[n - 1]['T_hat']:.2f}x{pairs[n - 1]['c']:.2f}" for n in m["pairs"])
        ax.annotate(text, (m["col"] + 0.5, m["row"] + 0.5), fontsize=7, color="white", ha="center", va="center",
                    bbox={"boxstyle": "round,pad=0.15", "facecolor": "crimson", "alpha": 0.8, "edgecolor": "none"})
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def _draw_tokens(tax, expl: Explanation, cmap) -> list[float]:
    """The caption's tokens in a row on ``tax``, shaded by ``e``, with the weights' legend; returns
    each token's x (axes fraction) for the arrows."""
    tax.set_axis_off()
    n, e = len(expl.tokens), expl.e
    lo, hi = float(e.min()), float(e.max())
    widths = [max(2, len(t)) + 1 for t in expl.tokens]
    total = sum(widths)
    xs, acc = [], 0.0
    for w in widths:
        xs.append((acc + w / 2) / total)
        acc += w
    for t, (tok, x) in enumerate(zip(expl.tokens, xs, strict=True)):
        shade = 0.15 + 0.75 * ((float(e[t]) - lo) / (hi - lo) if hi > lo else 0.5)
        tax.text(x, 0.5, tok, ha="center", va="center", fontsize=9 if n < 20 else 7, family="monospace",
                 color="white" if shade > 0.6 else "black",
                 bbox={"boxstyle": "round,pad=0.25", "facecolor": cmap(shade), "edgecolor": "none"})
    legend = expl.weights_label or "token weights"
    tax.text(0.0, 0.05, f"{legend}; darker = larger", fontsize=7, color="0.35", transform=tax.transAxes, wrap=True)
    return xs
