"""The scenes generator: deterministic, boxes that match the drawn pixels, and positives that
match a brute-force check of which images hold what each caption names."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
from PIL import Image

from tokenflow.data import load_split
from tokenflow.data.positives import add_positives
from tokenflow.data.scenes import SCENE_COLORS, SCENE_SHAPES, make_scenes, render_scene


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes")
    make_scenes(out, (12, 6, 40), pretrain=(10, 4), objects=4, named=2, seed=5)
    return out


def _digest(folder):
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(f.relative_to(folder).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


def test_deterministic_and_seed_dependent(scenes, tmp_path):
    again = make_scenes(tmp_path / "a", (12, 6, 40), pretrain=(10, 4), objects=4, named=2, seed=5)
    assert _digest(again) == _digest(scenes)
    other = make_scenes(tmp_path / "b", (12, 6, 40), pretrain=(10, 4), objects=4, named=2, seed=6)
    assert _digest(other) != _digest(scenes)


def test_boxes_match_the_drawn_pixels(scenes):
    boxes = json.loads((scenes / "boxes.json").read_text())
    assert len(boxes["items"]) == 12 + 6 + 40 + 10 + 4
    for key, objs in list(boxes["items"].items())[:20]:
        img = np.asarray(Image.open(scenes / key).convert("RGB")).astype(int)
        bg = img[img.sum(-1) == np.bincount(img.sum(-1).ravel()).argmax()][0]
        union = np.zeros(img.shape[:2], bool)
        for o in objs:
            color, shape = o["words"]
            assert color in SCENE_COLORS and shape in SCENE_SHAPES
            x0, y0, x1, y1 = o["box"]
            alone = np.asarray(render_scene([{"color": color, "shape": shape, "box": o["box"]}], 32, 0)).astype(int)
            ys, xs = np.nonzero(alone.sum(-1) != 0)
            # drawn alone, the object fills its box edge to edge (a triangle's apex and base, a cross's arms)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1), (key, o)
            # in the saved image, the object's own colour is where it was drawn alone
            drawn = alone.sum(-1) != 0
            assert (np.abs(img[drawn] - np.array(SCENE_COLORS[color])).max(-1) == 0).all(), (key, o)
            union[y0:y1, x0:x1] = True
        assert (img[~union] == bg).all()  # nothing outside the boxes but background


def _named(caption: str) -> set[tuple[str, str]]:
    return set(re.findall(rf"\b({'|'.join(SCENE_COLORS)}) ({'|'.join(SCENE_SHAPES)})\b", caption))


def test_positives_match_a_brute_force_check(scenes):
    boxes = json.loads((scenes / "boxes.json").read_text())["items"]
    split = load_split("flickr30k", scenes, "test")
    held = [{tuple(o["words"]) for o in boxes[f"flickr30k-images/{p.name}"]} for p in split.item_paths]
    naive = {(i, k) for k, text in enumerate(split.texts) for i in range(len(split))
             if _named(text) <= held[i] and i != split.text_item[k]}
    assert all(len(_named(t)) == 2 for t in split.texts)
    assert naive  # 40 images of 4 objects out of 32: some captions are true of several
    got = add_positives(split, scenes / "positives.json", "test")
    assert set(got.extra_positives) == naive
    pos = got.positives()
    assert pos.sum() == len(split.texts) + len(naive)
    assert got.summary()["texts_with_several_positives"] == len({k for _, k in naive})
    # val entries never leak into test, and the pretraining folder has its own file
    assert add_positives(split, scenes / "positives.json", "val").extra_positives == ()
    assert (scenes / "pretrain" / "positives.json").is_file()


def test_bad_sizes_are_named(tmp_path):
    with pytest.raises(ValueError, match="multiple of grid"):
        make_scenes(tmp_path, (2, 2, 2), image_size=30)
    with pytest.raises(ValueError, match="named"):
        make_scenes(tmp_path, (2, 2, 2), objects=2, named=3)


def test_placement_cell_fills_one_cell_and_jitter_moves_objects(tmp_path):
    """``cell``: every object is one pixel short of its 8-px cell and centred in it, so each patch
    of an 8-px patch encoder sees exactly one whole object; ``jitter`` varies size and offset."""
    make_scenes(tmp_path / "cell", (20, 0, 0), objects=5, named=2, seed=1)
    make_scenes(tmp_path / "jit", (20, 0, 0), objects=5, named=2, seed=1, placement="jitter")
    cell = json.loads((tmp_path / "cell" / "boxes.json").read_text())["items"]
    jit = json.loads((tmp_path / "jit" / "boxes.json").read_text())["items"]
    for objs in cell.values():
        assert len(objs) == 5
        for o in objs:
            x0, y0, x1, y1 = o["box"]
            assert (x1 - x0, y1 - y0) == (7, 7)
            assert x0 // 8 == (x1 - 1) // 8 and y0 // 8 == (y1 - 1) // 8  # inside one cell
            assert x0 % 8 == 0 and y0 % 8 == 0  # the one spare pixel row/column is on the far side
    sides = {o["box"][2] - o["box"][0] for objs in jit.values() for o in objs}
    offsets = {o["box"][0] % 8 for objs in jit.values() for o in objs}
    assert len(sides) > 1 and len(offsets) > 1


def test_plain_templates_list_the_named_objects_only(tmp_path):
    make_scenes(tmp_path, (10, 0, 0), objects=5, named=2, seed=2, templates="plain")
    split = load_split("flickr30k", tmp_path, "train")
    pattern = re.compile(rf"^a ({'|'.join(SCENE_COLORS)}) ({'|'.join(SCENE_SHAPES)}) and a "
                         rf"({'|'.join(SCENE_COLORS)}) ({'|'.join(SCENE_SHAPES)})$")
    assert all(pattern.match(t) for t in split.texts), split.texts[:5]


def test_unknown_placement_or_templates_are_named(tmp_path):
    with pytest.raises(ValueError, match="placement"):
        make_scenes(tmp_path, (2, 2, 2), placement="random")
    with pytest.raises(ValueError, match="templates"):
        make_scenes(tmp_path, (2, 2, 2), templates="fancy")


def _negatives_folder(tmp_path, images):
    """A hand-made scenes folder: ``images`` is ``[(file, [(colour, shape), ...], [caption, ...])]``,
    all test images; returns (folder, boxes) as make_scenes hands them to write_scene_negatives."""
    tmp_path.mkdir(exist_ok=True)
    doc = {"images": [{"filename": name, "split": "test", "sentences": [{"raw": c} for c in caps]}
                      for name, _, caps in images]}
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps(doc))
    boxes = {f"flickr30k-images/{name}": [{"words": list(o), "box": [0, 0, 1, 1]} for o in objs]
             for name, objs, _ in images}
    return tmp_path, boxes


def test_negatives_fall_back_to_the_other_kind_and_count_skipped_captions(tmp_path):
    from tokenflow.data.scenes import write_scene_negatives

    every_shape = [("red", s) for s in SCENE_SHAPES] + [("blue", "circle")]  # no new shape for a red object
    full = [(c, "circle") for c in SCENE_COLORS] + [("red", s) for s in SCENE_SHAPES[1:]]  # no change at all
    folder, boxes = _negatives_folder(tmp_path, [
        ("a.png", every_shape, [f"a red {s}" for s in SCENE_SHAPES] * 3),
        ("b.png", full, ["a red circle", "a cat on a mat", "a blue circle"]),
    ])
    path = write_scene_negatives(folder, boxes, seed=1)
    doc = json.loads(path.read_text())
    got = {(it["image"], it["caption"], it["negatives"][0], it["category"]) for it in doc["items"]}
    a = [it for it in doc["items"] if it["image"] == "flickr30k-images/a.png"]
    assert len(a) == 12 and all(it["category"] == "replace-color" for it in a)  # shapes: none left for red
    for it in a:
        color, shape = it["negatives"][0].split()[1:3]
        assert shape == it["caption"].split()[2] and (color, shape) not in every_shape
    # b: 'a red circle' has no replacement either way, the cat names nothing; 'a blue circle' can
    # only become a blue square, triangle or cross (every colour of circle is there)
    b = [g for g in got if g[0] == "flickr30k-images/b.png"]
    assert len(b) == 1 and b[0][1] == "a blue circle" and b[0][3] == "replace-shape"
    assert b[0][2] in {f"a blue {s}" for s in SCENE_SHAPES[1:]}
    assert "2 test caption(s) skipped" in doc["note"]
    # nothing skipped: the note says nothing about skips
    folder2, boxes2 = _negatives_folder(tmp_path / "two", [("c.png", [("red", "circle")], ["a red circle"])])
    assert "skipped" not in json.loads(write_scene_negatives(folder2, boxes2).read_text())["note"]
    # no caption with a negative: nothing written
    folder3, boxes3 = _negatives_folder(tmp_path / "three", [("d.png", full, ["a red circle"])])
    assert write_scene_negatives(folder3, boxes3) is None and not (folder3 / "hard_negatives.json").exists()
