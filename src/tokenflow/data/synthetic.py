"""A deterministic synthetic benchmark written in the real dataset formats.

Images: two coloured shapes side by side, captions that bind size, colour, shape and the
left/right relation ("a small red circle left of a large blue square"). Videos: two shapes
that appear one after the other and move, captions about the order of events. Every scene
comes with a *twin* in the same split: the same objects with different bindings (colours
swapped between the shapes, sides swapped, or the order of events reversed). Bag-of-words
matching cannot tell twins apart; fine-grained alignment can.

Written formats (so the demo and tests run the real loaders):

    out/images/dataset_flickr30k.json       Karpathy split JSON, 5 captions per image
    out/images/flickr30k-images/*.jpg
    out/images/hard_negatives.json          test captions with their twin's as the negative
    out/videos/MSRVTT_data.json             videos (with split) + sentences
    out/videos/MSRVTT_train.9k.csv          training video ids (train + validate)
    out/videos/MSRVTT_JSFUSION_test.csv     one caption per test video
    out/videos/MSRVTT_Videos/video*.mp4     H.264 mp4 files
    out/videos/hard_negatives.json          test captions with their twin's as the negative
"""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

from .._extras import require
from ..errors import InputError
from ..utils import atomic_path, write_text_atomic
from .hard_negatives import write_hard_negatives

__all__ = ["COLORS", "HARD_NEGATIVES_FILE", "SHAPES", "make_synthetic"]

#: The hard-negative file written beside each benchmark's split file (generic format,
#: :mod:`tokenflow.data.hard_negatives`): every test caption with its twin's caption as the negative.
HARD_NEGATIVES_FILE = "hard_negatives.json"
TWIN_NOTE = ("test split: each caption of an item with the caption its twin gets from the same template, which "
             "binds the same words otherwise (colours, sides or sizes swapped; events reversed)")

COLORS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 230),
    "yellow": (235, 205, 40), "purple": (150, 60, 190), "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.22, "large": 0.38}  # shape width as a fraction of the canvas side
DIRECTIONS = ("left", "right", "up", "down")


@dataclass(frozen=True)
class Obj:
    size: str
    color: str
    shape: str

    def words(self, with_size: bool = True) -> str:
        return f"{self.size} {self.color} {self.shape}" if with_size else f"{self.color} {self.shape}"


def _draw(draw, obj: Obj, cx: float, cy: float, half: float) -> None:
    col = COLORS[obj.color]
    box = (cx - half, cy - half, cx + half, cy + half)
    if obj.shape == "circle":
        draw.ellipse(box, fill=col)
    elif obj.shape == "square":
        draw.rectangle(box, fill=col)
    else:
        draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=col)


def _random_pair(rng: random.Random) -> tuple[Obj, Obj]:
    while True:
        a = Obj(rng.choice(list(SIZES)), rng.choice(list(COLORS)), rng.choice(SHAPES))
        b = Obj(rng.choice(list(SIZES)), rng.choice(list(COLORS)), rng.choice(SHAPES))
        if a.color != b.color and a.shape != b.shape:
            return a, b


def _image_twin(a: Obj, b: Obj, rng: random.Random) -> tuple[Obj, Obj]:
    kind = rng.choice(("colors", "sides", "sizes") if a.size != b.size else ("colors", "sides"))
    if kind == "colors":
        return Obj(a.size, b.color, a.shape), Obj(b.size, a.color, b.shape)
    if kind == "sides":
        return b, a
    return Obj(b.size, a.color, a.shape), Obj(a.size, b.color, b.shape)


def image_captions(left: Obj, right: Obj) -> list[str]:
    return [
        f"a {left.words()} left of a {right.words()}",
        f"a {right.words()} right of a {left.words()}",
        f"a {left.words(False)} to the left of a {right.words(False)}",
        f"on the left a {left.words()}, on the right a {right.words()}",
        f"the {right.words(False)} is to the right of the {left.words(False)}",
    ]


def _render_image(left: Obj, right: Obj, size: int, rng: random.Random):
    require("PIL", "train", "drawing the synthetic images")
    from PIL import Image, ImageDraw

    bg = tuple(int(v) for v in (rng.randint(90, 140),) * 3)
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    for obj, x0 in ((left, 0.27), (right, 0.73)):
        half = SIZES[obj.size] * size / 2 * rng.uniform(0.9, 1.1)
        cx = size * (x0 + rng.uniform(-0.04, 0.04))
        cy = size * (0.5 + rng.uniform(-0.2, 0.2))
        _draw(d, obj, cx, cy, half)
    return img


def video_captions(first: Obj, second: Obj, d1: str, d2: str) -> list[str]:
    f, s = first.words(False), second.words(False)
    return [
        f"a {f} appears, then a {s} appears",
        f"first a {f}, then a {s}",
        f"a {s} appears after a {f}",
        f"a {f} moves {d1}, then a {s} moves {d2}",
        f"the {f} comes before the {s}",
    ]


