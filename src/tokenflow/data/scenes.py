"""``scenes``: a synthetic task where local content decides the match.

Each image holds several objects (a colour and a shape each, no two alike) on a grid of cells,
one object per cell. Each caption names a random subset of them ("a red circle, a blue cross
and a white square"), so a caption says nothing about the objects it leaves out. A single
global vector has to summarise every object of the image and still match any subset; a
token-level plan can let each named object find its own patches and ignore the rest.

A caption naming a subset can be true of several images: every image that holds all of the
named objects. The generator writes those extra positives to a sidecar, so the evaluation
counts them as correct answers (the dataset format itself links each caption to one image).

Written under ``out`` (Flickr30K's Karpathy layout, which :func:`tokenflow.data.load_split`
reads as ``flickr30k``)::

    dataset_flickr30k.json   train / val / test images with 5 captions each
    flickr30k-images/*.png
    positives.json           captions true of more images than their own (val and test)
    boxes.json               each object's words and pixel box, per image file (both folders)
    hard_negatives.json      each test caption with one object's colour or shape replaced
    pretrain/                the same layout for the pretraining images (train + val, positives.json)

PNG, not JPEG: at 32 pixels JPEG's halved colour resolution smears an 8-pixel object's colour
into its neighbours.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from .._extras import require
from ..utils import atomic_path, write_text_atomic

__all__ = ["PLACEMENTS", "SCENE_COLORS", "SCENE_SHAPES", "TEMPLATES", "make_scenes", "render_scene", "scene_captions",
           "write_scene_negatives"]

SCENE_COLORS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 230), "yellow": (235, 205, 40),
    "purple": (150, 60, 190), "orange": (245, 140, 30), "white": (245, 245, 245), "black": (15, 15, 15),
}
SCENE_SHAPES = ("circle", "square", "triangle", "cross")
BOXES_FORMAT = "tokenflow-boxes/1"
POSITIVES_FORMAT = "tokenflow-positives/1"


def _draw(draw, color: str, shape: str, box: tuple[int, int, int, int]) -> None:
    x0, y0, x1, y1 = box
    col = SCENE_COLORS[color]
    if shape == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=col)
    elif shape == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=col)
    elif shape == "triangle":
        draw.polygon([((x0 + x1 - 1) / 2, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)], fill=col)
    else:  # cross: a plus sign one third of the box thick
        w, h = x1 - x0, y1 - y0
        tw, th = max(1, round(w / 3)), max(1, round(h / 3))
        cx0, cy0 = x0 + (w - tw) // 2, y0 + (h - th) // 2
        draw.rectangle((cx0, y0, cx0 + tw - 1, y1 - 1), fill=col)
        draw.rectangle((x0, cy0, x1 - 1, cy0 + th - 1), fill=col)


def render_scene(objects: list[dict], size: int, background: int):
    """Draw ``objects`` (``color``, ``shape``, pixel ``box`` [x0, y0, x1, y1), exclusive end) on
    a grey canvas; returns a PIL image."""
    require("PIL", "train", "drawing the scenes")
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (background,) * 3)
    d = ImageDraw.Draw(img)
    for o in objects:
        _draw(d, o["color"], o["shape"], tuple(o["box"]))
    return img


def _random_scene(rng: random.Random, size: int, grid: int, n_objects: int, placement: str = "cell") -> list[dict]:
    combos = [(c, s) for c in SCENE_COLORS for s in SCENE_SHAPES]
    cells = rng.sample(range(grid * grid), n_objects)
    cell = size // grid
    objects = []
    for (color, shape), k in zip(rng.sample(combos, n_objects), cells, strict=True):
        if placement == "cell":  # one pixel short of the cell, centred: a patch sees one whole object
            side = cell - 1
            dx = dy = (cell - side) // 2
        else:  # "jitter": 60-100 % of the cell at a random offset (covers the cell's centre)
            side = rng.randint(max(3, round(cell * 0.6)), cell)
            dx, dy = rng.randint(0, cell - side), rng.randint(0, cell - side)
        x0, y0 = (k % grid) * cell + dx, (k // grid) * cell + dy
        objects.append({"color": color, "shape": shape, "box": [x0, y0, x0 + side, y0 + side]})
    return objects


#: Caption templates: ``plain`` lists the named objects only; ``varied`` wraps the list in one
#: of four phrasings, so the text encoder must also learn which words carry no content.
TEMPLATES = {"plain": ("{}",), "varied": ("{}", "there is {}", "an image with {}", "{} on a grey background")}
PLACEMENTS = ("cell", "jitter")


def scene_captions(objects: list[dict], rng: random.Random, n: int = 5, named: int = 3,
                   templates: str = "varied") -> list[tuple[str, list[int]]]:
    """``n`` captions, each naming a random subset of ``named`` objects in a random order;
    returns (caption, indices of the named objects)."""
    out = []
    for _ in range(n):
        idx = rng.sample(range(len(objects)), min(named, len(objects)))
        parts = [f"a {objects[i]['color']} {objects[i]['shape']}" for i in idx]
        listed = ", ".join(parts[:-1]) + f" and {parts[-1]}" if len(parts) > 1 else parts[0]
        template = rng.choice(TEMPLATES[templates])
        out.append((template.format(listed), idx))
    return out


def _write_split_file(out: Path, images: list[dict]) -> None:
    write_text_atomic(out / "dataset_flickr30k.json", json.dumps({"dataset": "flickr30k", "images": images}))


def _positives(images: list[dict], objects: dict[str, list[dict]], named: dict[int, list[int]]) -> list[dict]:
    """For val and test: every caption with the images, besides its own, that hold all it names
    (training draws in-batch negatives from the item ids and does not read this file)."""
    out = []
    for split in ("val", "test"):
        imgs = [im for im in images if im["split"] == split]
        have = {im["filename"]: {(o["color"], o["shape"]) for o in objects[im["filename"]]} for im in imgs}
        for im in imgs:
            objs = objects[im["filename"]]
            for s in im["sentences"]:
                want = {(objs[i]["color"], objs[i]["shape"]) for i in named[s["sentid"]]}
                also = [str(other["imgid"]) for other in imgs
                        if other is not im and want <= have[other["filename"]]]
                if also:
                    out.append({"split": split, "text": s["raw"], "item": str(im["imgid"]), "also": also})
    return out


def _write_folder(out: Path, folder: Path, splits: list[tuple[str, int]], first_id: int, rng: random.Random,
                  draw: dict, boxes: dict[str, list[dict]]) -> None:
    """One folder's images, split file and positives; adds each image's boxes to ``boxes``."""
    img_dir = folder / "flickr30k-images"
    img_dir.mkdir(parents=True, exist_ok=True)
    images, objs, named_by_sent, sentid = [], {}, {}, 0
    for split, n in splits:
        for _ in range(n):
            k = first_id + len(images)
            name = f"{k:06d}.png"
            scene = _random_scene(rng, draw["image_size"], draw["grid"], draw["objects"], draw["placement"])
            img = render_scene(scene, draw["image_size"], rng.randint(100, 140))
            with atomic_path(img_dir / name) as tmp:
                img.save(tmp, format="PNG")
            sents = []
            for text, idx in scene_captions(scene, rng, 5, draw["named"], draw["templates"]):
                sents.append({"raw": text, "tokens": text.replace(",", "").split(), "imgid": k, "sentid": sentid})
                named_by_sent[sentid] = idx
                sentid += 1
            images.append({"filename": name, "imgid": k, "split": split, "sentids": [s["sentid"] for s in sents],
                           "sentences": sents})
            objs[name] = scene
            boxes[str(folder.relative_to(out) / "flickr30k-images" / name)] = [
                {"words": [o["color"], o["shape"]], "box": o["box"]} for o in scene]
    _write_split_file(folder, images)
    write_text_atomic(folder / "positives.json", json.dumps(
            {"format": POSITIVES_FORMAT, "dataset": "flickr30k",
             "note": "captions true of more images than their own: an image is listed when it holds every "
                     "object the caption names", "positives": _positives(images, objs, named_by_sent)}))


def make_scenes(out: str | Path, sizes: tuple[int, int, int] = (1000, 100, 100), pretrain: tuple[int, int] = (0, 0),
                image_size: int = 32, grid: int = 4, objects: int = 5, named: int = 3, seed: int = 0,
                placement: str = "cell", templates: str = "varied") -> Path:
    """Write the scenes task under ``out``; returns ``out``.

    Args:
        sizes: images in train, val and test (5 captions each).
        pretrain: images in the pretraining split's train and val (``out/pretrain``); (0, 0) for none.
        image_size: canvas side in pixels; ``grid`` x ``grid`` cells, one object per cell at most.
        objects: objects per image (distinct colour-shape pairs); ``named``: objects per caption.
        placement: ``cell`` draws every object one pixel short of its cell, centred, so that each
            patch of a ``image_size / grid`` patch encoder sees one whole object; ``jitter`` draws
            it at 60-100 % of the cell at a random offset, a harder recognition problem for every
            method.
        templates: ``plain`` (the object list alone) or ``varied`` (one of four phrasings), see
            :data:`TEMPLATES`.
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
    if templates not in TEMPLATES:
        raise ValueError(f"templates must be one of {', '.join(TEMPLATES)}, got {templates!r}")
    if image_size % grid:
        raise ValueError(f"image_size {image_size} must be a multiple of grid {grid}")
    if not 1 <= objects <= grid * grid or not 1 <= named <= objects:
        raise ValueError(f"need 1 <= named ({named}) <= objects ({objects}) <= grid^2 ({grid * grid})")
    if any(n < 0 for n in (*sizes, *pretrain)):
        raise ValueError(f"split sizes must be >= 0, got {sizes} and pretrain {pretrain}")
    out = Path(out)
    rng = random.Random(f"scenes-{seed}")
    boxes: dict[str, list[dict]] = {}
    draw = {"image_size": image_size, "grid": grid, "objects": objects, "named": named, "placement": placement,
            "templates": templates}
    _write_folder(out, out, [("train", sizes[0]), ("val", sizes[1]), ("test", sizes[2])], 0, rng, draw, boxes)
    if sum(pretrain):
        _write_folder(out, out / "pretrain", [("train", pretrain[0]), ("val", pretrain[1])], sum(sizes), rng, draw,
                      boxes)
    write_text_atomic(out / "boxes.json", json.dumps(
        {"format": BOXES_FORMAT, "image_size": [image_size, image_size], "grid": grid,
         "note": "pixel boxes [x0, y0, x1, y1) of each object and the words that name it; keys are paths under "
                 "this folder", "items": boxes}))
    write_scene_negatives(out, boxes, seed)
    return out


