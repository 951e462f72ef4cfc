"""Hard-negative accuracy: the scoring path against a naive loop (ties included), the bag-of-words
case on hand-made features, the Wilson interval, and end to end with a tiny model."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch

from tests.helpers import save_tiny_model
from tokenflow import Tokens, get_aligner
from tokenflow.data.hard_negatives import HardNegative, read_hard_negatives, write_hard_negatives
from tokenflow.eval.compositional import (EncodedItems, accuracy_report, evaluate_compositional,
                                          format_compositional_table, wilson_interval)


def beats(true, neg):
    """The report's rule: the true score wins only by more than 1e-6 * max(1, |true|)."""
    return true - neg > 1e-6 * max(1.0, abs(true))


def ties(true, neg):
    return abs(true - neg) <= 1e-6 * max(1.0, abs(true))


def naive_correct(vis, txt, aligner, item_rows, w_global, w_fine):
    """Per item: (true beats every negative, the best negative ties) from each pair's plan, one
    pair at a time, under the report's tie rule."""
    out = []
    for m, texts in item_rows:
        scores = []
        for j in texts:
            s = w_global * float(vis.pooled[m] @ txt.pooled[j])
            if aligner is not None:
                plan = aligner.plan(vis[m], txt[j])
                s += w_fine * float((plan.c * plan.t2v).sum())
            scores.append(s)
        out.append((all(beats(scores[0], s) for s in scores[1:]), ties(scores[0], max(scores[1:]))))
    return out


def random_tokens(n, length, dim, gen):
    feats = torch.nn.functional.normalize(torch.randn(n, length, dim, generator=gen), dim=-1)
    lengths = torch.randint(2, length + 1, (n,), generator=gen)
    mask = torch.arange(length)[None] < lengths[:, None]
    pooled = torch.nn.functional.normalize(torch.randn(n, dim, generator=gen), dim=-1)
    return Tokens(feats, mask, pooled)


@pytest.mark.parametrize("aligner", [None, "max-avg", "tokenflow", "scan"])
def test_accuracy_equals_a_naive_loop_with_ties_as_failures(aligner):
    gen = torch.Generator().manual_seed(5)
    rng = random.Random(5)
    media = [Path(f"img{k}.png") for k in range(7)]
    texts = [f"caption {k}" for k in range(30)]
    vis = random_tokens(len(media), 6, 8, gen)
    txt = random_tokens(len(texts), 5, 8, gen)
    # captions 25..29 are copies of 0..4 under other strings: an item pitting one against the other ties
    txt = Tokens(torch.cat([txt.feats[:25], txt.feats[:5]]), torch.cat([txt.mask[:25], txt.mask[:5]]),
                 torch.cat([txt.pooled[:25], txt.pooled[:5]]))
    items, rows = [], []
    for k in range(60):
        m = rng.randrange(len(media))
        if k % 6 == 0:  # a tie
            t = rng.randrange(5)
            chosen = [t, 25 + t]
        else:
            chosen = rng.sample(range(25), 2 + (k % 3 == 0))
        items.append(HardNegative(media[m], texts[chosen[0]], tuple(texts[j] for j in chosen[1:]),
                                  category=f"cat{k % 3}"))
        rows.append((m, chosen))
    enc = EncodedItems(media, texts, vis, txt)
    plan = None if aligner is None else get_aligner(aligner)
    report = evaluate_compositional(None, items, plan, w_global=0.7, w_fine=1.3, encoded=enc, group=3)
    naive = naive_correct(vis, txt, plan, rows, 0.7, 1.3)
    got = report["scores"]["fused"]
    for cat in ("cat0", "cat1", "cat2"):
        idx = [k for k, it in enumerate(items) if it.category == cat]
        want = sum(naive[k][0] for k in idx)
        assert got["categories"][cat]["correct"] == want
        assert got["categories"][cat]["items"] == len(idx)
        assert got["categories"][cat]["accuracy"] == pytest.approx(100 * want / len(idx))
        assert got["categories"][cat]["ties"] == sum(naive[k][1] for k in idx)
    assert sum(c["ties"] for c in got["categories"].values()) >= 10  # the copies tied, and failed
    assert got["macro"] == pytest.approx(sum(c["accuracy"] for c in got["categories"].values()) / 3)
    # cat0 items all have two negatives (k % 3 == 0): no binary interval there
    assert "ci95" not in got["categories"]["cat0"] and "ci95" in got["categories"]["cat1"]
    if plan is not None:  # the plan's score alone: w_global 0, w_fine 1
        fine = naive_correct(vis, txt, plan, rows, 0.0, 1.0)
        assert report["scores"]["fine"]["overall"]["correct"] == sum(f[0] for f in fine)
    glob = naive_correct(vis, txt, None, rows, 1.0, 0.0)
    assert report["scores"]["global"]["overall"]["correct"] == sum(g[0] for g in glob)


