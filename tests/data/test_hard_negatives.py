"""The synthetic tasks' hard-negative files: each negative is false of its image (checked against
the generator's objects) and differs from the true caption in the named way only."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from tokenflow.data.hard_negatives import read_hard_negatives
from tokenflow.data.scenes import SCENE_COLORS, SCENE_SHAPES, make_scenes
from tokenflow.data.synthetic import COLORS, SHAPES, SIZES, make_images

OBJ = r"(?:(small|large) )?(\w+) (\w+)"
#: the five caption templates of the bindings images, as (pattern, which group is the left object)
TEMPLATES = [(rf"a {OBJ} left of a {OBJ}", "LR"), (rf"a {OBJ} right of a {OBJ}", "RL"),
             (rf"a {OBJ} to the left of a {OBJ}", "LR"), (rf"on the left a {OBJ}, on the right a {OBJ}", "LR"),
             (rf"the {OBJ} is to the right of the {OBJ}", "RL")]


def parse_bindings(caption: str) -> tuple[tuple, tuple]:
    """(left, right) objects a bindings caption states, each (size or None, colour, shape)."""
    for pattern, order in TEMPLATES:
        m = re.fullmatch(pattern, caption)
        if m:
            a, b = m.groups()[:3], m.groups()[3:]
            assert a[1] in COLORS and a[2] in SHAPES and b[1] in COLORS and b[2] in SHAPES, caption
            return (a, b) if order == "LR" else (b, a)
    raise AssertionError(f"not a bindings caption: {caption!r}")


def agrees(stated: tuple, truth: tuple) -> bool:
    """Whether a caption's (left, right) is true of the scene ``truth`` (sizes only where stated)."""
    return all((s[0] is None or s[0] == t[0]) and s[1:] == t[1:] for s, t in zip(stated, truth, strict=True))


@pytest.fixture(scope="module")
def bindings(tmp_path_factory):
    out = tmp_path_factory.mktemp("bindings")
    make_images(out, (4, 2, 40), image_size=32, seed=11, fmt="png")
    return out


def test_bindings_negatives_are_the_twins_caption_and_false_of_the_image(bindings):
    data = json.loads((bindings / "dataset_flickr30k.json").read_text())
    test = [im for im in data["images"] if im["split"] == "test"]
    captions = {f"flickr30k-images/{im['filename']}": [s["raw"] for s in im["sentences"]] for im in test}
    # the generator's scene of each image: what its full-template caption states
    truth = {}
    for media, caps in captions.items():
        full = [parse_bindings(c) for c in caps if re.fullmatch(TEMPLATES[0][0], c)]
        assert len(full) == 1
        truth[media] = full[0]
    items = read_hard_negatives(bindings / "hard_negatives.json")
    by_media = Counter()
    seen = Counter()
    for it in items:
        media = it.media.relative_to(bindings).as_posix()
        by_media[media] += 1
        assert it.caption in captions[media] and len(it.negatives) == 1
        neg = it.negatives[0]
        assert agrees(parse_bindings(it.caption), truth[media])
        assert not agrees(parse_bindings(neg), truth[media]), (media, neg)  # false of its image
        k = test.index(next(im for im in test if f"flickr30k-images/{im['filename']}" == media))
        twin = test[k ^ 1]  # twins are written one after the other
        assert neg in [s["raw"] for s in twin["sentences"]]
        # the same words, moved in the named way only
        a, b = it.caption.replace(",", "").split(), neg.replace(",", "").split()
        assert len(a) == len(b) and Counter(a) == Counter(b)
        changed = {w for x, y in zip(a, b, strict=True) if x != y for w in (x, y)}
        kind = {"swap-colors": set(COLORS), "swap-sizes": set(SIZES), "swap-sides": set(COLORS) | set(SHAPES)
                | set(SIZES)}[it.category]
        assert changed and changed <= kind, (it.category, it.caption, neg)
        if it.category == "swap-sides":
            (l1, r1), (l2, r2) = parse_bindings(it.caption), parse_bindings(neg)
            assert (l2[1:], r2[1:]) == (r1[1:], l1[1:])
        seen[it.category] += 1
    assert set(by_media) == set(captions)
    for media, n in by_media.items():  # every caption, but those the twin's template leaves unchanged
        assert n == 5 or (n == 3 and all(it.category == "swap-sizes" for it in items
                                         if it.media.relative_to(bindings).as_posix() == media))
    assert set(seen) >= {"swap-colors", "swap-sides"}


