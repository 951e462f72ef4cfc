"""Pointing accuracy on hand-made plans: all hits when the mass sits in the box, none when it
does not, chance from the box area, and object words found only where they are named."""

from __future__ import annotations

import json

import pytest
import torch

from tokenflow.eval.pointing import boxes_for, object_words, pointing, read_boxes

TOKENS = ["<bos>", "a", "red", "circle", "and", "a", "blue", "cross", "<eos>"]
OBJECTS = [{"words": ["red", "circle"], "box": [0, 0, 8, 8]},      # patch (0, 0) of a 4 x 4 grid at 32 px
           {"words": ["blue", "cross"], "box": [16, 8, 32, 16]},   # patches (1, 2) and (1, 3)
           {"words": ["green", "square"], "box": [8, 24, 16, 32]}]  # not named


def _plan(target: dict[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flow with each token's mass on one patch (uniform elsewhere for other tokens)."""
    flow = torch.full((16, len(TOKENS)), 0.01)
    for t, p in target.items():
        flow[:, t] = 0.0
        flow[p, t] = 1.0
    return flow, torch.ones_like(flow)


def test_object_words_are_the_named_objects_tokens():
    assert object_words(TOKENS, OBJECTS) == [(2, 0), (3, 0), (6, 1), (7, 1)]
    assert object_words(["red</w>", "circle</w>"], OBJECTS[:1]) == [(0, 0), (1, 0)]  # CLIP's BPE word ends
    assert object_words(["circle", "red"], OBJECTS[:1]) == []  # words out of order name nothing


def test_all_hits_when_the_mass_sits_in_the_box():
    flow, c = _plan({2: 0, 3: 0, 6: 6, 7: 7})
    pt = pointing(flow, c, TOKENS, OBJECTS, (4, 4), (32, 32))
    assert (pt.hits, pt.total, pt.accuracy) == (4, 4, 100.0)
    assert pt.chance_accuracy == pytest.approx(100 * (1 / 16 + 1 / 16 + 2 / 16 + 2 / 16) / 4)


def test_no_hit_when_the_mass_is_elsewhere():
    flow, c = _plan({2: 15, 3: 5, 6: 0, 7: 12})
    pt = pointing(flow, c, TOKENS, OBJECTS, (4, 4), (32, 32))
    assert (pt.hits, pt.total, pt.accuracy) == (0, 4, 0.0)
    # c weighs the flow: mass on the box with a negative similarity loses to mass elsewhere
    flow, c = _plan({2: 0})
    flow[5, 2], c[0, 2] = 0.5, -1.0
    assert pointing(flow, c, TOKENS, OBJECTS, (4, 4), (32, 32)).words[0]["hit"] is False
    # a word that receives no mass at all points nowhere
    flow, c = _plan({2: 0})
    flow[:, 2] = 0.0
    assert pointing(flow, c, TOKENS, OBJECTS, (4, 4), (32, 32)).words[0]["hit"] is False


def test_non_square_images_use_the_centre_square():
    # a 48 x 32 image: the model sees x in [8, 40); the box [8, 0, 16, 8] is patch (0, 0)
    flow, c = _plan({2: 0, 3: 0})
    pt = pointing(flow, c, TOKENS, [{"words": ["red", "circle"], "box": [8, 0, 16, 8]}], (4, 4), (48, 32))
    assert pt.hits == 2


def test_shape_errors():
    with pytest.raises(ValueError, match="16 patches"):
        pointing(torch.ones(9, 9), torch.ones(9, 9), TOKENS, OBJECTS, (4, 4), (32, 32))


def test_boxes_sidecar(tmp_path):
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps({"format": "tokenflow-boxes/1", "image_size": [32, 32],
                                "items": {"imgs/a.png": OBJECTS}}))
    boxes = read_boxes(path)
    assert boxes_for(boxes, tmp_path / "imgs" / "a.png") == OBJECTS
    assert boxes_for(boxes, "/elsewhere/a.png") == OBJECTS  # by file name when unique
    with pytest.raises(ValueError, match="no boxes for"):
        boxes_for(boxes, tmp_path / "b.png")
    path.write_text(json.dumps({"format": "tokenflow-boxes/1", "image_size": [32, 32],
                                "items": {"a.png": [{"words": "red", "box": [0, 0, 1, 1]}]}}))
    with pytest.raises(ValueError, match=r"items\['a.png'\]\[0\]"):
        read_boxes(path)


def test_signed_weights_point_differently_under_each_reading():
    """A signed plan (TokenFlow's d, e): on the word 'red' the box patch 0 has T = -2 and c = -1
    (contribution +2), patch 9 has T = 1.5, c = 1 (+1.5), patch 4 has T = 0.1, c = -30 (-3)."""
    flow, c = torch.zeros(16, len(TOKENS)), torch.ones(16, len(TOKENS))
    flow[0, 2], c[0, 2] = -2.0, -1.0
    flow[9, 2], c[9, 2] = 1.5, 1.0
    flow[4, 2], c[4, 2] = 0.1, -30.0
    objs = OBJECTS[:1]
    patch = {w: pointing(flow, c, TOKENS, objs, (4, 4), (32, 32), weight=w).words[0]["patch"]
             for w in ("flow", "abs", "plan")}
    assert patch == {"flow": 0, "abs": 4, "plan": 9}
    assert pointing(flow, c, TOKENS, objs, (4, 4), (32, 32), weight="flow").words[0]["hit"] is True
    assert pointing(flow, c, TOKENS, objs, (4, 4), (32, 32), weight="plan").words[0]["hit"] is False
    with pytest.raises(ValueError, match="weight must be one of"):
        pointing(flow, c, TOKENS, objs, (4, 4), (32, 32), weight="max")