COLORS, SHAPES = ("red", "blue", "green", "yellow"), ("circle", "square", "triangle", "cross")
WORDS = (*COLORS, *SHAPES, "background")


def one_hot(word):
    v = torch.zeros(len(WORDS))
    v[WORDS.index(word)] = 1.0
    return v


def object_feature(color, shape):
    return (one_hot(color) + one_hot(shape)) / math.sqrt(2)


def hand_made(n_items=24, seed=0):
    """Each patch holds one (colour, shape) object or background; each text token one (colour,
    shape) pair (what a contextual text encoder can give); every global vector is the mean of the
    colour and shape words it holds: a bag of words."""
    rng = random.Random(seed)
    items, images, captions = [], {}, {}
    for k in range(n_items):
        (c1, c2), (s1, s2) = rng.sample(COLORS, 2), rng.sample(SHAPES, 2)
        media = Path(f"scene{k}.png")
        images[media] = [(c1, s1), (c2, s2)]
        true, false = f"{c1} {s1} and {c2} {s2}", f"{c2} {s1} and {c1} {s2}"  # colours swapped
        for text in (true, false):
            words = text.split()
            captions[text] = [(words[0], words[1]), (words[3], words[4])]
        items.append(HardNegative(media, true, (false,), category="swap-color"))

    def tokens(groups, background=0):
        feats = torch.stack([object_feature(*g) for g in groups] + [one_hot("background")] * background)
        pooled = torch.stack([one_hot(w) for g in groups for w in g]).mean(0)
        return feats, pooled

    vis = [tokens(images[m], background=2) for m in images]
    txt = [tokens(captions[t]) for t in captions]
    as_tokens = lambda parts: Tokens(torch.stack([f for f, _ in parts]),  # noqa: E731
                                     torch.ones(len(parts), parts[0][0].shape[0], dtype=torch.bool),
                                     torch.stack([p for _, p in parts]))
    return items, EncodedItems(list(images), list(captions), as_tokens(vis), as_tokens(txt))


def test_bag_of_words_global_ties_every_swap_and_max_avg_binds():
    items, enc = hand_made()
    glob = evaluate_compositional(None, items, None, encoded=enc)["scores"]["fused"]
    assert glob["overall"]["ties"] == len(items) and glob["overall"]["accuracy"] == 0.0  # strict rule
    maxavg = evaluate_compositional(None, items, get_aligner("max-avg"), encoded=enc)["scores"]
    assert maxavg["fine"]["overall"]["accuracy"] == 100.0
    assert maxavg["fused"]["overall"]["accuracy"] == 100.0 and maxavg["fused"]["overall"]["ties"] == 0
    assert maxavg["global"]["overall"]["accuracy"] == 0.0


def test_wilson_interval_against_its_formula_and_known_values():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(100 * 0.27753, abs=1e-3)  # the rule-of-three-like bound
    lo, hi = wilson_interval(50, 100)
    assert (lo, hi) == (pytest.approx(40.383, abs=1e-3), pytest.approx(59.617, abs=1e-3))
    lo, hi = wilson_interval(10, 10)
    assert hi == pytest.approx(100.0) and lo == pytest.approx(100 * (1 - 0.27753), abs=1e-3)
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def test_scores_within_the_tolerance_tie_and_fail():
    from tokenflow.eval.compositional import TIE_RTOL

    assert TIE_RTOL == 1e-6
    rows = [torch.tensor([0.5, 0.5 - 5e-7]),  # within 1e-6 * max(1, 0.5): a tie
            torch.tensor([0.5, 0.5 - 2e-6]),  # beyond: correct
            torch.tensor([300.0, 300.0 - 2e-4]),  # 1e-6 * 300 = 3e-4: a tie at this scale
            torch.tensor([300.0, 300.0 - 1e-3, 300.0 + 1e-4]),  # the best negative ties
            torch.tensor([-2.0, -2.0 + 1e-3])]  # the negative is above: a plain miss, no tie
    got = accuracy_report([r.double() for r in rows], ["a"] * len(rows))["overall"]
    assert (got["correct"], got["ties"]) == (1, 3)
    want = [(beats(float(r[0]), float(r[1:].max())), ties(float(r[0]), float(r[1:].max()))) for r in rows]
    assert want == [(False, True), (True, False), (False, True), (False, True), (False, False)]
    enc = EncodedItems([Path("a.png")], ["x", "y"], random_tokens(1, 3, 4, torch.Generator().manual_seed(0)),
                       random_tokens(2, 3, 4, torch.Generator().manual_seed(1)))
    report = evaluate_compositional(None, [HardNegative(Path("a.png"), "x", ("y",))], None, encoded=enc)
    assert report["tie_rtol"] == 1e-6 and "1e-06 * max(1, |true|)" in report["rule"]
    assert "a tie is a failure" in report["rule"]


