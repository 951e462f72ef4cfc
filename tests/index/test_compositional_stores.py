"""``evaluate-compositional`` from stores: the tiny model's features of the images and of every
caption, negatives included, exported, imported and evaluated with no backbone give what the
model gives; entries missing from a store are refused with a count."""

import json

import pytest
import torch

from tests.helpers import export_features, save_tiny_model
from tokenflow import get_aligner
from tokenflow.cli import main
from tokenflow.data import read_hard_negatives
from tokenflow.errors import UserError

HARD = ("images", "hard_negatives.json")


@pytest.fixture(scope="module")
def retrieval_model_dir(synth, tmp_path_factory):
    """A tiny model saved with a plan and fusion weights (not 1, 1), its vocabulary the captions'."""
    from tokenflow.data import load_split
    from tokenflow.models import TinyConfig

    split = load_split("flickr30k", synth / "images", "train")
    return save_tiny_model(tmp_path_factory.mktemp("hn-model") / "best", split.texts, seed=2, w_global=0.5,
                           w_fine=2.0, config=TinyConfig(image_size=32, patch_size=8, width=32, layers=1, heads=2,
                                                         embed_dim=16))


@pytest.fixture(scope="module")
def encoded(synth, retrieval_model_dir):
    from tokenflow.eval.compositional import encode_hard_negatives
    from tokenflow.models import load_backbone

    items = read_hard_negatives(synth.joinpath(*HARD))
    return items, encode_hard_negatives(load_backbone(retrieval_model_dir), items, batch_size=4)


def _import(files, out, kind):
    assert main(["import-features", *map(str, files), "--out", str(out), "--kind", kind, "--model-name",
                 "tiny (exported)", "--dtype", "fp32"]) == 0
    return out


@pytest.fixture(scope="module")
def stores(synth, encoded, tmp_path_factory):
    """Visual rows: the first half named by their path relative to the file's folder (their id),
    the rest by their file (``paths``, other ids); text rows: every caption, shuffled."""
    _, enc = encoded
    tmp = tmp_path_factory.mktemp("hn-stores")
    root = synth.joinpath(*HARD).parent
    h = len(enc.media) // 2
    v = [export_features(enc.vis[:h], [m.relative_to(root).as_posix() for m in enc.media[:h]], {}, tmp / "v0.npz",
                         "npz"),
         export_features(enc.vis[h:], [f"img{k}" for k in range(h, len(enc.media))],
                         {"paths": [str(m) for m in enc.media[h:]]}, tmp / "v1.npz", "npz")]
    order = torch.randperm(len(enc.texts), generator=torch.Generator().manual_seed(0)).tolist()
    t = [export_features(enc.txt[order], [f"cap{k}" for k in order], {"texts": [enc.texts[k] for k in order]},
                         tmp / "t.npz", "npz")]
    return _import(v, tmp / "V", "visual"), _import(t, tmp / "T", "text")


def _run(synth, tmp_path, *extra):
    out = tmp_path / f"r{len(list(tmp_path.glob('r*.json')))}.json"
    assert main(["evaluate-compositional", "--benchmark", "generic", "--annotations", str(synth.joinpath(*HARD)),
                 "--out", str(out), *extra]) == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("aligner", [[], ["--aligner", "max-avg"], ["--aligner", "none"]])
def test_from_stores_equals_with_the_model(synth, retrieval_model_dir, stores, tmp_path, aligner):
    direct = _run(synth, tmp_path, "--model", str(retrieval_model_dir), *aligner)
    stored = _run(synth, tmp_path, "--visual-store", str(stores[0]), "--text-store", str(stores[1]),
                  "--model", str(retrieval_model_dir), *aligner)
    assert stored["scores"] == direct["scores"] and stored["evaluated"] == direct["evaluated"]
    assert stored["similarity"] == direct["similarity"] and stored["similarity"]["w_fine"] == 2.0
    assert stored["backbone"]["visual"]["kind"] == "imported" and stored["backbone"]["text"]["normalized"] is True


def test_stored_scores_equal_the_models_to_float_tolerance(synth, encoded, stores):
    from tokenflow.eval.compositional import score_items
    from tokenflow.index.offline import hard_negative_tokens, open_stores

    items, enc = encoded
    got = hard_negative_tokens(items, open_stores(stores[0], "visual", "v"), open_stores(stores[1], "text", "t"),
                               synth.joinpath(*HARD).parent)
    assert got.media == enc.media and got.texts == enc.texts
    plan = get_aligner("tokenflow")
    a = score_items(got, items, plan, w_global=0.5, w_fine=2.0)
    b = score_items(enc, items, plan, w_global=0.5, w_fine=2.0)
    for kind in b:
        for x, y in zip(a[kind], b[kind], strict=True):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_without_a_model_the_plan_is_named(synth, stores, tmp_path, capsys):
    report = _run(synth, tmp_path, "--visual-store", str(stores[0]), "--text-store", str(stores[1]),
                  "--aligner", "max-avg")
    assert report["aligner"]["name"] == "max-avg" and report["similarity"]["w_global"] == 1.0
    assert "captions from stores" in capsys.readouterr().out


