"""Explaining a hard negative: both plans are those of ``explain``, the word pairs' changes add up
to the score difference, the figure holds both panels, and the command prints the verdict."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import save_tiny_model
from tokenflow import get_aligner
from tokenflow.cli import main
from tokenflow.data import load_split, read_hard_negatives
from tokenflow.models import RetrievalModel
from tokenflow.viz import explain
from tokenflow.viz.contrast import explain_contrast, render_contrast, word_shares


@pytest.fixture(scope="module")
def retrieval_model_dir(synth, tmp_path_factory):
    """A tiny model saved with the tokenflow plan and fusion weights 0.5, 2."""
    split = load_split("flickr30k", synth / "images", "train")
    return save_tiny_model(tmp_path_factory.mktemp("contrast-model") / "best", split.texts, seed=1, w_global=0.5,
                           w_fine=2.0)


@pytest.fixture(scope="module")
def item(synth):
    return next(it for it in read_hard_negatives(synth / "images" / "hard_negatives.json")
                if it.category == "swap-colors")


@pytest.mark.parametrize("aligner", [None, "max-avg"])
def test_both_sides_are_explain_and_the_pairs_add_up_to_the_difference(retrieval_model_dir, item, aligner):
    from tokenflow.data.base import load_image

    con = explain_contrast(retrieval_model_dir, item.media, item.caption, item.negatives[0], aligner=aligner)
    model = RetrievalModel.from_pretrained(retrieval_model_dir)
    bb, plan = model.backbone.eval(), get_aligner(aligner or "tokenflow")  # the saved plan: tokenflow, defaults
    with torch.no_grad():
        vis = bb.encode_images(bb.preprocess(load_image(item.media)).unsqueeze(0))
    for side, text in ((con.true, item.caption), (con.false, item.negatives[0])):
        alone = explain(retrieval_model_dir, item.media, text, aligner=aligner)
        assert side.caption == text and side.score == pytest.approx(alone.score, abs=1e-6)
        with torch.no_grad():  # the fine score is the one retrieval ranks with, for this very pair
            want = plan.pairwise(vis, bb.encode_text_strings([text])).t2v
        assert side.score == pytest.approx(float(want[0, 0]), abs=1e-5)
        assert torch.allclose(side.flow, alone.flow) and sum(word_shares(side)) == pytest.approx(side.score, abs=1e-5)
    moved = con.moved()
    assert sum(p["change"] for p in moved) == pytest.approx(con.false.score - con.true.score, abs=1e-5)
    assert [abs(p["change"]) for p in moved] == sorted((abs(p["change"]) for p in moved), reverse=True)
    swapped = {(p["true"], p["false"]) for p in moved if not p["same_word"]}
    a, b = item.caption.replace(",", "").split(), item.negatives[0].replace(",", "").split()
    assert swapped == {(x, y) for x, y in zip(a, b, strict=True) if x != y}  # the colour words, face to face
    assert all(p["true"] == p["false"] for p in moved if p["same_word"])
    v = con.verdict()
    fused_true = 0.5 * con.true.global_score + 2.0 * con.true.score
    fused_false = 0.5 * con.false.global_score + 2.0 * con.false.score
    assert v["fused"] == pytest.approx(fused_true - fused_false, abs=1e-6)
    assert v["correct"] == (fused_true > fused_false)


def test_figure_holds_both_panels(retrieval_model_dir, item, tmp_path):
    from PIL import Image

    con = explain_contrast(retrieval_model_dir, item.media, item.caption, item.negatives[0])
    path = render_contrast(con, tmp_path / "pair.png")
    with Image.open(path) as im:
        assert im.size[0] > 1.8 * im.size[1] - 200 and im.size[0] >= 1500


def test_command_prints_the_verdict_and_the_moved_pairs(retrieval_model_dir, item, tmp_path, capsys):
    out, numbers = tmp_path / "c.png", tmp_path / "c.json"
    assert main(["explain", "--model", str(retrieval_model_dir), "--media", str(item.media), "--caption", item.caption,
                 "--negative", item.negatives[0], "--out", str(out), "--json", str(numbers)]) == 0
    printed = capsys.readouterr().out
    assert "word pairs that moved the fine score" in printed and out.is_file()
    saved = json.loads(numbers.read_text())
    assert saved["true"]["caption"] == item.caption and saved["false"]["caption"] == item.negatives[0]
    assert saved["w_global"] == 0.5 and saved["moved"]


def test_an_empty_negative_is_refused_by_name(retrieval_model_dir, item, capsys):
    assert main(["explain", "--model", str(retrieval_model_dir), "--media", str(item.media), "--caption", item.caption,
                 "--negative", "  "]) == 2
    assert "negative caption is empty" in capsys.readouterr().err