def test_accuracy_report_counts_and_rejects_rows_without_a_negative():
    rows = [torch.tensor([1.0, 0.5]), torch.tensor([0.5, 0.5]), torch.tensor([0.1, 0.2]), torch.tensor([2.0, 1.0])]
    rep = accuracy_report(rows, ["a", "a", "a", "b"])
    assert rep["categories"]["a"] == {"items": 3, "correct": 1, "ties": 1, "binary": True,
                                      "accuracy": pytest.approx(100 / 3), "ci95": list(wilson_interval(1, 3))}
    assert rep["macro"] == pytest.approx((100 / 3 + 100) / 2) and rep["overall"]["accuracy"] == 50.0
    with pytest.raises(ValueError, match="at least one negative"):
        accuracy_report([torch.tensor([1.0])], ["a"])


@pytest.fixture(scope="module")
def tiny_model_dir(synth, tmp_path_factory):
    from tokenflow.data import load_split

    split = load_split("flickr30k", synth / "images", "train")
    return save_tiny_model(tmp_path_factory.mktemp("compositional-model") / "best", split.texts, seed=0,
                           w_global=0.5, w_fine=2.0)


def test_end_to_end_on_the_synthetic_twins_equals_the_naive_loop(synth, tiny_model_dir):
    from tokenflow.data.base import load_image
    from tokenflow.models import RetrievalModel

    items = read_hard_negatives(synth / "images" / "hard_negatives.json")
    model = RetrievalModel.from_pretrained(tiny_model_dir)
    report = evaluate_compositional(model.backbone, items, model.aligner, w_global=model.w_global,
                                    w_fine=model.w_fine, batch_size=4, group=2)
    assert report["evaluated"]["items"] == len(items) and report["similarity"]["w_fine"] == 2.0
    bb = model.backbone.eval()
    correct = 0
    with torch.no_grad():
        for it in items:
            vis = bb.encode_images(bb.preprocess(load_image(it.media)).unsqueeze(0))
            scores = []
            for text in it.texts:
                txt = bb.encode_text_strings([text])
                plan = model.aligner.plan(vis, txt)
                scores.append(0.5 * float(vis.pooled[0] @ txt.pooled[0]) + 2.0 * float((plan.c * plan.t2v).sum()))
            correct += all(beats(scores[0], s) for s in scores[1:])
    assert report["scores"]["fused"]["overall"]["correct"] == correct
    table = format_compositional_table(report)
    assert "macro average" in table and "ties (failures)" in table


