"""Pointing accuracy: does a plan send each object word to the object it names?

Given a plan over one image's patches and one caption's tokens, and the pixel box of every
object the caption names, each *object word* (a token of an object's words, "red" and
"circle" of a red circle) points at the patch that contributes most to it, the argmax over
patches of ``T[s, t] * c[s, t]``. The word is a hit when that patch's centre lies inside the
object's box. Chance is the fraction of patches whose centres lie in the box: what a plan that
picks a patch at random would score, averaged over the same words.

Boxes come from a sidecar (the ``scenes`` generator writes ``boxes.json``)::

    {"format": "tokenflow-boxes/1", "image_size": [W, H],
     "items": {"flickr30k-images/000017.png": [{"words": ["red", "circle"], "box": [x0, y0, x1, y1]}, ...]}}

Keys are media paths relative to the sidecar's folder; boxes are in pixels of the original
image, end-exclusive. An object's words count only where they appear together, in order, in
the caption, so an object the caption does not name is not scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from ..data.base import read_json
from ..errors import InputError

__all__ = ["WEIGHTS", "Pointing", "boxes_for", "object_words", "pointing", "read_boxes"]

FORMAT = "tokenflow-boxes/1"


@dataclass
class Pointing:
    """Hits over object words; ``chance`` sums each word's chance of a hit."""

    hits: int = 0
    total: int = 0
    chance: float = 0.0
    words: list[dict] = field(default_factory=list)

    def add(self, other: Pointing) -> Pointing:
        return Pointing(self.hits + other.hits, self.total + other.total, self.chance + other.chance,
                        self.words + other.words)

    @property
    def accuracy(self) -> float:
        """Percent of object words that point into their object's box (NaN with no word)."""
        return 100.0 * self.hits / self.total if self.total else float("nan")

    @property
    def chance_accuracy(self) -> float:
        return 100.0 * self.chance / self.total if self.total else float("nan")

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "chance": self.chance_accuracy, "hits": self.hits, "words": self.total}


def _norm(token: str) -> str:
    return token.lower().removesuffix("</w>").removeprefix("\u0120").strip()


def object_words(tokens: list[str], objects: list[dict]) -> list[tuple[int, int]]:
    """(token index, object index) for every token that belongs to a mention of an object:
    the object's ``words`` appearing consecutively, in order, among ``tokens``."""
    toks = [_norm(t) for t in tokens]
    out = []
    for j, obj in enumerate(objects):
        words = [w.lower() for w in obj["words"]]
        n = len(words)
        for i in range(len(toks) - n + 1):
            if toks[i : i + n] == words:
                out += [(i + k, j) for k in range(n)]
    return out


def _patch_centres(grid: tuple[int, int], image_size: tuple[int, int]) -> list[tuple[float, float]]:
    """Centres of the patches in original-image pixels; the model sees the centre square."""
    gh, gw = grid
    w, h = image_size
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    return [(left + (c + 0.5) * side / gw, top + (r + 0.5) * side / gh) for r in range(gh) for c in range(gw)]


#: What a word points with: its contribution to the score ``T * c`` (``flow``, what the
#: explanation figures draw), the size of that contribution ``|T * c|`` (``abs``), or the plan's
#: weight ``T`` alone (``plan``). They differ for plans with signed weights (TokenFlow's d and e
#: are not clamped), where ``T * c`` can peak at a patch whose ``c`` and ``T`` are both negative.
WEIGHTS = ("flow", "abs", "plan")


def pointing(flow: Tensor, c: Tensor, tokens: list[str], objects: list[dict], grid: tuple[int, int],
             image_size: tuple[int, int], weight: str = "flow") -> Pointing:
    """Pointing of one (image, caption) pair.

    Args:
        flow, c: [P, L] plan and token similarities over real tokens, patches row-major.
        tokens: the caption's L tokens as text; objects: ``{"words": [...], "box": [x0, y0, x1, y1]}``.
        grid: the patch grid (rows, columns); image_size: (width, height) of the original image.
        weight: what picks a word's patch, one of :data:`WEIGHTS` (the argmax over patches of
            ``T * c``, ``|T * c|`` or ``T``).
    """
    if weight not in WEIGHTS:
        raise ValueError(f"weight must be one of {', '.join(WEIGHTS)}, got {weight!r}")
    if flow.shape != c.shape or flow.dim() != 2:
        raise ValueError(f"flow and c must be the same [patches, tokens] shape, got {tuple(flow.shape)} and "
                         f"{tuple(c.shape)}")
    if flow.shape[0] != grid[0] * grid[1] or flow.shape[1] != len(tokens):
        raise ValueError(f"plan is {tuple(flow.shape)} but the grid has {grid[0] * grid[1]} patches and the caption "
                         f"{len(tokens)} tokens")
    centres = _patch_centres(grid, image_size)
    contrib = (flow if weight == "plan" else (flow * c).abs() if weight == "abs" else flow * c).float()
    out = Pointing()
    for t, j in object_words(tokens, objects):
        x0, y0, x1, y1 = objects[j]["box"]
        inside = [x0 <= x < x1 and y0 <= y < y1 for x, y in centres]
        col = contrib[:, t]
        p = int(col.argmax())
        hit = bool(flow[:, t].abs().sum() > 0) and inside[p]  # a word that receives no mass points nowhere
        out.hits += hit
        out.total += 1
        out.chance += sum(inside) / len(inside)
        out.words.append({"token": t, "word": tokens[t], "object": j, "patch": p, "hit": hit})
    return out


def read_boxes(path: str | Path) -> dict:
    """A boxes sidecar, checked; errors name the file and the field."""
    path = Path(path)
    data = read_json(path, "boxes file")
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("items"), dict):
        raise InputError(f"{path}: expected an object with \"format\": \"{FORMAT}\" and an 'items' mapping")
    size = data.get("image_size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise InputError(f"{path}: image_size: expected [width, height] in pixels, got {size!r}")
    for key, objs in data["items"].items():
        if not isinstance(objs, list):
            raise InputError(f"{path}: items[{key!r}]: expected a list of objects")
        for j, o in enumerate(objs):
            ok = (isinstance(o, dict) and isinstance(o.get("words"), list) and o["words"]
                  and all(isinstance(w, str) for w in o["words"]) and isinstance(o.get("box"), list)
                  and len(o["box"]) == 4 and all(isinstance(v, (int, float)) for v in o["box"]))
            if not ok:
                raise InputError(f"{path}: items[{key!r}][{j}]: expected {{\"words\": [str, ...], "
                                 f"\"box\": [x0, y0, x1, y1]}}, got {o!r}")
    data["_folder"] = str(path.parent)
    data["_path"] = str(path)
    return data


def boxes_for(boxes: dict, media: str | Path) -> list[dict]:
    """The objects of ``media`` in a sidecar read by :func:`read_boxes` (looked up by its path
    relative to the sidecar's folder, then by file name)."""
    media = Path(media)
    items = boxes["items"]
    try:
        key = str(media.resolve().relative_to(Path(boxes["_folder"]).resolve()))
    except ValueError:
        key = media.name
    if key in items:
        return items[key]
    by_name = [k for k in items if Path(k).name == media.name]
    if len(by_name) == 1:
        return items[by_name[0]]
    raise InputError(f"{boxes['_path']}: no boxes for {media} (looked for the key {key!r})")