def _render_video(path: Path, first: Obj, second: Obj, d1: str, d2: str, size: int, n_frames: int, fps: int,
                  rng: random.Random) -> None:
    av = require("av", "video", "writing the synthetic videos")
    require("PIL", "train", "drawing the synthetic images")
    from PIL import Image, ImageDraw

    step = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
    start2 = n_frames // 2 - 1 + rng.randint(0, 2)
    starts = (rng.randint(0, 1), start2)
    objs = []
    for obj, d, t0 in ((first, d1, starts[0]), (second, d2, starts[1])):
        half = SIZES[obj.size] * size / 2 * 0.8
        dx, dy = step[d]
        travel = size * 0.3
        cx0 = size * rng.uniform(0.35, 0.65) - dx * travel / 2
        cy0 = size * rng.uniform(0.35, 0.65) - dy * travel / 2
        objs.append((obj, t0, cx0, cy0, dx * travel, dy * travel, half))
    bg = (rng.randint(90, 140),) * 3
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for t in range(n_frames):
            img = Image.new("RGB", (size, size), bg)
            d = ImageDraw.Draw(img)
            for obj, t0, cx0, cy0, mx, my, half in objs:
                if t >= t0:
                    u = (t - t0) / max(1, n_frames - 1 - t0)
                    _draw(d, obj, cx0 + mx * u, cy0 + my * u, half)
            for packet in stream.encode(av.VideoFrame.from_image(img)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _split_sizes(total: tuple[int, int, int], what: str) -> None:
    for n in total:
        if n < 0 or n % 2:
            raise InputError(f"{what} split sizes must be even (scenes come in twin pairs) and >= 0, got {total}")


def make_images(out: Path, sizes: tuple[int, int, int] = (1000, 100, 100), image_size: int = 64, seed: int = 0,
                fmt: str = "jpg") -> Path:
    """Write the image benchmark; returns the path of ``dataset_flickr30k.json``."""
    _split_sizes(sizes, "image")
    if fmt not in ("jpg", "png"):
        raise InputError(f"image format must be jpg or png, got {fmt!r}")
    rng = random.Random(seed)
    img_dir = out / "flickr30k-images"
    img_dir.mkdir(parents=True, exist_ok=True)
    images, sentid, negatives = [], 0, []
    for split, n in zip(("train", "val", "test"), sizes):
        for _ in range(n // 2):
            a, b = _random_pair(rng)
            pair = ((a, b), _image_twin(a, b, rng))
            for t, (left, right) in enumerate(pair):
                k = len(images)
                name = f"{k:06d}.{fmt}"
                img = _render_image(left, right, image_size, rng)
                with atomic_path(img_dir / name) as tmp:
                    img.save(tmp, format="JPEG" if fmt == "jpg" else "PNG", **({"quality": 95} if fmt == "jpg" else {}))
                caps = image_captions(left, right)
                rng.shuffle(caps)
                sents = [{"raw": c, "tokens": c.replace(",", "").split(), "imgid": k, "sentid": sentid + j}
                         for j, c in enumerate(caps)]
                images.append({"filename": name, "imgid": k, "split": split, "sentids": [s["sentid"] for s in sents],
                               "sentences": sents})
                sentid += len(sents)
                if split == "test":
                    negatives += _twin_negatives(f"flickr30k-images/{name}", (left, right), pair[1 - t], caps)
    path = out / "dataset_flickr30k.json"
    write_text_atomic(path, json.dumps({"dataset": "flickr30k", "images": images}))
    if negatives:  # a test split
        write_hard_negatives(out / HARD_NEGATIVES_FILE, negatives, note=TWIN_NOTE)
    return path


def twin_kind(scene: tuple[Obj, Obj], twin: tuple[Obj, Obj]) -> str:
    """How ``twin`` rebinds the objects of ``scene``: ``swap-colors``, ``swap-sides`` or ``swap-sizes``
    (for videos, ``swap-order``)."""
    (a, b), (c, d) = scene, twin
    if (c, d) == (b, a):
        return "swap-sides"
    if c.color == b.color and d.color == a.color:
        return "swap-colors"
    return "swap-sizes"


def _twin_negatives(media: str, scene: tuple[Obj, Obj], twin: tuple[Obj, Obj], captions: list[str]) -> list[dict]:
    """One hard-negative entry per caption of ``scene``: the twin's caption from the same template
    (left out where the template does not mention what the twin changes, e.g. sizes)."""
    false = dict(zip(image_captions(*scene), image_captions(*twin), strict=True))
    kind = twin_kind(scene, twin)
    return [{"image": media, "caption": c, "negatives": [false[c]], "category": kind}
            for c in captions if false[c] != c]


def make_videos(out: Path, sizes: tuple[int, int, int] = (200, 50, 50), frame_size: int = 64, n_frames: int = 16,
                fps: int = 8, seed: int = 0) -> Path:
    """Write the video benchmark in MSR-VTT's layout; returns the folder."""
    _split_sizes(sizes, "video")
    rng = random.Random(seed + 1)
    vid_dir = out / "MSRVTT_Videos"
    vid_dir.mkdir(parents=True, exist_ok=True)
    videos, sentences, test_rows, train_ids, negatives = [], [], [], [], []
    official = {"train": "train", "val": "validate", "test": "test"}
    for split, n in zip(("train", "val", "test"), sizes):
        for _ in range(n // 2):
            a, b = _random_pair(rng)
            d1, d2 = rng.choice(DIRECTIONS), rng.choice(DIRECTIONS)
            for first, second, e1, e2 in ((a, b, d1, d2), (b, a, d2, d1)):
                vid = f"video{len(videos)}"
                _render_video(vid_dir / f"{vid}.mp4", first, second, e1, e2, frame_size, n_frames, fps, rng)
                caps = video_captions(first, second, e1, e2)
                if split == "test":  # the twin: the same events in the other order
                    negatives += [{"video": f"MSRVTT_Videos/{vid}.mp4", "caption": c, "negatives": [f],
                                   "category": "swap-order"}
                                  for c, f in zip(caps, video_captions(second, first, e2, e1), strict=True)]
                videos.append({"category": 0, "url": "", "video_id": vid, "start time": 0.0,
                               "end time": n_frames / fps, "split": official[split], "id": len(videos)})
                for c in caps:
                    sentences.append({"caption": c, "video_id": vid, "sen_id": len(sentences)})
                if split == "test":
                    test_rows.append({"key": f"ret{len(test_rows)}", "vid_key": f"msr{vid[5:]}", "video_id": vid,
                                      "sentence": caps[rng.randrange(len(caps))]})
                else:
                    train_ids.append(vid)
    write_text_atomic(out / "MSRVTT_data.json", json.dumps({"info": {"dataset": "synthetic"}, "videos": videos,
                                                            "sentences": sentences}))
    write_text_atomic(out / "MSRVTT_train.9k.csv", _csv(["video_id"], [{"video_id": v} for v in train_ids]))
    write_text_atomic(out / "MSRVTT_JSFUSION_test.csv", _csv(["key", "vid_key", "video_id", "sentence"], test_rows))
    if negatives:  # a test split
        write_hard_negatives(out / HARD_NEGATIVES_FILE, negatives, note=TWIN_NOTE)
    return out


def make_unpaired(out: Path, n: int, kind: str = "images", size: int = 64, n_frames: int = 16, fps: int = 8,
                  seed: int = 0, fmt: str = "jpg") -> Path:
    """Write ``n`` visual items and ``n`` captions that are *not* pairs (for CS-Aligner's
    distribution term): ``out/unpaired/images`` (or ``videos``) and ``out/unpaired/captions.txt``,
    one caption per line. Images and captions come from independent random scenes, drawn from
    their own seed so the paired benchmark is the same with or without them."""
    if n < 0:
        raise InputError(f"unpaired count must be >= 0, got {n}")
    rng = random.Random(seed + 7919)
    folder = out / "unpaired" / kind
    folder.mkdir(parents=True, exist_ok=True)
    captions = []
    for k in range(n):
        a, b = _random_pair(rng)
        if kind == "images":
            img = _render_image(a, b, size, rng)
            with atomic_path(folder / f"{k:06d}.{fmt}") as tmp:
                img.save(tmp, format="JPEG" if fmt == "jpg" else "PNG")
        else:
            d1, d2 = rng.choice(DIRECTIONS), rng.choice(DIRECTIONS)
            _render_video(folder / f"{k:06d}.mp4", a, b, d1, d2, size, n_frames, fps, rng)
        c, d = _random_pair(rng)  # another scene: the caption does not describe any written item
        caps = image_captions(c, d) if kind == "images" else video_captions(c, d, rng.choice(DIRECTIONS),
                                                                               rng.choice(DIRECTIONS))
        captions.append(rng.choice(caps))
    write_text_atomic(out / "unpaired" / "captions.txt", "\n".join(captions) + ("\n" if captions else ""))
    return out / "unpaired"


def _csv(fields: list[str], rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def make_synthetic(out: str | Path, images: tuple[int, int, int] = (1000, 100, 100),
                   videos: tuple[int, int, int] = (200, 50, 50), image_size: int = 64, frames: int = 16,
                   seed: int = 0, image_format: str = "jpg", unpaired: int = 0) -> dict:
    """Write both benchmarks under ``out`` (``images/`` and ``videos/``); returns their paths.

    ``unpaired > 0`` also writes that many unpaired items and captions next to each benchmark
    (``images/unpaired``, ``videos/unpaired``; see :func:`make_unpaired`).
    """
    out = Path(out)
    res = {}
    if sum(images):
        res["images"] = str(make_images(out / "images", images, image_size, seed, image_format))
        if unpaired:
            res["images_unpaired"] = str(make_unpaired(out / "images", unpaired, "images", image_size, seed=seed,
                                                       fmt=image_format))
    if sum(videos):
        res["videos"] = str(make_videos(out / "videos", videos, image_size, frames, seed=seed))
        if unpaired:
            res["videos_unpaired"] = str(make_unpaired(out / "videos", unpaired, "videos", image_size, frames,
                                                       seed=seed))
    return res