def test_cli_prints_a_table_and_writes_the_report(synth, tiny_model_dir, tmp_path, capsys):
    import json

    from tokenflow.cli import main

    out = tmp_path / "report.json"
    assert main(["evaluate-compositional", "--benchmark", "generic", "--annotations",
                 str(synth / "images" / "hard_negatives.json"), "--model", str(tiny_model_dir),
                 "--aligner", "max-avg", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["aligner"]["name"] == "max-avg" and "macro average" in printed
    assert report["similarity"]["w_global"] == 0.5  # the trained folder's fusion weights
    assert set(report["scores"]) == {"fused", "fine", "global"}


def test_cli_help_names_the_siglip_backbones(capsys):
    from tokenflow.cli import main

    with pytest.raises(SystemExit):
        main(["evaluate-compositional", "--help"])
    assert "SigLIP" in " ".join(capsys.readouterr().out.split())


def test_cli_names_the_file_and_entry_of_a_missing_image(tmp_path, tiny_model_dir, capsys):
    from tokenflow.cli import main

    path = write_hard_negatives(tmp_path / "hn.json", [{"image": "nowhere.png", "caption": "a red circle",
                                                        "negatives": ["a blue circle"]}])
    assert main(["evaluate-compositional", "--benchmark", "generic", "--annotations", str(path),
                 "--model", str(tiny_model_dir)]) == 2
    err = capsys.readouterr().err
    assert f"{path} entry 0" in err and "nowhere.png not found" in err


def test_videos_are_scored_like_images(synth, tiny_model_dir):
    from tokenflow.models import RetrievalModel

    items = read_hard_negatives(synth / "videos" / "hard_negatives.json")
    model = RetrievalModel.from_pretrained(tiny_model_dir)
    report = evaluate_compositional(model.backbone, items, model.aligner, num_frames=4, batch_size=2)
    assert report["evaluated"] == {"items": len(items), "images": len({it.media for it in items}),
                                   "texts": len({t for it in items for t in it.texts})}
    assert list(report["scores"]["fused"]["categories"]) == ["swap-order"]


def test_an_unreadable_image_names_its_entry(tmp_path, tiny_model_dir):
    from tokenflow.errors import FileError
    from tokenflow.models import RetrievalModel

    (tmp_path / "broken.png").write_bytes(b"not a png")
    path = write_hard_negatives(tmp_path / "hn.json", [{"image": "broken.png", "caption": "a red circle",
                                                        "negatives": ["a blue circle"]}])
    model = RetrievalModel.from_pretrained(tiny_model_dir)
    with pytest.raises(FileError, match=rf"{path} entry 0: .*broken\.png: cannot decode image"):
        evaluate_compositional(model.backbone, read_hard_negatives(path), model.aligner)


def test_cli_on_sugarcrepe_files(tmp_path, tiny_model_dir, synth, capsys):
    import json
    import shutil

    from tokenflow.cli import main

    src = sorted((synth / "images" / "flickr30k-images").iterdir())[:2]
    images = tmp_path / "val2017"
    images.mkdir()
    for k, p in enumerate(src):
        shutil.copyfile(p, images / f"00000000000{k}.jpg")
    ann = tmp_path / "data"
    ann.mkdir()
    entries = {str(k): {"filename": f"00000000000{k}.jpg", "caption": f"a red circle {k}",
                        "negative_caption": f"a blue circle {k}"} for k in range(2)}
    (ann / "swap_att.json").write_text(json.dumps(entries))
    (ann / "add_obj.json").write_text(json.dumps({"0": entries["1"]}))
    out = tmp_path / "r.json"
    assert main(["evaluate-compositional", "--benchmark", "sugarcrepe", "--annotations", str(ann), "--images",
                 str(images), "--model", str(tiny_model_dir), "--aligner", "none", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    fused = report["scores"]["fused"]
    assert {n: c["items"] for n, c in fused["categories"].items()} == {"add_obj": 1, "swap_att": 2}
    assert set(report["scores"]) == {"fused", "global"} and report["aligner"] is None
    assert report["benchmark"]["categories"] == ["add_obj", "swap_att"]
    capsys.readouterr()
    assert main(["evaluate-compositional", "--benchmark", "sugarcrepe", "--annotations", str(ann),
                 "--model", str(tiny_model_dir)]) == 2
    assert "--images: SugarCrepe needs the COCO val2017 image folder" in capsys.readouterr().err


def test_items_from_a_split_encoding_equal_their_own_encoding(synth, tiny_model_dir):
    """The test split encoded once (for retrieval) gives the items' images bit for bit as encoding
    them on their own, in another order and with some left out, and so the same report."""
    from tokenflow.data import load_split
    from tokenflow.eval.compositional import encode_hard_negatives, items_from_encoded
    from tokenflow.eval.evaluate import encode_split
    from tokenflow.models import RetrievalModel

    model = RetrievalModel.from_pretrained(tiny_model_dir)
    items = read_hard_negatives(synth / "images" / "hard_negatives.json")[::-1]
    items = [it for it in items if it.media != items[-1].media]  # the split's first image left out
    split = load_split("flickr30k", synth / "images", "test")
    assert len({it.media for it in items}) < len(split)  # some test images are not used
    enc = encode_split(model.backbone, split, batch_size=4)
    shared = items_from_encoded(enc, items, model.backbone, batch_size=3)
    own = encode_hard_negatives(model.backbone, items, batch_size=3)
    assert shared.media == own.media and shared.texts == own.texts
    for got, want in ((shared.vis, own.vis), (shared.txt, own.txt)):
        assert all(torch.equal(a, b) for a, b in zip((got.feats, got.mask, got.pooled),
                                                      (want.feats, want.mask, want.pooled), strict=True))
    kw = {"w_global": model.w_global, "w_fine": model.w_fine}
    a = evaluate_compositional(model.backbone, items, model.aligner, encoded=shared, **kw)["scores"]
    b = evaluate_compositional(model.backbone, items, model.aligner, **kw)["scores"]
    assert a == b
    with pytest.raises(ValueError, match="not in the encoded split"):
        items_from_encoded(enc, [HardNegative(Path("elsewhere.png"), "x", ("y",))], model.backbone)
    with pytest.raises(ValueError, match="are images but the encoded split holds videos"):
        items_from_encoded(encode_split(model.backbone, load_split("msrvtt", synth / "videos", "test"),
                                        num_frames=4), items, model.backbone)