def test_missing_entries_are_refused_with_a_count(synth, encoded, stores, tmp_path, capsys):
    _, enc = encoded
    argv = ["evaluate-compositional", "--benchmark", "generic", "--annotations", str(synth.joinpath(*HARD))]
    # a text store without three of the captions (the twins' captions are each other's negatives)
    keep = list(range(3, len(enc.texts)))
    part = _import([export_features(enc.txt[keep], [f"c{k}" for k in keep], {"texts": [enc.texts[k] for k in keep]},
                                    tmp_path / "t.npz", "npz")], tmp_path / "T", "text")
    capsys.readouterr()
    assert main([*argv, "--visual-store", str(stores[0]), "--text-store", str(part)]) == 2
    err = capsys.readouterr().err
    assert f"3 of the {len(enc.texts)} captions of the items (true captions and negatives) are not in it" in err
    assert f"(first: {enc.texts[0]!r})" in err
    # a visual store without two images
    v = _import([export_features(enc.vis[2:], [m.name for m in enc.media[2:]], {}, tmp_path / "v.npz", "npz")],
                tmp_path / "V", "visual")
    capsys.readouterr()
    assert main([*argv, "--visual-store", str(v), "--text-store", str(stores[1])]) == 2
    err = capsys.readouterr().err
    assert f"2 of the {len(enc.media)} images of the items are not in it (first: {enc.media[0]})" in err
    # a text store without texts; one store only; no model nor stores
    bare = _import([export_features(enc.txt, [f"c{k}" for k in range(len(enc.texts))], {}, tmp_path / "b.npz", "npz")],
                   tmp_path / "B", "text")
    assert main([*argv, "--visual-store", str(stores[0]), "--text-store", str(bare)]) == 2
    assert "holds no caption texts" in capsys.readouterr().err
    assert main([*argv, "--visual-store", str(stores[0])]) == 2
    assert "needs both --visual-store and --text-store" in capsys.readouterr().err
    assert main(argv) == 2
    assert "needs --model (a backbone folder), or --visual-store and --text-store" in capsys.readouterr().err


def test_ids_naming_one_file_twice_are_refused(tmp_path):
    from pathlib import Path

    from tokenflow.data.hard_negatives import HardNegative
    from tokenflow.index.offline import hard_negative_tokens, open_stores

    from tokenflow import Tokens

    gen = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(1, 3, 4, generator=gen), dim=-1)
    tokens = Tokens(feats, torch.ones(1, 3, dtype=torch.bool), feats[:, 0])
    v = _import([export_features(tokens, ["a.png"], {}, tmp_path / "v.npz", "npz")], tmp_path / "V", "visual")
    t = _import([export_features(tokens, ["c"], {"texts": ["x"]}, tmp_path / "t.npz", "npz")], tmp_path / "T", "text")
    items = [HardNegative(tmp_path / d / "a.png", "x", ("x",)) for d in ("one", "two")]
    with pytest.raises(UserError, match="row 'a.png' matches 2 different files"):
        hard_negative_tokens(items, open_stores(v, "visual", "v"), open_stores(t, "text", "t"), Path(tmp_path))


def test_stores_of_the_other_modality_or_another_size_are_refused(tmp_path):
    from pathlib import Path

    from tokenflow.data.hard_negatives import HardNegative
    from tokenflow.index.offline import hard_negative_tokens, open_stores

    from tokenflow import Tokens

    def tokens(dim):
        gen = torch.Generator().manual_seed(0)
        feats = torch.nn.functional.normalize(torch.randn(1, 3, dim, generator=gen), dim=-1)
        return Tokens(feats, torch.ones(1, 3, dtype=torch.bool), feats[:, 0])

    video = export_features(tokens(4), ["a.png"], {}, tmp_path / "v.npz", "npz")
    assert main(["import-features", str(video), "--out", str(tmp_path / "V"), "--kind", "visual",
                 "--modality", "video", "--model-name", "m", "--dtype", "fp32"]) == 0
    v = _import([export_features(tokens(4), ["a.png"], {}, tmp_path / "w.npz", "npz")], tmp_path / "W", "visual")
    t = _import([export_features(tokens(5), ["c"], {"texts": ["x"]}, tmp_path / "t.npz", "npz")], tmp_path / "T",
                "text")
    items = [HardNegative(tmp_path / "a.png", "x", ("x",))]
    with pytest.raises(UserError, match="features of videos, but the items hold images"):
        hard_negative_tokens(items, open_stores(tmp_path / "V", "visual", "v"), open_stores(t, "text", "t"),
                             Path(tmp_path))
    with pytest.raises(UserError, match="has D=4, --text-store .* D=5: features of different models"):
        hard_negative_tokens(items, open_stores(v, "visual", "v"), open_stores(t, "text", "t"), Path(tmp_path))