def write_scene_negatives(out: Path, boxes: dict[str, list[dict]], seed: int = 0) -> Path | None:
    """Write ``out/hard_negatives.json`` (generic format, :mod:`tokenflow.data.hard_negatives`):
    every test caption of ``out/dataset_flickr30k.json`` with one false caption, in which one named
    object's colour (category ``replace-color``) or shape (``replace-shape``) is replaced.

    The new colour is one no object of the image has, where one is left; the new shape makes a
    (colour, shape) pair that is not in the image (with four shapes an image often holds them
    all). So the negative names an object the image does not hold. When the kind drawn has no
    such replacement (an image holding every shape in the named colour), the other kind is tried;
    a caption with neither, or naming no object of its image, is skipped, and the file's note
    counts the skipped captions. ``boxes`` is the generator's ``{path: [{"words": [colour, shape],
    ...}]}``. Its own random stream leaves the scenes as they were. Returns the file's path, or
    ``None`` when no test caption got a negative (nothing written).
    """
    from .hard_negatives import write_hard_negatives

    rng = random.Random(f"scenes-negatives-{seed}")
    data = json.loads((out / "dataset_flickr30k.json").read_text())
    entries, skipped = [], 0
    for im in data["images"]:
        if im["split"] != "test":
            continue
        media = f"flickr30k-images/{im['filename']}"
        objects = [tuple(o["words"]) for o in boxes[media]]
        colors, shapes = {c for c, _ in objects}, {s for _, s in objects}
        for sent in im["sentences"]:
            text = sent["raw"]
            words = text.replace(",", "").split()
            named = [o for o in objects if any(words[i : i + 2] == list(o) for i in range(len(words) - 1))]
            if not named:
                skipped += 1
                continue
            color, shape = rng.choice(named)
            first = rng.choice(("replace-color", "replace-shape"))
            kind = new = None
            for kind in (first, "replace-shape" if first == "replace-color" else "replace-color"):
                if kind == "replace-color":
                    options = [c for c in SCENE_COLORS if c not in colors] or [
                        c for c in SCENE_COLORS if (c, shape) not in objects]
                    new = (rng.choice(options), shape) if options else None
                else:
                    options = [s for s in SCENE_SHAPES if s not in shapes] or [
                        s for s in SCENE_SHAPES if (color, s) not in objects]
                    new = (color, rng.choice(options)) if options else None
                if new is not None:
                    break
            if new is None:
                skipped += 1
                continue
            false = re.sub(rf"\b{color} {shape}\b", " ".join(new), text, count=1)
            entries.append({"image": media, "caption": text, "negatives": [false], "category": kind})
    if not entries:
        return None
    note = ("test captions; in each negative one named object's colour or shape is replaced, so that it names an "
            "object the image does not hold")
    if skipped:
        note += (f"; {skipped} test caption(s) skipped: no named object of the image was found in them, or no "
                 "colour or shape could replace it")
    return write_hard_negatives(out / "hard_negatives.json", entries, note=note)
