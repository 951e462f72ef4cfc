"""Explanations return the plan's own numbers, draw them, and reject bad input by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import save_tiny_model
from tokenflow import get_aligner
from tokenflow.cli import main
from tokenflow.data import MediaError, load_image, load_split, read_video_frames
from tokenflow.models import RetrievalModel
from tokenflow.viz import explain, render


@pytest.fixture(scope="module")
def retrieval_model_dir(synth, tmp_path_factory):
    """A tiny model saved with the tokenflow plan and unit fusion weights (image and video captions)."""
    split = load_split("flickr30k", synth / "images", "train")
    videos = load_split("msrvtt", synth / "videos", "train")
    return save_tiny_model(tmp_path_factory.mktemp("model") / "best", split.texts + videos.texts, seed=0,
                           w_global=1.0, w_fine=1.0)


@pytest.mark.parametrize("aligner", [None, "scan", "sinkhorn"])
@pytest.mark.parametrize("direction", ["t2v", "v2t"])
def test_numbers_are_the_plan_of_the_pair(synth, retrieval_model_dir, aligner, direction):
    test = load_split("flickr30k", synth / "images", "test")
    path, caption = test.item_paths[1], test.texts[test.text_item.index(1)]
    expl = explain(retrieval_model_dir, path, caption, direction=direction, aligner=aligner)
    model = RetrievalModel.from_pretrained(retrieval_model_dir)
    plan_of = model.aligner if aligner is None else get_aligner(aligner)
    with torch.no_grad():
        vis = model.backbone.encode_images(model.backbone.preprocess(load_image(path)).unsqueeze(0))
        txt = model.backbone.encode_text_strings([caption])
        plan = plan_of.plan(vis, txt)
    flow = plan.t2v if direction == "t2v" else plan.v2t
    assert expl.aligner == (aligner or "tokenflow") and expl.grid == (4, 4)
    if aligner is None:  # tokenflow: its own token weights, d and e of eq 14
        d, e, kind = plan.d, plan.e, "plan"
    else:  # no token weights of their own: each token's share of the fine score
        d, e, kind = (flow * plan.c).sum(1), (flow * plan.c).sum(0), "score-share"
        assert float(expl.d.sum()) == pytest.approx(expl.score, abs=1e-5)
        assert f"{aligner} weighs no token on its own" in expl.weights_label
    assert expl.weights == kind
    for got, want in ((expl.d, d), (expl.e, e), (expl.c, plan.c), (expl.flow, flow)):
        assert torch.allclose(got, want.float(), atol=1e-6)
    assert expl.score == pytest.approx(float((plan.c * flow).sum()), abs=1e-6)
    assert expl.tokens[0] == "<bos>" and expl.tokens[-1] == "<eos>" and len(expl.tokens) == plan.c.shape[1]
    pairs = expl.top_pairs(3)
    contrib = [p["T_hat_x_c"] for p in pairs]
    assert contrib == sorted(contrib, reverse=True) and all(not p["word"].startswith("<") for p in pairs)
    for p in pairs:
        s, t = p["patch"], p["token"]
        assert p["T_hat_x_c"] == pytest.approx(100 * float(flow[s, t] * plan.c[s, t]), rel=1e-5)
        assert p["patch"] == 4 * p["row"] + p["col"]
    # limited to chosen tokens: the best pairs of those columns, in order
    keep = [1, 2]
    only = expl.top_pairs(4, tokens=keep)
    want = sorted(((float(flow[s, t] * plan.c[s, t]), s, t) for s in range(flow.shape[0]) for t in keep),
                  reverse=True)[:4]
    assert [(p["patch"], p["token"]) for p in only] == [(s, t) for _, s, t in want]


def test_the_figure_shows_d_over_the_patch_grid(synth, retrieval_model_dir, tmp_path, monkeypatch):
    import matplotlib.axes
    from PIL import Image

    shown = []
    real = matplotlib.axes.Axes.imshow

    def spy(self, x, *args, **kwargs):
        shown.append(np.asarray(x))
        return real(self, x, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", spy)
    test = load_split("flickr30k", synth / "images", "test")
    expl = explain(retrieval_model_dir, test.item_paths[0], test.texts[0])
    out = render(expl, tmp_path / "fig.png")
    heat = [x for x in shown if x.shape == (4, 4)]
    assert len(heat) == 1 and np.allclose(heat[0], expl.d.reshape(4, 4).numpy())
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 300
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]  # written atomically, no temp left


def test_a_video_is_explained_on_its_middle_frame(synth, retrieval_model_dir):
    test = load_split("msrvtt", synth / "videos", "test")
    expl = explain(retrieval_model_dir, test.item_paths[0], test.texts[0], num_frames=6)
    frames = read_video_frames(test.item_paths[0], 6)
    assert np.array_equal(np.asarray(expl.image), np.asarray(frames[2]))  # the 3rd of 6 (the paper: 6th of 12)
    assert expl.d.shape == (16,) and expl.c.shape[0] == 16


def test_bad_inputs_are_named(synth, retrieval_model_dir, tmp_path, capsys):
    test = load_split("flickr30k", synth / "images", "test")
    with pytest.raises(FileNotFoundError, match="model folder .*nope not found"):
        explain(tmp_path / "nope", test.item_paths[0], "a red circle")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really")
    with pytest.raises(MediaError, match="broken.jpg: cannot decode image"):
        explain(retrieval_model_dir, bad, "a red circle")
    with pytest.raises(ValueError, match="caption is empty"):
        explain(retrieval_model_dir, test.item_paths[0], "  ")
    args = ["explain", "--model", str(retrieval_model_dir), "--media", str(bad), "--caption", "a red circle",
            "--out", str(tmp_path / "x.png")]
    assert main(args) == 2
    assert "tokenflow explain:" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
    args[4] = str(test.item_paths[0])
    assert main([*args, "--json", str(tmp_path / "x.json")]) == 0
    out = capsys.readouterr()
    assert (tmp_path / "x.png").is_file() and "fine score" in out.out and "warning" not in out.err
    assert "<bos>" not in out.out and "<eos>" not in out.out  # flows of words only
    args[6] = "zebra xylophone"  # no word the tiny model knows
    assert main(args) == 0
    assert "knows none of the caption's words" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["mpa", "dive"])
def test_set_methods_have_no_token_plan_to_draw(synth, retrieval_model_dir, name):
    test = load_split("flickr30k", synth / "images", "test")
    with pytest.raises(ValueError, match=f"{name} scores sets of learned embeddings, not token pairs"):
        explain(retrieval_model_dir, test.item_paths[0], "a red circle", aligner=name)


def test_a_clip_folder_is_explained_with_its_own_tokens(synth, tmp_path):
    from tests.models.conftest import save_tiny_hf_clip
    from tokenflow.models import load_backbone

    (tmp_path / "clip").mkdir()
    clip = load_backbone(save_tiny_hf_clip(tmp_path / "clip"))
    model = RetrievalModel(clip, get_aligner("tokenflow"))
    test = load_split("flickr30k", synth / "images", "test")
    expl = explain(model, test.item_paths[0], "a red circle")
    assert expl.grid == clip.patch_grid == (4, 4) and expl.d.shape == (16,)
    ids, mask = clip.tokenize(["a red circle"])
    assert len(expl.tokens) == int(mask.sum()) and not any(t.endswith("</w>") for t in expl.tokens)


def test_pairs_on_one_patch_share_one_label_in_the_figure(tmp_path, monkeypatch):
    import matplotlib.axes

    from tokenflow.viz.explain import Explanation, markers

    flow = torch.zeros(4, 5)  # the three strongest pairs all end on patch 1, the fourth on patch 2
    flow[1, 1], flow[1, 2], flow[1, 3], flow[2, 1] = 0.3, 0.2, 0.1, 0.05
    expl = Explanation(caption="red blue cube", tokens=["<bos>", "red", "blue", "cube", "<eos>"], grid=(2, 2),
                       aligner="x", direction="t2v", d=torch.arange(4.0), e=torch.arange(5.0), c=torch.ones(4, 5),
                       flow=flow, score=0.65, global_score=0.5, image=None, weights="score-share",
                       weights_label="x weighs no token on its own")
    got = markers(expl.top_pairs(4))
    assert [(m["patch"], m["pairs"], m["label"]) for m in got] == [(1, [1, 2, 3], "1,2,3"), (2, [4], "4")]
    assert expl.to_dict(4)["markers"] == got
    labels = []
    real = matplotlib.axes.Axes.annotate

    def spy(self, text, *args, **kwargs):
        labels.append(text)
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "annotate", spy)
    render(expl, tmp_path / "fig.png", top=4)
    assert labels == ["30.00x1.00\n20.00x1.00\n10.00x1.00", "5.00x1.00"]  # one label per patch, none hidden


def test_each_plan_shows_its_own_token_weights_or_says_it_has_none():
    from tokenflow.tokens import Tokens
    from tokenflow.viz.explain import shown_weights

    torch.manual_seed(1)
    vis = Tokens(torch.randn(1, 6, 8), torch.tensor([[True] * 5 + [False]]), torch.randn(1, 8))
    txt = Tokens(torch.randn(1, 4, 8), torch.tensor([[True, True, True, False]]), torch.randn(1, 8))
    learnable = get_aligner("learnable")
    with torch.no_grad():
        learnable.weight.normal_(std=1.0)
    w = learnable.weight[:5, :3].exp()  # softmax(W) over the pair's 5 x 3 real positions
    d, e, kind, label = shown_weights(learnable, vis, txt, *_plan_and_flow(learnable, vis, txt))
    assert kind == "plan" and label.startswith("learnable's learned position weights")
    torch.testing.assert_close(d, (w / w.sum()).sum(1).detach())
    torch.testing.assert_close(e, (w / w.sum()).sum(0).detach())
    scan = get_aligner("scan")
    c, flow = _plan_and_flow(scan, vis, txt)
    d, e, kind, label = shown_weights(scan, vis, txt, c, flow)
    assert kind == "score-share" and label.startswith("scan weighs no token on its own")
    torch.testing.assert_close(d, (c * flow).sum(1))
    assert float(e.sum()) == pytest.approx(float((c * flow).sum()), abs=1e-5)


def _plan_and_flow(aligner, vis, txt):
    with torch.no_grad():
        plan = aligner.plan(vis, txt)
    return plan.c, plan.t2v