def test_bindings_video_negatives_reverse_the_order_of_events(synth):
    data = json.loads((synth / "videos" / "MSRVTT_data.json").read_text())
    caps = {}
    for s in data["sentences"]:
        caps.setdefault(s["video_id"], []).append(s["caption"])
    test = [v["video_id"] for v in data["videos"] if v["split"] == "test"]
    items = read_hard_negatives(synth / "videos" / "hard_negatives.json")
    assert {it.media.stem for it in items} == set(test) and len(items) == 5 * len(test)
    for it in items:
        vid = it.media.stem
        twin = test[test.index(vid) ^ 1]
        assert it.category == "swap-order" and it.caption in caps[vid]
        assert it.negatives[0] in caps[twin] and it.negatives[0] not in caps[vid]
        assert Counter(it.caption.replace(",", "").split()) == Counter(it.negatives[0].replace(",", "").split())


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes")
    make_scenes(out, (4, 2, 30), image_size=32, grid=4, objects=5, named=3, seed=4)
    return out


def test_scenes_negatives_name_an_object_the_image_lacks_and_change_one_word(scenes):
    boxes = json.loads((scenes / "boxes.json").read_text())["items"]
    data = json.loads((scenes / "dataset_flickr30k.json").read_text())
    test = {f"flickr30k-images/{im['filename']}": [s["raw"] for s in im["sentences"]] for im in data["images"]
            if im["split"] == "test"}
    items = read_hard_negatives(scenes / "hard_negatives.json")
    assert len(items) == sum(len(c) for c in test.values())
    kinds = Counter()
    for it in items:
        media = it.media.relative_to(scenes).as_posix()
        objects = {tuple(o["words"]) for o in boxes[media]}  # the generator's objects
        assert it.caption in test[media]
        a, b = it.caption.replace(",", "").split(), it.negatives[0].replace(",", "").split()
        assert len(a) == len(b)
        diff = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        assert len(diff) == 1, (it.caption, it.negatives[0])  # one word replaced
        i = diff[0]
        if it.category == "replace-color":
            old, new = (a[i], a[i + 1]), (b[i], b[i + 1])
            assert a[i] in SCENE_COLORS and b[i] in SCENE_COLORS and a[i + 1] in SCENE_SHAPES
            assert b[i] not in {c for c, _ in objects}  # a colour no object of the image has
        else:
            assert it.category == "replace-shape"
            old, new = (a[i - 1], a[i]), (b[i - 1], b[i])
            assert a[i] in SCENE_SHAPES and b[i] in SCENE_SHAPES and a[i - 1] in SCENE_COLORS
        assert old in objects  # the caption named a real object
        assert new not in objects  # the negative names one the image does not hold: it is false
        named = {(x, y) for x, y in zip(b, b[1:]) if x in SCENE_COLORS and y in SCENE_SHAPES}
        assert len(named) == len({(x, y) for x, y in zip(a, a[1:]) if x in SCENE_COLORS and y in SCENE_SHAPES})
        kinds[it.category] += 1
    assert kinds["replace-color"] > 10 and kinds["replace-shape"] > 10


def test_scenes_negatives_are_deterministic(scenes, tmp_path):
    make_scenes(tmp_path, (4, 2, 30), image_size=32, grid=4, objects=5, named=3, seed=4)
    for name in ("hard_negatives.json", "dataset_flickr30k.json"):
        assert (tmp_path / name).read_text() == (scenes / name).read_text()
