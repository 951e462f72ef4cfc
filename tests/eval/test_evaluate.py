import json
import re
import shutil

import pytest
import torch
import torch.nn.functional as F

from tokenflow import Tokens, get_aligner
from tokenflow.cli import main
from tokenflow.data import MediaError, RetrievalSplit, load_image, load_split
from tokenflow.eval import retrieval_metrics
from tokenflow.eval.evaluate import Encoded, encode_split, evaluate, similarity
from tokenflow.models import TinyCLIP, TinyConfig, WordTokenizer


def rand_tokens(n, length, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = F.normalize(torch.randn(n, length, d, generator=g), dim=-1)
    mask = torch.rand(n, length, generator=g) < 0.8
    mask[:, 0] = True
    return Tokens(feats, mask, F.normalize(torch.randn(n, d, generator=g), dim=-1))


def test_similarity_is_weighted_global_plus_fine():
    vis, txt = rand_tokens(5, 4, seed=1), rand_tokens(7, 6, seed=2)
    al = get_aligner("tokenflow")
    v2t, t2v = similarity(vis, txt, al, w_global=0.3, w_fine=2.0, chunk=2)
    s = al.pairwise(vis, txt)
    g = vis.pooled @ txt.pooled.T
    torch.testing.assert_close(v2t, 0.3 * g + 2.0 * s.v2t)
    torch.testing.assert_close(t2v, 0.3 * g + 2.0 * s.t2v)
    only_g, _ = similarity(vis, txt, None)
    torch.testing.assert_close(only_g, g)



def test_multi_caption_protocol_and_folds():
    # 4 items, 2 texts each; v2t of item i ranks its best-ranked caption
    split = RetrievalSplit("toy", "image", list("abcd"), [None] * 4, [f"t{k}" for k in range(8)],
                           [k // 2 for k in range(8)])
    vis, txt = rand_tokens(4, 3, seed=3), rand_tokens(8, 5, seed=4)
    model = TinyCLIP(TinyConfig(), WordTokenizer(["x"]))
    al = get_aligner("max-avg")
    rep = evaluate(model, split, al, encoded=Encoded(split, vis, txt), folds=2)
    v2t, t2v = similarity(vis, txt, al)
    pos = split.positives()
    assert rep["metrics"]["v2t"] == retrieval_metrics(v2t, pos)
    assert rep["metrics"]["t2v"] == retrieval_metrics(t2v.T, pos.T)
    # by hand: each item's rank is that of its best-ranked caption
    assert rep["metrics"]["v2t"]["MnR"] == pytest.approx(
        sum(1 + int(((v2t[i] >= v2t[i][pos[i]].max()) & ~pos[i]).sum()) for i in range(4)) / 4)
    f0 = retrieval_metrics(t2v[:2, :4].T, pos[:2, :4].T)
    f1 = retrieval_metrics(t2v[2:, 4:].T, pos[2:, 4:].T)
    assert rep["metrics_folds_2"]["t2v"]["R@1"] == pytest.approx((f0["R@1"] + f1["R@1"]) / 2)
    with pytest.raises(ValueError, match="folds of 3"):
        evaluate(model, split, al, encoded=Encoded(split, vis, txt), folds=3)


def test_tokens_cat_pads_to_the_longest():
    a, b = rand_tokens(2, 3, seed=5), rand_tokens(3, 5, seed=6)
    c = Tokens.cat([a, b])
    assert c.feats.shape == (5, 5, 8) and not c.mask[:2, 3:].any()
    torch.testing.assert_close(c.feats[2:], b.feats)
    s1 = get_aligner("scan").pairwise(c[:2], b)
    torch.testing.assert_close(s1.v2t, get_aligner("scan").pairwise(a, b).v2t)


def train_tiny(split, steps=120, seed=0):
    """A few steps of symmetric InfoNCE on the global features (enough to beat chance)."""
    torch.manual_seed(seed)
    m = TinyCLIP(TinyConfig(), WordTokenizer.build(split.texts))
    px = torch.stack([m.preprocess(load_image(p)) for p in split.item_paths])
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    first = {}
    for _ in range(steps):
        idx = torch.randperm(len(split), generator=g)[:64].tolist()
        caps = [split.texts[5 * i + int(torch.randint(0, 5, (1,), generator=g))] for i in idx]
        v, t = m.encode_images(px[idx]), m.encode_text_strings(caps)
        logits = 20 * v.pooled @ t.pooled.T
        lab = torch.arange(len(idx))
        loss = (F.cross_entropy(logits, lab) + F.cross_entropy(logits.T, lab)) / 2
        first.setdefault("loss", loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first["loss"]
    return m.eval()


@pytest.mark.slow
def test_evaluate_end_to_end_on_synthetic_data(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["make-data", str(data), "--images", "400,20,60", "--videos", "0,0,0", "--size", "32",
                 "--seed", "1"]) == 0
    train = load_split("flickr30k", data / "images", "train")
    model = train_tiny(train)
    model.save_pretrained(tmp_path / "model")
    out = tmp_path / "report.json"
    assert main(["evaluate", "--dataset", "flickr30k", "--root", str(data / "images"), "--model",
                 str(tmp_path / "model"), "--aligner", "tokenflow", "--hp", "lam=20", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "text->visual" in printed and "R@1" in printed
    rep = json.loads(out.read_text())
    assert rep["aligner"] == {"name": "tokenflow", "hparams": {"lam": 20}}
    assert rep["evaluated"] == {"items": 60, "texts": 300} and rep["skipped"]["count"] == 0
    chance_r1 = 100 / 60
    assert rep["metrics"]["t2v"]["R@1"] > 5 * chance_r1
    assert rep["metrics"]["v2t"]["R@1"] > 5 * chance_r1
    assert rep["metrics"]["t2v"]["MdR"] < 15


def test_skip_policy_counts_bad_files(tmp_path, synth):
    root = tmp_path / "images"
    shutil.copytree(synth / "images", root)
    split = load_split("flickr30k", root, "test")
    split.item_paths[2].write_bytes(b"not a jpeg")
    split.item_paths[4].unlink()
    model = TinyCLIP(TinyConfig(), WordTokenizer.build(split.texts)).eval()
    with pytest.raises(MediaError, match=f"{split.item_paths[2].name}: cannot decode image"):
        encode_split(model, split, batch_size=2)
    enc = encode_split(model, split, batch_size=2, on_error="skip")
    assert len(enc.split) == 4 and len(enc.split.texts) == 20 and enc.vis.feats.shape[0] == 4
    assert [s["path"] for s in enc.skipped] == [str(split.item_paths[2]), str(split.item_paths[4])]
    assert split.item_ids[2] not in enc.split.item_ids
    model.save_pretrained(tmp_path / "m")
    out = tmp_path / "r.json"
    main(["evaluate", "--dataset", "flickr30k", "--root", str(root), "--model", str(tmp_path / "m"),
          "--on-error", "skip", "--aligner", "none", "--out", str(out), "--quiet"])
    rep = json.loads(out.read_text())
    assert rep["skipped"]["count"] == 2 and rep["split"]["items"] == 6 and rep["evaluated"]["items"] == 4
    assert "file not found" in rep["skipped"]["files"][1]["reason"]


def test_evaluate_videos_both_token_kinds(synth, tmp_path):
    split = load_split("msrvtt", synth / "videos", "test")
    model = TinyCLIP(TinyConfig(), WordTokenizer.build(split.texts)).eval()
    for kind, length in (("frames", 6), ("patches", 6 * 16)):
        enc = encode_split(model, split, num_frames=6, video_tokens=kind)
        assert enc.vis.feats.shape == (4, length, 32)
        rep = evaluate(model, split, get_aligner("tokenflow"), encoded=enc)
        assert set(rep["metrics"]) == {"t2v", "v2t"}


def test_cli_errors_name_the_problem(tmp_path, capsys):
    assert main(["evaluate", "--dataset", "flickr30k", "--root", str(tmp_path / "x"), "--model", str(tmp_path)]) == 2
    assert re.search("tokenflow evaluate: dataset folder .* does not exist", capsys.readouterr().err)
    with pytest.raises(SystemExit):
        main(["make-data", str(tmp_path), "--images", "1,2"])
    assert "TRAIN,VAL,TEST" in capsys.readouterr().err
    assert main(["make-data", str(tmp_path), "--images", "3,2,2"]) == 2
    assert "even" in capsys.readouterr().err
